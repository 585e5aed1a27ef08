"""The chat model's text stream (chains/model_stream.py): the OpenAI stream read directly, against a real HTTP
server on 127.0.0.1 speaking the Chat Completions streaming format, and the `model.astream` path for other models."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import LLMResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from chains.errors import DependencyUnavailable, ModelTimeout
from chains.model_stream import ModelText, SseDataSplitter, fold_events, stream_model_text
from chains.models import build_chat_model
from chains.settings import Settings
from tests.live import free_port, serve

MESSAGES: list[BaseMessage] = [SystemMessage("Answer from the passages."), HumanMessage("What is mulch?")]
WORDS = ["Mulch ", "keeps ", "soil ", "moist ", "[1]."]


def chunk(delta: dict[str, Any] | None = None, usage: dict[str, int] | None = None) -> str:
    body: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    body["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": None}]
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


def completion_stream(words: list[str]) -> list[str]:
    usage = {"prompt_tokens": 12, "completion_tokens": len(words), "total_tokens": 12 + len(words)}
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": w}) for w in words),
        chunk(None, usage),
        "data: [DONE]\n\n",
    ]


class Upstream:
    """An OpenAI-compatible endpoint that records each request body and streams what `events` gives."""

    def __init__(self, events: Callable[[], AsyncIterator[str]], status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.events = events
        self.status = status

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            self.bodies.append(await request.json())
            if self.status != 200:
                error = {"error": {"message": "nope", "type": "server_error"}}
                return Response(json.dumps(error), status_code=self.status, media_type="application/json")
            return StreamingResponse(self.events(), media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def paced(parts: list[str], pause_s: float = 0.0) -> Callable[[], AsyncIterator[str]]:
    async def events() -> AsyncIterator[str]:
        for part in parts:
            if pause_s:
                await asyncio.sleep(pause_s)
            yield part

    return events


def chat_model(port: int, **settings: Any) -> BaseChatModel:
    values = {
        "chat_model": "m",
        "openai_base_url": f"http://127.0.0.1:{port}/v1",
        "chat_max_retries": 0,
        **settings,
    }
    model = build_chat_model(Settings(**values))  # type: ignore[arg-type]
    assert model is not None
    return model


async def collect(model: BaseChatModel) -> list[ModelText]:
    return [piece async for piece in stream_model_text(model, MESSAGES)]


# --- the wire format, pure ---------------------------------------------------------------------------------------


def test_splitter_joins_events_split_across_reads_and_skips_comments_and_other_fields() -> None:
    splitter = SseDataSplitter()
    assert splitter.feed(b": keep-alive\n\nevent: x\nid: 3\nda") == []
    assert splitter.feed(b'ta: {"a":1}\r\n\r\ndata: line one\ndata: line two\n\ndata:[DONE]\n') == [
        '{"a":1}',
        "line one\nline two",
    ]
    assert splitter.feed(b"\n") == ["[DONE]"]


def test_fold_joins_content_deltas_counts_them_and_keeps_usage_and_done() -> None:
    payloads = [p.removeprefix("data: ").strip() for p in completion_stream(WORDS)]
    fold = fold_events(payloads)
    assert fold.text == "".join(WORDS)
    assert fold.deltas == len(WORDS)
    assert fold.usage == {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}
    assert fold.done


def test_fold_raises_dependency_unavailable_on_an_error_event_in_the_stream() -> None:
    with pytest.raises(DependencyUnavailable, match="failed while streaming"):
        fold_events(['{"error": {"message": "model overloaded"}}'])


def test_fold_raises_dependency_unavailable_on_data_that_is_not_json() -> None:
    with pytest.raises(DependencyUnavailable, match="malformed stream"):
        fold_events(["<html>502 Bad Gateway</html>"])


# --- against a live endpoint -------------------------------------------------------------------------------------


async def test_direct_read_sends_the_request_chat_openai_would_and_yields_the_same_text_and_usage() -> None:
    upstream = Upstream(paced(completion_stream(WORDS)))
    port = free_port()
    with serve(upstream.app(), port):
        model = chat_model(port)
        pieces = await collect(model)
        through_langchain = [c async for c in model.astream(MESSAGES)]
    direct_body, langchain_body = upstream.bodies
    assert direct_body == langchain_body
    assert direct_body["stream"] is True and direct_body["stream_options"] == {"include_usage": True}
    assert "".join(p.text for p in pieces) == "".join(str(c.content) for c in through_langchain) == "".join(WORDS)
    assert sum(p.deltas for p in pieces) == len(WORDS)
    assert pieces[-1].usage == {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}


async def test_deltas_that_arrive_in_one_read_become_one_piece_and_paced_ones_stay_apart() -> None:
    burst = Upstream(paced(["".join(completion_stream(WORDS))]))
    spaced = Upstream(paced(completion_stream(WORDS), 0.05))
    burst_port, spaced_port = free_port(), free_port()
    with serve(burst.app(), burst_port), serve(spaced.app(), spaced_port):
        together = [p for p in await collect(chat_model(burst_port)) if p.text]
        apart = [p for p in await collect(chat_model(spaced_port)) if p.text]
    assert [(p.text, p.deltas) for p in together] == [("".join(WORDS), len(WORDS))]
    assert [p.text for p in apart] == WORDS


class Recorder(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.started: list[list[list[BaseMessage]]] = []
        self.ended: list[LLMResult] = []
        self.errors: list[BaseException] = []

    async def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **_: Any
    ) -> None:
        self.started.append(messages)

    async def on_llm_end(self, response: LLMResult, **_: Any) -> None:
        self.ended.append(response)

    async def on_llm_error(self, error: BaseException, **_: Any) -> None:
        self.errors.append(error)


async def test_callbacks_see_the_call_start_and_end_with_the_whole_message_and_usage() -> None:
    upstream = Upstream(paced(completion_stream(WORDS)))
    port = free_port()
    recorder = Recorder()
    with serve(upstream.app(), port):
        model = chat_model(port)
        model.callbacks = [recorder]
        await collect(model)
    assert recorder.started == [[MESSAGES]]
    (result,) = recorder.ended
    message = result.generations[0][0].message  # type: ignore[attr-defined]
    assert isinstance(message, AIMessage) and message.text == "".join(WORDS)
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] == 5
    assert recorder.errors == []


async def test_an_http_error_status_is_the_openai_clients_own_error_and_reaches_the_callbacks() -> None:
    import openai

    upstream = Upstream(paced([]), status=500)
    port = free_port()
    recorder = Recorder()
    with serve(upstream.app(), port):
        model = chat_model(port)
        model.callbacks = [recorder]
        with pytest.raises(openai.InternalServerError):
            await collect(model)
    assert len(recorder.errors) == 1 and recorder.ended == []


async def test_an_error_event_mid_stream_raises_dependency_unavailable_after_the_text_before_it() -> None:
    error = 'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    upstream = Upstream(paced([*completion_stream(WORDS)[:3], error], 0.02))
    port = free_port()
    received: list[str] = []
    with serve(upstream.app(), port), pytest.raises(DependencyUnavailable, match="while streaming"):
        async for piece in stream_model_text(chat_model(port), MESSAGES):
            received.append(piece.text)
    assert "".join(received) == "".join(WORDS[:2])


async def test_a_stream_that_stalls_past_the_client_timeout_raises_model_timeout() -> None:
    upstream = Upstream(paced([completion_stream(WORDS)[1], *completion_stream(WORDS)[2:]], 2.0))
    port = free_port()
    with serve(upstream.app(), port), pytest.raises(ModelTimeout):
        await collect(chat_model(port, chat_timeout_s=0.5))


async def test_other_chat_models_stream_through_astream_with_the_same_pieces() -> None:
    model = GenericFakeChatModel(messages=iter([AIMessage("Mulch keeps soil moist [1].")]))
    pieces = await collect(model)
    assert "".join(p.text for p in pieces) == "Mulch keeps soil moist [1]."
    assert all(p.deltas == 1 for p in pieces if p.text)


async def test_each_chat_model_call_is_logged_at_debug_with_its_deltas_time_and_usage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = Upstream(paced(completion_stream(WORDS)))
    port = free_port()
    with serve(upstream.app(), port), caplog.at_level(logging.DEBUG, logger="chains.model_stream"):
        await collect(chat_model(port))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "chains.model_stream"]
    assert line.startswith("chat model m: 5 deltas in ") and "'output_tokens': 5" in line
