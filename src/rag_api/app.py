"""The app factory and its lifespan: clients, models and the answer chain are built once and injected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from qdrant_client import QdrantClient

from chains.answer import build_answer_chain
from chains.embeddings import build_embeddings, embedding_dimension
from chains.errors import RagError
from chains.guard import ModelGate
from chains.local_index import limit_blas_threads
from chains.models import build_chat_model
from chains.rerank import build_reranker
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import build_vector_store, ensure_collection, points_without_sparse
from rag_api.auth import document_optional_keys, require_api_key
from rag_api.errors import error_response, install_error_handlers
from rag_api.metrics import build_metrics
from rag_api.middleware import BodyTooLarge, RequestContextMiddleware
from rag_api.ratelimit import TokenBuckets, rate_limit
from rag_api.recovery import open_qdrant, watch_qdrant
from rag_api.routes import admin, ask, chat, health, metrics, openai_api, pages, search
from rag_api.state import AppState, Overrides

logger = logging.getLogger(__name__)

DESCRIPTION = """Ask questions about a book and get answers grounded in its text, with sources.

`POST /ask` answers as JSON or streams server-sent events (see its description for the event protocol);
`POST /api/chat` streams the same answer as the AI SDK's UI message stream, for `useChat` frontends;
`POST /v1/chat/completions` and `GET /v1/models` answer OpenAI clients; `POST /search` returns passages only;
`GET /health` and `GET /ready` report on the dependencies."""


def warn_if_sparse_missing(client: QdrantClient, settings: Settings) -> None:
    """Hybrid retrieval over points ingested before it existed works as dense-only for them: say so."""
    if settings.retrieval_mode != "hybrid":
        return
    try:
        lacking = points_without_sparse(client, settings.qdrant_collection)
    except Exception as exc:  # informative only: never a reason to refuse to start
        logger.debug("could not count points without a sparse vector: %s", exc)
        return
    if lacking:
        logger.warning(
            "%d points in collection %s have no sparse vector (ingested before hybrid retrieval): lexical matching "
            "skips them; run rag-ingest again to rewrite them, or set RETRIEVAL_MODE=dense",
            lacking,
            settings.qdrant_collection,
        )


def build_state(settings: Settings, overrides: Overrides) -> AppState:
    embeddings = overrides.embeddings or build_embeddings(settings)
    client, collection_error = (overrides.client, None) if overrides.client else open_qdrant(settings)
    needs_reopen = collection_error is not None
    if not needs_reopen:
        try:
            ensure_collection(client, settings, embedding_dimension(embeddings))
        except RagError as exc:
            collection_error = str(exc)
            logger.error("collection problem: %s", exc)
        except Exception as exc:  # Qdrant down at start-up: serve degraded, /ready says why
            collection_error = f"Qdrant unreachable at start-up ({type(exc).__name__})"
            logger.error("%s", collection_error)
        else:
            warn_if_sparse_missing(client, settings)
    store = build_vector_store(client, settings, embeddings)
    retriever = BookRetriever.from_settings(store, settings, overrides.reranker or build_reranker(settings))
    if collection_error is None:
        retriever.warm()
    chat_model = overrides.chat_model or build_chat_model(settings)
    gate = ModelGate.from_settings(settings)
    chain = build_answer_chain(retriever, chat_model, settings, gate)
    rate_limiter = TokenBuckets(settings.rate_limit_per_minute, settings.rate_limit_burst)
    return AppState(
        settings, client, embeddings, retriever, chat_model, chain, gate, rate_limiter, collection_error, needs_reopen
    )


def create_app(settings: Settings, overrides: Overrides | None = None) -> FastAPI:
    """The FastAPI app for `settings`; `overrides` hands in ready-made parts (tests, benchmarks)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limit_blas_threads()
        state = build_state(settings, overrides or Overrides())
        app.state.rag = state
        logger.info(
            "ready: collection=%s store=%s chat_model=%s",
            settings.qdrant_collection,
            settings.qdrant_url or settings.qdrant_path,
            settings.chat_model or "(none: extractive answers)",
        )
        watcher = asyncio.create_task(watch_qdrant(state, settings.qdrant_recheck_s))
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if overrides is None or overrides.client is None:
                state.client.close()

    app = FastAPI(title="bookrag", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.metrics = build_metrics()
    install_error_handlers(app)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        message = f"the request body is larger than {settings.max_body_bytes} bytes"
        return error_response(413, "payload_too_large", message, getattr(request.state, "request_id", None))

    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials="*" not in settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Content-Type", "Authorization", "X-API-Key", "X-Request-ID", "Accept"],
        expose_headers=["X-Request-ID"],
    )
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes, metrics=app.state.metrics)
    # Public endpoints: an API key when API_KEYS is set, then the per-client rate limit (keyed by that key).
    guarded = [Depends(require_api_key), Depends(rate_limit)]
    for module in (ask, chat, search, openai_api):
        app.include_router(module.router, dependencies=guarded)
    for module in (health, metrics, pages):
        app.include_router(module.router)
    app.include_router(admin.router)  # guarded by an admin key in the router itself
    public_paths = {"/ask", "/api/chat", "/search", "/v1/chat/completions", "/v1/models"}
    document_optional_keys(app, settings, public_paths=public_paths)
    return app
