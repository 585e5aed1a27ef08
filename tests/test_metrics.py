"""`GET /metrics`: the counters and histograms move with real requests through the app factory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from httpx import AsyncClient
from httpx_sse import aconnect_sse
from prometheus_client.parser import text_string_to_metric_families
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from tests.conftest import app_client
from tests.fakes import scripted_model

pytestmark = pytest.mark.integration

ANSWER = "Water each young tree with about twenty litres once a week [1]."


@pytest.fixture
async def client(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> AsyncIterator[AsyncClient]:
    async for _, http in app_client(settings, embeddings, qdrant, scripted_model(ANSWER, ANSWER)):
        yield http


async def scrape(client: AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_metrics_count_a_streamed_answer_its_tokens_and_its_stages(client: AsyncClient) -> None:
    before = await scrape(client)
    assert before.get(("bookrag_streamed_tokens_total", (("endpoint", "/ask"),)), 0.0) == 0.0

    tokens = 0
    async with aconnect_sse(client, "POST", "/ask", json={"question": "How much water does a young tree need?"}) as sse:
        async for event in sse.aiter_sse():
            if event.event == "token":
                tokens += 1
                assert json.loads(event.data)["text"]
    assert tokens >= 1

    after = await scrape(client)
    ask = (("method", "POST"), ("route", "/ask"), ("status", "200"))
    assert after[("bookrag_http_requests_total", ask)] == 1
    assert after[("bookrag_http_request_duration_seconds_count", (("method", "POST"), ("route", "/ask")))] == 1
    # every model delta is counted; coalescing may have sent them in fewer events
    counted = after[("bookrag_streamed_tokens_total", (("endpoint", "/ask"),))]
    assert counted >= tokens and counted > 1
    assert after[("bookrag_retrieval_duration_seconds_count", ())] == 1
    assert after[("bookrag_retrieval_duration_seconds_sum", ())] > 0
    assert after[("bookrag_model_duration_seconds_count", ())] == 1
    assert after[("bookrag_first_token_seconds_count", ())] == 1
    # the first scrape is counted too, by its route template
    metrics_get = (("method", "GET"), ("route", "/metrics"), ("status", "200"))
    assert after[("bookrag_http_requests_total", metrics_get)] == 1


async def test_json_answer_counts_stages_but_streams_no_tokens(client: AsyncClient) -> None:
    response = await client.post("/ask", json={"question": "How much water does a young tree need?"})
    assert response.status_code == 200
    after = await scrape(client)
    assert after[("bookrag_model_duration_seconds_count", ())] == 1
    assert after.get(("bookrag_streamed_tokens_total", (("endpoint", "/ask"),)), 0.0) == 0.0


async def test_unknown_paths_share_one_route_label(client: AsyncClient) -> None:
    for path in ("/wp-admin", "/.env", "/no/such/page"):
        assert (await client.get(path)).status_code == 404
    after = await scrape(client)
    unmatched = (("method", "GET"), ("route", "<unmatched>"), ("status", "404"))
    assert after[("bookrag_http_requests_total", unmatched)] == 3
    assert not any("wp-admin" in str(labels) for _, labels in after)


async def test_tokens_streamed_are_counted_per_endpoint(client: AsyncClient) -> None:
    message = {
        "id": "u1",
        "role": "user",
        "parts": [{"type": "text", "text": "How much water does a young tree need?"}],
    }
    body = {"id": "chat-1", "messages": [message], "trigger": "submit-message"}
    async with aconnect_sse(client, "POST", "/api/chat", json=body) as sse:
        chunks = [json.loads(event.data) async for event in sse.aiter_sse() if event.data != "[DONE]"]
    deltas = sum(1 for chunk in chunks if chunk.get("type") == "text-delta")
    assert deltas >= 1
    after = await scrape(client)
    assert after[("bookrag_streamed_tokens_total", (("endpoint", "/api/chat"),))] >= max(deltas, 2)
    assert after.get(("bookrag_streamed_tokens_total", (("endpoint", "/ask"),)), 0.0) == 0.0
