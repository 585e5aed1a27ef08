"""The production path end to end: the API over a real local OpenAI-compatible server (tests/test_model_stream.py's
`Upstream`), the model built from CHAT_MODEL as in production, for `/ask`, `/api/chat` and `/v1`, and a stream cut
short by the server answered as `model_incomplete` (an error event; 502 for JSON), never as `done`."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from httpx import AsyncClient
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.models import build_chat_model
from chains.settings import Settings
from rag_api.app import create_app
from rag_api.state import Overrides
from tests.conftest import app_client, ingest_into
from tests.live import free_port, serve
from tests.test_model_stream import WORDS, Upstream, chunk, completion_stream, paced

pytestmark = pytest.mark.integration

QUESTION = {"question": "How much water does a young tree need?"}


async def served(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, events: list[str]
) -> AsyncIterator[tuple[AsyncClient, Upstream]]:
    upstream = Upstream(paced(events))
    port = free_port()
    configured = settings.model_copy(
        update={"chat_model": "m", "openai_base_url": f"http://127.0.0.1:{port}/v1", "chat_max_retries": 0}
    )
    with serve(upstream.app(), port):
        async for _, http in app_client(configured, embeddings, qdrant, build_chat_model(configured)):
            yield http, upstream


@pytest.fixture
async def whole(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> AsyncIterator[tuple[AsyncClient, Upstream]]:
    async for pair in served(settings, embeddings, qdrant, completion_stream(WORDS)):
        yield pair


@pytest.fixture
async def cut(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> AsyncIterator[tuple[AsyncClient, Upstream]]:
    async for pair in served(settings, embeddings, qdrant, completion_stream(WORDS)[:4]):  # no finish, no [DONE]
        yield pair


def data_lines(text: str) -> list[str]:
    return [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]


async def test_each_face_streams_the_model_servers_text(whole: tuple[AsyncClient, Upstream]) -> None:
    http, upstream = whole
    ask = await http.post("/ask", json={**QUESTION, "stream": True})
    events = [json.loads(d) for d in data_lines(ask.text)]
    assert "".join(e.get("text", "") for e in events) == "".join(WORDS) and events[-1]["mode"] == "generated"
    assert events[-1]["usage"] == {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}
    messages = [{"role": "user", "content": QUESTION["question"]}]
    v1 = await http.post("/v1/chat/completions", json={"model": "book", "stream": True, "messages": messages})
    chunks = [json.loads(d) for d in data_lines(v1.text) if d != "[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(WORDS) and data_lines(v1.text)[-1] == "[DONE]"
    chat_body = {"messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": QUESTION["question"]}]}]}
    chat = await http.post("/api/chat", json=chat_body)
    parts = [json.loads(d) for d in data_lines(chat.text) if d != "[DONE]"]
    assert "".join(p["delta"] for p in parts if p["type"] == "text-delta") == "".join(WORDS)
    assert parts[-1]["type"] == "finish"
    assert len(upstream.bodies) == 3 and all(b["stream"] is True for b in upstream.bodies)


async def test_a_stream_cut_short_by_the_model_server_is_model_incomplete_never_done(
    cut: tuple[AsyncClient, Upstream],
) -> None:
    http, _ = cut
    ask = await http.post("/ask", json={**QUESTION, "stream": True})
    assert "event: done" not in ask.text
    last = json.loads(data_lines(ask.text)[-1])
    assert last["code"] == "model_incomplete"
    response = await http.post("/ask", json=QUESTION)
    assert response.status_code == 502 and response.json()["error"]["code"] == "model_incomplete"
    messages = [{"role": "user", "content": QUESTION["question"]}]
    v1 = await http.post("/v1/chat/completions", json={"model": "book", "messages": messages})
    assert v1.status_code == 502


@pytest.mark.parametrize("face", ["/ask", "/v1/chat/completions", "/api/chat"])
async def test_a_client_leaving_mid_answer_stops_the_upstream_request_and_is_no_model_error(
    face: str,
    settings: Settings,
    embeddings: LocalEmbeddings,
    qdrant: QdrantClient,
    indexed_book: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stopped = threading.Event()

    async def endless() -> AsyncIterator[str]:
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                await asyncio.sleep(0.02)
                yield chunk({"content": "more "})
        finally:
            stopped.set()

    upstream_port, api_port = free_port(), free_port()
    configured = settings.model_copy(
        update={"chat_model": "m", "openai_base_url": f"http://127.0.0.1:{upstream_port}/v1", "chat_max_retries": 0}
    )
    app = create_app(configured, Overrides(embeddings=embeddings, client=qdrant))
    question = QUESTION["question"]
    bodies = {
        "/ask": {**QUESTION, "stream": True},
        "/v1/chat/completions": {"model": "b", "stream": True, "messages": [{"role": "user", "content": question}]},
        "/api/chat": {"messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": question}]}]},
    }
    upstream = serve(Upstream(endless).app(), upstream_port)
    with upstream, serve(app, api_port) as base_url, caplog.at_level(logging.INFO):
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=30) as client,
            client.stream("POST", face, json=bodies[face]) as response,
        ):
            seen = 0
            async for line in response.aiter_lines():
                seen += "more" in line
                if seen == 3:
                    break  # leaving the block closes the connection mid-answer
        assert await asyncio.to_thread(stopped.wait, 10), "the upstream request stopped"
        for _ in range(100):
            if app.state.rag.gate.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        assert app.state.rag.gate.in_flight == 0, "the model slot is released"
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "rag_api" in r.name]
    assert problems == [], "a disconnect is reported as cancellation, never as a model failure"
    assert any("client disconnected" in r.getMessage() for r in caplog.records)


SAMPLE_BOOK = Path(__file__).resolve().parent.parent / "sample_book"
PASSAGE = re.compile(r'<passage number="(\d+)" from="[^"]*">\n(.*?)\n</passage>', re.DOTALL)


@pytest.mark.parametrize("budget", [0, 1500])
async def test_the_model_reads_every_passage_within_chat_passage_chars_each_cut_around_its_chunk(
    budget: int, settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    book = settings.model_copy(update={"chat_passage_chars": budget})
    assert not ingest_into(qdrant, embeddings, book, SAMPLE_BOOK).failed
    question = "How should I water and mulch a young tree in its first summer?"
    async for http, upstream in served(book, embeddings, qdrant, completion_stream(WORDS)):
        answer = (await http.post("/ask", json={"question": question, "stream": False})).json()
        prompt = upstream.bodies[0]["messages"][-1]["content"]
    sources = answer["sources"]
    read = {int(number): html.unescape(text) for number, text in PASSAGE.findall(prompt)}
    assert sorted(read) == [s["number"] for s in sources], "every numbered passage is in the prompt"
    whole = sum(len(s["text"]) for s in sources)
    if budget == 0:
        assert [read[s["number"]] for s in sources] == [s["text"] for s in sources]
        return
    assert whole > budget, "the sample book's passages for this question are longer than the budget"
    assert sum(len(text.strip("… ")) for text in read.values()) <= budget
    cut_around_chunk = 0
    for source in sources:
        full, inner = source["text"], read[source["number"]].strip("… ")
        assert inner in full, "an excerpt of the passage"
        at = full.index(inner)
        assert at == 0 or full[at - 1].isspace(), "it begins at a word"
        assert at + len(inner) == len(full) or full[at + len(inner)].isspace(), "it ends at a word"
        if source["chunk_span"] is not None and len(inner) < len(full):
            start, end = source["chunk_span"]
            assert at < end and at + len(inner) > start, "the excerpt is around the chunk the passage was found by"
            cut_around_chunk += 1
    assert cut_around_chunk, "a joined passage was cut, around its chunk"
