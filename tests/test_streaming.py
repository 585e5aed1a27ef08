"""The `/ask` stream protocol (docs/streaming.md) with a real SSE client: order, ids, JSON, headers, the error
event, the same content as JSON, token coalescing, and a client disconnect that stops the model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx import AsyncClient
from httpx_sse import aconnect_sse
from qdrant_client import QdrantClient
from starlette.requests import Request

from chains.answer import AnswerEvent, AnswerRequest, SourcesEvent, StatusEvent, TokenEvent
from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from rag_api.answering import stream_retrieved_answer
from rag_api.app import create_app
from rag_api.state import Overrides
from rag_api.streaming import coalesce_tokens
from tests.conftest import app_client
from tests.fakes import CountingChatModel, FailingChatModel, UsageChatModel, scripted_model
from tests.live import free_port, serve

QUESTION = "How much should I water a young tree?"
ANSWER = "Water each young tree with about twenty litres once a week [1]."

Event = tuple[str, int, dict[str, Any]]


async def read_stream(client: AsyncClient, body: dict[str, Any]) -> tuple[httpx.Response, list[Event]]:
    events: list[Event] = []
    async with aconnect_sse(client, "POST", "/ask", json=body) as source:
        async for sse in source.aiter_sse():
            events.append((sse.event, int(sse.id), json.loads(sse.data)))
    return source.response, events


def names(events: list[Event]) -> list[str]:
    return [name for name, _, _ in events]


def with_highlights_of(events: list[Event]) -> list[dict[str, Any]]:
    """The streamed sources with the highlights event folded in, as a client does."""
    sources = [dict(source) for name, _, data in events if name == "sources" for source in data["sources"]]
    for name, _, data in events:
        for entry in data["highlights"] if name == "highlights" else []:
            next(s for s in sources if s["number"] == entry["number"])["highlights"] = entry["highlights"]
    return sources


def text_of(events: list[Event]) -> str:
    return "".join(data["text"] for name, _, data in events if name == "token")


@pytest.mark.integration
class TestAskStream:
    @pytest.fixture
    async def client(
        self, settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
    ) -> AsyncIterator[AsyncClient]:
        model = scripted_model(ANSWER, ANSWER)
        async for _, http in app_client(settings, embeddings, qdrant, model):
            yield http

    async def test_events_follow_the_documented_order_with_sequential_ids_and_json(self, client: AsyncClient) -> None:
        response, events = await read_stream(client, {"question": QUESTION, "stream": True})
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "no-cache" in response.headers["cache-control"]
        assert response.headers["x-accel-buffering"] == "no"
        assert [event_id for _, event_id, _ in events] == list(range(1, len(events) + 1))
        assert names(events)[:3] == ["status", "sources", "status"]
        assert events[0][2] == {"stage": "retrieving"} and events[2][2] == {"stage": "generating"}
        assert names(events)[3] == "token" and names(events)[-1] == "done"
        assert set(names(events)[3:-1]) == {"token", "highlights"} and names(events).count("highlights") == 1
        sources = events[1][2]["sources"]
        assert sources[0]["number"] == 1 and sources[0]["heading_path"][0] == "Watering Young Trees"
        assert {"source", "title", "url", "page", "score", "text"} <= set(sources[0])
        done = events[-1][2]
        assert set(done) == {
            "answer_id",
            "mode",
            "citations",
            "invalid_citations",
            "usage",
            "timings",
            "history_turns_used",
            "terms_not_in_book",
        }
        assert done["mode"] == "generated" and done["citations"] == [1] and done["usage"] is None
        assert set(done["timings"]) == {"retrieval_ms", "first_token_ms", "total_ms"}
        assert 0 <= done["timings"]["retrieval_ms"] <= done["timings"]["first_token_ms"] <= done["timings"]["total_ms"]
        assert text_of(events) == ANSWER

    async def test_json_answer_has_the_same_content_as_the_folded_stream(self, client: AsyncClient) -> None:
        _, events = await read_stream(client, {"question": QUESTION, "stream": True})
        whole = (await client.post("/ask", json={"question": QUESTION})).json()
        assert whole["answer"] == text_of(events)
        assert whole["sources"] == with_highlights_of(events)
        assert any(source["highlights"] for source in whole["sources"])
        done = events[-1][2]
        assert (whole["citations"], whole["mode"], whole["usage"]) == (done["citations"], done["mode"], done["usage"])


@pytest.mark.integration
async def test_done_event_reports_the_models_token_usage(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> None:
    async for _, client in app_client(settings, embeddings, qdrant, UsageChatModel()):
        _, events = await read_stream(client, {"question": QUESTION, "stream": True})
        assert events[-1][2]["usage"] == {"input_tokens": 120, "output_tokens": 5, "total_tokens": 125}


@pytest.mark.integration
async def test_model_failing_mid_stream_ends_with_an_error_event_after_the_tokens(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> None:
    async for _, client in app_client(settings, embeddings, qdrant, FailingChatModel(fail_after=3)):
        response, events = await read_stream(client, {"question": QUESTION, "stream": True})
        assert response.status_code == 200
        assert names(events)[:3] == ["status", "sources", "status"]
        assert text_of(events) == "partial0 partial1 partial2 "
        assert names(events)[-1] == "error" and names(events).count("error") == 1 and "done" not in names(events)
        assert [event_id for _, event_id, _ in events] == list(range(1, len(events) + 1))
        error = events[-1][2]
        assert error == {"code": "internal_error", "message": "an unexpected error occurred; it has been logged"}


def _task_names(loop: asyncio.AbstractEventLoop) -> set[str]:
    async def names() -> set[str]:
        return {task.get_coro().__qualname__ for task in asyncio.all_tasks()}  # type: ignore[union-attr]

    return asyncio.run_coroutine_threadsafe(names(), loop).result(timeout=10)


async def _until(condition: Any, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting: {what}")


@pytest.mark.integration
async def test_client_disconnect_stops_the_model_and_leaves_no_task(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> None:
    model = CountingChatModel(delay_s=0.01, words=2000)  # twenty seconds of answer
    app = create_app(settings, Overrides(chat_model=model, embeddings=embeddings, client=qdrant))
    with serve(app, free_port()) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            tokens = 0
            async with aconnect_sse(client, "POST", "/ask", json={"question": QUESTION, "stream": True}) as source:
                async for sse in source.aiter_sse():
                    tokens += sse.event == "token"
                    if tokens == 3:
                        break  # leaving the block closes the connection mid-answer
            await _until(lambda: model.finished, "the model stream to end after the disconnect")
            assert model.stopped_early, "the model stream was cancelled, not run to its end"
            produced = model.chunks_produced
            assert produced < model.words
            await asyncio.sleep(0.2)
            assert model.chunks_produced == produced, "no chunk is produced after the disconnect"
            assert app.state.rag.gate.in_flight == 0, "the model slot is released"
            leaks = {"coalesce_tokens.<locals>.read_ahead", "RequestResponseCycle.run_asgi"}
            await _until(lambda: not (_task_names(model.loop) & leaks), "the request's tasks to end")


@pytest.mark.integration
async def test_retrieved_answer_closed_without_being_read_stops_the_model(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> None:
    # What the response's background task does when the client went away before the first byte was sent.
    model = CountingChatModel(delay_s=0.01, words=2000)
    async for app, _ in app_client(settings, embeddings, qdrant, model):
        scope = {"type": "http", "app": app, "method": "POST", "path": "/v1/chat/completions", "headers": []}
        answer = await stream_retrieved_answer(app.state.rag, AnswerRequest(QUESTION), Request(scope))
        assert [type(event) for event in answer.head] == [StatusEvent, SourcesEvent]
        assert isinstance(answer.head[-1], SourcesEvent) and answer.head[-1].sources
        await _until(lambda: model.chunks_produced > 0, "the model to be called (read ahead) after retrieval")
        await answer.aclose()
        assert model.stopped_early, "the model stream was cancelled, not run to its end"
        assert app.state.rag.gate.in_flight == 0, "the model slot is released"


# Token coalescing, on plain async generators.


async def _collect(events: AsyncIterator[AnswerEvent]) -> list[AnswerEvent]:
    return [event async for event in events]


async def test_a_sources_event_reaches_the_consumer_before_the_answer_goes_on_to_the_model() -> None:
    """The read-ahead hands over `sources` before it resumes the answer, whose next step (building and sending
    the model request) runs for milliseconds without an await: `sources` must not wait for it."""
    order: list[str] = []

    async def answer() -> AsyncIterator[AnswerEvent]:
        yield SourcesEvent([])
        order.append("answer resumed")  # what follows is the model call
        yield TokenEvent("text")

    stream = coalesce_tokens(answer())
    assert await anext(stream) == SourcesEvent([])
    order.append("sources received")
    await _collect(stream)
    assert order == ["sources received", "answer resumed"]


async def test_coalescing_merges_tokens_that_are_already_waiting() -> None:
    async def burst() -> AsyncIterator[AnswerEvent]:
        yield StatusEvent("generating")
        for word in ("a ", "b ", "c"):
            yield TokenEvent(word)

    assert await _collect(coalesce_tokens(burst())) == [StatusEvent("generating"), TokenEvent("a b c", deltas=3)]


async def test_coalescing_window_sends_the_first_token_at_once_and_merges_fast_ones() -> None:
    async def fast() -> AsyncIterator[AnswerEvent]:
        for word in ("a ", "b ", "c ", "d"):
            yield TokenEvent(word)
            await asyncio.sleep(0.001)

    assert await _collect(coalesce_tokens(fast(), window_s=0.3)) == [TokenEvent("a "), TokenEvent("b c d", deltas=3)]


async def test_coalescing_sends_a_lone_token_at_once() -> None:
    released = asyncio.Event()

    async def slow() -> AsyncIterator[AnswerEvent]:
        yield TokenEvent("first")
        await released.wait()  # the second token exists only once the first has been received
        yield TokenEvent("second")

    stream = coalesce_tokens(slow())
    assert await anext(stream) == TokenEvent("first")
    released.set()
    assert await _collect(stream) == [TokenEvent("second")]


async def test_coalescing_raises_the_sources_error_and_closing_cancels_the_source() -> None:
    async def failing() -> AsyncIterator[AnswerEvent]:
        yield TokenEvent("x")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await _collect(coalesce_tokens(failing()))

    state = {"cancelled": False}

    async def endless() -> AsyncIterator[AnswerEvent]:
        try:
            while True:
                yield TokenEvent("x")
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    stream = coalesce_tokens(endless())
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert state["cancelled"]
