"""The plain ways of serving the same chain, for the streaming benchmark: not part of the product.

    python -m bench.reference_app --port 8902 [--langserve]

Over the textbook LCEL chain, `{context: retriever | format, question} | prompt | ChatOpenAI | StrOutputParser`
(the product's retriever on the same store, its prompt and the same `ChatOpenAI` settings; none of the product's
condensing, threshold or selection), built once at start-up: the plain way, for comparison only.

- `POST /ask` `{"question": "..."}`: `chain.astream_events(question, version="v2")` mapped to an
  `EventSourceResponse`, the way LangChain's streaming docs show it: `on_retriever_end` becomes a `sources` event,
  each `on_chat_model_stream` chunk a `token` event, then one `done` event.
- with `--langserve` (when the `langserve` package imports): LangServe's `add_routes(app, chain, path="/langserve")`,
  whose `POST /langserve/stream` `{"input": "..."}` streams `data` events (one per output chunk) and `end`.

Settings come from the environment like the product's (`QDRANT_PATH`, `OPENAI_BASE_URL`, `CHAT_MODEL`...).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from sse_starlette import EventSourceResponse

from chains.embeddings import build_embeddings
from chains.models import build_chat_model
from chains.prompts import ANSWER_PROMPT, format_passages
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import build_qdrant_client, build_vector_store

logger = logging.getLogger(__name__)


def plain_chain(retriever: BookRetriever, model: BaseChatModel) -> Runnable[str, str]:
    """The LCEL chain of LangChain's RAG tutorials over these parts: question in, text out."""

    def to_prompt_input(question: str) -> dict[str, Any]:
        return {"question": question}

    def format_docs(documents: list[Document]) -> str:
        return format_passages(documents)

    return (
        RunnableLambda(to_prompt_input)
        | RunnablePassthrough.assign(context=(lambda x: x["question"]) | retriever | RunnableLambda(format_docs))
        | ANSWER_PROMPT
        | model
        | StrOutputParser()
    )


def build_chain(settings: Settings) -> tuple[Any, Any]:
    """The LCEL chain over the product's retriever and model, and the Qdrant client to close at the end."""
    embeddings = build_embeddings(settings)
    client = build_qdrant_client(settings)
    retriever = BookRetriever.from_settings(build_vector_store(client, settings, embeddings), settings)
    model = build_chat_model(settings)
    if model is None:
        raise SystemExit("CHAT_MODEL must be set: the reference routes stream a chat model's tokens")
    return plain_chain(retriever, model), client


def langserve_error() -> str | None:
    """Why LangServe cannot be used here, or None when it can."""
    try:
        import langserve  # noqa: F401
    except Exception as exc:  # an incompatible install fails in many ways; report any of them
        return f"{type(exc).__name__}: {exc}"
    return None


def create_reference_app(settings: Settings, with_langserve: bool = False) -> FastAPI:
    chain, client = build_chain(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            client.close()

    app = FastAPI(title="reference routes", lifespan=lifespan)

    @app.get("/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"status": "ok", "langserve": with_langserve})

    @app.post("/ask")
    async def ask(request: Request) -> EventSourceResponse:
        question = str((await request.json())["question"])

        async def events() -> AsyncIterator[dict[str, str]]:
            async for event in chain.astream_events(question, version="v2"):
                kind = event["event"]
                if kind == "on_retriever_end":
                    documents = event["data"]["output"]
                    sources = [{"text": d.page_content, "metadata": d.metadata} for d in documents]
                    yield {"event": "sources", "data": json.dumps({"sources": sources})}
                elif kind == "on_chat_model_stream":
                    yield {"event": "token", "data": json.dumps({"text": event["data"]["chunk"].content})}
            yield {"event": "done", "data": "{}"}

        return EventSourceResponse(events())

    if with_langserve:
        from langserve import add_routes

        add_routes(app, chain, path="/langserve")
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8902)
    parser.add_argument("--langserve", action="store_true", help="also mount LangServe's add_routes")
    args = parser.parse_args()
    import uvicorn

    logging.basicConfig(level=logging.WARNING)
    app = create_reference_app(Settings(), with_langserve=args.langserve)
    # The same uvicorn options as `rag-api` (rag_api.main), so that only the route differs.
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
