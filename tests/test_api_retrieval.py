"""Retrieval through the HTTP API: filters on `/ask` and `/search`, scores and ranks in `/search` results."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from httpx import AsyncClient
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from tests.conftest import app_client
from tests.fakes import RecordingChatModel, recording_model

pytestmark = pytest.mark.integration


@pytest.fixture
def model() -> RecordingChatModel:
    return recording_model("Late winter [1].", "Twenty litres [1].")


@pytest.fixture
async def client(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path, model: RecordingChatModel
) -> AsyncIterator[AsyncClient]:
    lenient = settings.model_copy(update={"retrieval_score_threshold": -1.0})  # keep every retrieved passage
    async for _, http in app_client(lenient, embeddings, qdrant, model):
        yield http


async def test_search_sources_filter_returns_only_those_files(client: AsyncClient) -> None:
    body = {"query": "how much water does a young tree need", "k": 5, "sources": ["book/pruning.md"]}
    results = (await client.post("/search", json=body)).json()["results"]
    assert results and {r["metadata"]["source"] for r in results} == {"book/pruning.md"}


async def test_search_chapter_filter_returns_only_that_chapter(client: AsyncClient) -> None:
    body = {"query": "when should I prune", "k": 5, "chapter": "Watering Young Trees"}
    results = (await client.post("/search", json=body)).json()["results"]
    assert results and {r["metadata"]["chapter"] for r in results} == {"Watering Young Trees"}


async def test_search_results_are_ranked_with_cosine_scores(client: AsyncClient) -> None:
    results = (await client.post("/search", json={"query": "moisture-log --probe A3", "k": 2})).json()["results"]
    assert [r["metadata"]["rank"] for r in results] == [1, 2]
    assert "moisture-log --probe A3" in results[0]["text"]
    assert all(-1.0 <= r["score"] <= 1.0 for r in results)


async def test_ask_filters_restrict_the_passages_the_model_sees(client: AsyncClient, model: RecordingChatModel) -> None:
    response = await client.post(
        "/ask", json={"question": "How much water does a young tree need?", "sources": ["book/pruning.md"]}
    )
    body = response.json()
    assert response.status_code == 200 and body["sources"]
    assert {s["source"] for s in body["sources"]} == {"book/pruning.md"}
    assert "twenty litres" not in model.prompts[0][-1].text

    response = await client.post("/ask", json={"question": "How do I prune?", "chapter": "Watering Young Trees"})
    sources = response.json()["sources"]
    assert sources and all("Watering Young Trees" in s["heading_path"][0] for s in sources)
    assert "Prune apple trees in late winter" not in model.prompts[1][-1].text


async def test_ask_with_a_filter_that_matches_nothing_is_a_422_not_a_false_refusal(
    client: AsyncClient, model: RecordingChatModel
) -> None:
    response = await client.post("/ask", json={"question": "How do I prune?", "sources": ["book/missing.md"]})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "filter_matches_nothing"
    assert "pruning.md" in response.json()["error"]["message"]  # names what the book does have
    assert model.prompts == []


async def test_start_up_limits_blas_to_one_thread_for_the_per_question_numpy_search(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(limits=2, user_api="blas")  # as a fresh process has it on this 2-core machine, or more
    assert all(pool["num_threads"] >= 2 for pool in threadpool_info() if pool["user_api"] == "blas")
    async for _, _http in app_client(settings, embeddings, qdrant, None):
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas and all(threads == 1 for threads in blas)
