"""The HTTP endpoints through the app factory, on a real embedded Qdrant, real embeddings and fake chat models."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from httpx import AsyncClient
from httpx_sse import aconnect_sse
from langchain_core.language_models import BaseChatModel
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.prompts import NOT_IN_BOOK
from chains.settings import Settings
from tests.conftest import app_client
from tests.fakes import FailingChatModel, scripted_model

pytestmark = pytest.mark.integration


@pytest.fixture
def chat_model() -> BaseChatModel | None:
    return scripted_model("Water each young tree with about twenty litres once a week [1].")


@pytest.fixture
async def client(
    settings: Settings,
    embeddings: LocalEmbeddings,
    qdrant: QdrantClient,
    indexed_book: Path,
    chat_model: BaseChatModel | None,
) -> AsyncIterator[AsyncClient]:
    async for _, http in app_client(settings, embeddings, qdrant, chat_model):
        yield http


async def sse_events(client: AsyncClient, body: dict[str, object]) -> list[tuple[str, str, dict[str, object]]]:
    events = []
    async with aconnect_sse(client, "POST", "/ask", json=body) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for sse in source.aiter_sse():
            events.append((sse.event, sse.id, json.loads(sse.data)))
    return events


async def test_health_reports_collection_and_point_count(client: AsyncClient, settings: Settings) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["collection"] == settings.qdrant_collection
    assert body["points"] > 0
    assert response.headers["x-request-id"]


async def test_search_returns_the_passage_that_answers(client: AsyncClient) -> None:
    response = await client.post("/search", json={"query": "how much water does a young tree need", "k": 2})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 2
    assert "twenty litres" in results[0]["text"]
    assert results[0]["metadata"]["source"] == "book/watering.md"
    assert results[0]["metadata"]["heading_path"][0] == "Watering Young Trees"
    assert results[0]["score"] >= results[1]["score"]


@pytest.mark.parametrize(
    "body",
    [{"query": ""}, {"query": "   "}, {"query": 42}, {"query": "x", "k": 0}, {"query": "x", "k": 1000}, {}],
)
async def test_search_rejects_bad_bodies_with_422(client: AsyncClient, body: dict[str, object]) -> None:
    response = await client.post("/search", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


async def test_ask_json_answers_with_sources_and_citations(client: AsyncClient) -> None:
    response = await client.post("/ask", json={"question": "How much should I water a young tree?"})
    assert response.status_code == 200
    body = response.json()
    assert body["mode"] == "generated"
    assert body["answer"] == "Water each young tree with about twenty litres once a week [1]."
    assert body["citations"] == [1]
    assert body["sources"][0]["number"] == 1
    assert "twenty litres" in body["sources"][0]["text"]


async def test_ask_streams_events_in_order_with_ids(client: AsyncClient) -> None:
    events = await sse_events(client, {"question": "How much should I water a young tree?", "stream": True})
    names = [name for name, _, _ in events]
    assert names[0] == "status" and events[0][2] == {"stage": "retrieving"}
    assert names[1] == "sources"
    assert names[2] == "status" and events[2][2] == {"stage": "generating"}
    # the highlights come once, after the first token (SOURCE_HIGHLIGHTS=embedding: they never hold it back)
    assert names[3] == "token" and set(names[3:-1]) == {"token", "highlights"} and names.count("highlights") == 1
    highlights = next(data for name, _, data in events if name == "highlights")["highlights"]
    assert [h["number"] for h in highlights] == [s["number"] for s in events[1][2]["sources"]]
    assert names[-1] == "done"
    assert [int(event_id) for _, event_id, _ in events] == list(range(1, len(events) + 1))
    text = "".join(str(data["text"]) for name, _, data in events if name == "token")
    assert text == "Water each young tree with about twenty litres once a week [1]."
    assert events[-1][2]["citations"] == [1]


async def test_ask_streams_when_accept_header_asks(client: AsyncClient) -> None:
    async with aconnect_sse(
        client, "POST", "/ask", json={"question": "How deep is the mulch?"}, headers={"Accept": "text/event-stream"}
    ) as source:
        names = [sse.event async for sse in source.aiter_sse()]
        assert source.response.headers.get("x-accel-buffering") == "no"
    assert names[-1] == "done"


@pytest.mark.parametrize(
    "body",
    [
        {"question": ""},
        {"question": "  \n "},
        {"question": ["a list"]},
        {"question": "ok", "history": "not a list"},
        {"question": "ok", "k": -1},
        {"question": "ok", "unknown_field": 1},
        {"question": "x" * 5000},
    ],
)
async def test_ask_rejects_bad_bodies_with_422(client: AsyncClient, body: dict[str, object]) -> None:
    response = await client.post("/ask", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"]


async def test_ask_rejects_malformed_json(client: AsyncClient) -> None:
    response = await client.post("/ask", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


async def test_oversized_body_gets_413_and_service_keeps_answering(client: AsyncClient) -> None:
    response = await client.post("/ask", content=b"x" * (200 * 1024), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize("chat_model", [None])
async def test_ask_without_chat_model_gives_labelled_extractive_answer(client: AsyncClient) -> None:
    body = (await client.post("/ask", json={"question": "When should apple trees be pruned?"})).json()
    assert body["mode"] == "extractive"
    assert body["answer"].startswith("No chat model is configured")
    assert "late winter" in body["answer"]


async def test_question_outside_the_book_gets_refusal(client: AsyncClient) -> None:
    body = (await client.post("/ask", json={"question": "Who won the 1998 football world cup final?"})).json()
    assert body["mode"] == "not_in_book"
    assert body["answer"].startswith(NOT_IN_BOOK)
    assert body["sources"] == []


@pytest.mark.parametrize("chat_model", [FailingChatModel()])
async def test_model_failing_mid_stream_ends_with_one_error_event(client: AsyncClient) -> None:
    events = await sse_events(client, {"question": "How much should I water a young tree?", "stream": True})
    names = [name for name, _, _ in events]
    assert "token" in names
    assert names[-1] == "error" and names.count("error") == 1 and "done" not in names
    error = events[-1][2]
    assert error["code"] == "internal_error"
    assert "secret internal detail" not in json.dumps(error)
    assert (await client.get("/health")).status_code == 200


async def test_cors_preflight_allows_configured_origin_only_and_logs_a_refused_origin_once(
    client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    with caplog.at_level(logging.WARNING, logger="rag_api.errors"):
        allowed = await client.options("/ask", headers=headers)
        assert allowed.headers.get("access-control-allow-origin") == "http://localhost:3000"
        for _ in range(3):
            denied = await client.options("/ask", headers={**headers, "Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in denied.headers
    refused = [r.getMessage() for r in caplog.records if "CORS_ORIGINS" in r.getMessage()]
    assert len(refused) == 1, "once per origin"
    assert "https://evil.example" in refused[0] and "localhost:3000" not in refused[0]


async def test_chat_page_and_openapi_are_served(client: AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and "Ask the book" in page.text
    schema = (await client.get("/openapi.json")).json()
    assert {"/ask", "/search", "/health", "/ready"} <= set(schema["paths"])
    assert "`sources`" in schema["paths"]["/ask"]["post"]["description"]
