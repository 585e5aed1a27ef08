"""One query embedding per request, none for a repeated question, and nothing rebuilt per request.

The embeddings are the real local model behind a counting wrapper: it counts calls at the `Embeddings`
interface and the encodes that reach a model, PyTorch or the ONNX encoder (a cache hit reaches neither).
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient
from langchain_core.language_models import BaseChatModel
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from tests.conftest import app_client
from tests.fakes import scripted_model

pytestmark = pytest.mark.integration

QUESTION = "How much water does a young tree need?"


class Calls:
    encodes = 0
    texts = 0


class CountingModel:
    """A loaded encoder (the sentence-transformers model or the ONNX encoder), counting `encode` calls and
    the texts they carry into a shared tally."""

    def __init__(self, model: Any, tally: Calls) -> None:
        self.model = model
        self.tally = tally

    def encode(self, texts: list[str], **kwargs: Any) -> Any:
        self.tally.encodes += 1
        self.tally.texts += len(texts)
        return self.model.encode(texts, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


class CountingEmbeddings(LocalEmbeddings):
    """The session's real model (shared, not reloaded) with a query cache of its own, counting every call."""

    def __init__(self, real: LocalEmbeddings) -> None:  # no super().__init__: it would load the model again
        self.__dict__.update(real.__dict__)
        self._query_cache = OrderedDict()
        self.model_calls = Calls()
        if real._model is not None:
            self._model = CountingModel(real._model, self.model_calls)  # type: ignore[assignment]
        if real._onnx is not None:
            self._onnx = CountingModel(real._onnx, self.model_calls)  # type: ignore[assignment]
        self.calls: Counter[str] = Counter()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls["embed_documents"] += 1
        return super().embed_documents(texts)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls["aembed_documents"] += 1
        return await super().aembed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        self.calls["aembed_query"] += 1
        return await super().aembed_query(text)


@pytest.fixture
def counting(embeddings: LocalEmbeddings) -> CountingEmbeddings:
    return CountingEmbeddings(embeddings)


async def ask(http: AsyncClient, question: str, history: list[dict[str, str]] | None = None) -> list[str]:
    body: dict[str, Any] = {"question": question, "stream": True, "history": history or []}
    response = await http.post("/ask", json=body)
    assert response.status_code == 200, response.text
    events = [line.split(":", 1)[1].strip() for line in response.text.splitlines() if line.startswith("event:")]
    assert events[-1] == "done", events
    return events


def answers(*texts: str) -> BaseChatModel:
    return scripted_model(*texts)


async def test_ask_embeds_the_question_once_and_a_repeated_question_not_at_all(
    settings: Settings, counting: CountingEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> None:
    model = answers("About twenty litres a week [1].", "About twenty litres a week [1].")
    async for _, http in app_client(settings, counting, qdrant, model):
        await ask(http, QUESTION)
        # the question once (a second aembed_query of the same question, for the highlights, is a cache hit); the
        # passages' sentence vectors come from the store (ingest stored them), so nothing else is embedded
        assert counting.calls == Counter({"aembed_query": 2})
        encodes, embedded = counting.model_calls.encodes, counting.model_calls.texts

        await ask(http, QUESTION)
        assert counting.model_calls.encodes == encodes  # the question: from the cache
        assert counting.model_calls.texts == embedded
        assert counting.calls["aembed_query"] == 4


async def test_a_follow_up_is_condensed_then_embedded_once(
    settings: Settings, counting: CountingEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> None:
    # The model first rewrites the follow-up (condensation), then answers it.
    model = answers("When should apple trees be pruned?", "In late winter [1].")
    history = [
        {"role": "user", "content": "Tell me about pruning."},
        {"role": "assistant", "content": "Pruning removes dead wood [1]."},
    ]
    async for _, http in app_client(settings, counting, qdrant, model):
        await ask(http, "And when?", history)
    # the condensed question once (the second aembed_query, for the highlights, is a cache hit); its passages'
    # sentence vectors are read from the store
    assert counting.calls["aembed_query"] == 2 and counting.calls["embed_documents"] == 0


async def test_requests_reuse_what_start_up_built(
    settings: Settings, counting: CountingEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> None:
    model = answers("About twenty litres a week [1].", "In late winter [1].")
    async for app, http in app_client(settings, counting, qdrant, model):
        state = app.state.rag
        built = (state.embeddings, state.retriever, state.chat_model, state.chain, state.gate, state.client)
        await ask(http, QUESTION)
        await ask(http, "When should apple trees be pruned?")
        assert (state.embeddings, state.retriever, state.chat_model, state.chain, state.gate, state.client) == built
        assert app.state.rag is state
        assert state.retriever.vector_store.embeddings is counting
    # Two new questions: each embedded once (their passages' sentence vectors are stored); no warm-up per request.
    assert counting.model_calls.encodes <= 2
    assert set(counting.calls) == {"aembed_query"}


def test_counting_wrapper_counts_the_real_model(counting: CountingEmbeddings) -> None:
    vector = counting.embed_query("a question about mulch")
    again = counting.embed_query("a question about mulch")
    assert vector == again and len(vector) == counting.dimension
    assert counting.model_calls.encodes == 1
    assert json.dumps(vector)  # plain floats, as the store needs
