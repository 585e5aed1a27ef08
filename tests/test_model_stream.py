"""The chat model's text stream (chains/model_stream.py): `ChatOpenAI.astream` against a real HTTP server on
127.0.0.1 speaking the Chat Completions streaming format (cut short, failing, stalling, left by its reader), and
other chat models through the same `astream`."""

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

from chains.errors import DependencyUnavailable, ModelIncomplete, ModelTimeout
from chains.model_stream import ModelText, OpenAIChatStream, stream_model_text, text_stream_for
from chains.models import build_chat_model
from chains.settings import Settings
from tests.fakes import scripted_model
from tests.live import free_port, serve

MESSAGES: list[BaseMessage] = [SystemMessage("Answer from the passages."), HumanMessage("What is mulch?")]
WORDS = ["Mulch ", "keeps ", "soil ", "moist ", "[1]."]


def chunk(delta: dict[str, Any] | None = None, usage: dict[str, int] | None = None, finish: str | None = None) -> str:
    body: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    body["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


def completion_stream(words: list[str]) -> list[str]:
    usage = {"prompt_tokens": 12, "completion_tokens": len(words), "total_tokens": 12 + len(words)}
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": w}) for w in words),
        chunk({}, finish="stop"),
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


def model_settings(port: int, **settings: Any) -> Settings:
    values = {"chat_model": "m", "openai_base_url": f"http://127.0.0.1:{port}/v1", "chat_max_retries": 0, **settings}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def chat_model(port: int, **settings: Any) -> BaseChatModel:
    model = build_chat_model(model_settings(port, **settings))
    assert model is not None
    return model


# The two public ways the chain reads ChatOpenAI's text: `model.astream`, and the `openai` SDK's own iterator
# (`OpenAIChatStream`, what the service uses for the OpenAI-compatible default).
READERS = ["astream", "openai_sdk"]


def text_of(reader: str, model: BaseChatModel, port: int, **settings: Any) -> AsyncIterator[ModelText]:
    if reader == "astream":
        return stream_model_text(model, MESSAGES)
    fast = OpenAIChatStream.for_model(model, model_settings(port, **settings))
    assert fast is not None
    return fast.stream(MESSAGES)


def read(reader: str, port: int, **settings: Any) -> AsyncIterator[ModelText]:
    return text_of(reader, chat_model(port, **settings), port, **settings)


async def collect(pieces: AsyncIterator[ModelText]) -> list[ModelText]:
    return [piece async for piece in pieces]


# --- against a live endpoint -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", READERS)
async def test_chat_openai_streams_the_text_and_usage(reader: str) -> None:
    upstream = Upstream(paced(completion_stream(WORDS)))
    port = free_port()
    with serve(upstream.app(), port):
        pieces = await collect(read(reader, port))
    (body,) = upstream.bodies
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert "".join(p.text for p in pieces) == "".join(WORDS)
    assert sum(p.deltas for p in pieces) == len(WORDS)
    assert pieces[-1].usage == {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}


@pytest.mark.parametrize("reader", READERS)
async def test_a_stream_cut_cleanly_without_finish_reason_or_done_is_model_incomplete_after_its_text(
    reader: str,
) -> None:
    cut = completion_stream(WORDS)[:4]  # role, three words; then the body ends cleanly
    upstream = Upstream(paced(cut))
    port = free_port()
    received: list[str] = []
    with serve(upstream.app(), port), pytest.raises(ModelIncomplete):
        async for piece in read(reader, port):
            received.append(piece.text)
    assert "".join(received) == "".join(WORDS[:3])


@pytest.mark.parametrize("reader", READERS)
async def test_a_stream_with_a_finish_reason_but_cut_before_done_is_complete(reader: str) -> None:
    finish = chunk({}, finish="stop")
    upstream = Upstream(paced([*completion_stream(WORDS)[:-2], finish]))
    port = free_port()
    with serve(upstream.app(), port):
        pieces = await collect(read(reader, port))
    assert "".join(p.text for p in pieces) == "".join(WORDS)


class Recorder(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.started: list[list[list[BaseMessage]]] = []
        self.tokens: list[str] = []
        self.ended: list[LLMResult] = []
        self.errors: list[BaseException] = []

    async def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **_: Any
    ) -> None:
        self.started.append(messages)

    async def on_llm_new_token(self, token: str, **_: Any) -> None:
        self.tokens.append(token)

    async def on_llm_end(self, response: LLMResult, **_: Any) -> None:
        self.ended.append(response)

    async def on_llm_error(self, error: BaseException, **_: Any) -> None:
        self.errors.append(error)


@pytest.mark.parametrize("reader", READERS)
async def test_callbacks_see_the_call_start_every_token_and_the_end_with_the_whole_message_and_usage(
    reader: str,
) -> None:
    upstream = Upstream(paced(completion_stream(WORDS)))
    port = free_port()
    recorder = Recorder()
    with serve(upstream.app(), port):
        model = chat_model(port)
        model.callbacks = [recorder]
        await collect(text_of(reader, model, port))
    assert recorder.started == [[MESSAGES]]
    assert [t for t in recorder.tokens if t] == WORDS
    (result,) = recorder.ended
    message = result.generations[0][0].message  # type: ignore[attr-defined]
    assert isinstance(message, AIMessage) and message.text == "".join(WORDS)
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] == 5
    assert recorder.errors == []


@pytest.mark.parametrize("reader", READERS)
async def test_an_http_error_status_is_dependency_unavailable_and_reaches_the_callbacks(reader: str) -> None:
    upstream = Upstream(paced([]), status=500)
    port = free_port()
    recorder = Recorder()
    with serve(upstream.app(), port):
        model = chat_model(port)
        model.callbacks = [recorder]
        with pytest.raises(DependencyUnavailable, match="unreachable or overloaded"):
            await collect(text_of(reader, model, port))
    assert len(recorder.errors) == 1 and recorder.ended == []


@pytest.mark.parametrize("reader", READERS)
async def test_an_error_event_mid_stream_raises_dependency_unavailable_after_the_text_before_it(reader: str) -> None:
    error = 'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    upstream = Upstream(paced([*completion_stream(WORDS)[:3], error], 0.02))
    port = free_port()
    received: list[str] = []
    with serve(upstream.app(), port), pytest.raises(DependencyUnavailable, match="while streaming"):
        async for piece in read(reader, port):
            received.append(piece.text)
    assert "".join(received) == "".join(WORDS[:2])


@pytest.mark.parametrize("reader", READERS)
async def test_a_stream_that_stalls_past_the_client_timeout_raises_model_timeout(reader: str) -> None:
    upstream = Upstream(paced([completion_stream(WORDS)[1], *completion_stream(WORDS)[2:]], 2.0))
    port = free_port()
    with serve(upstream.app(), port), pytest.raises(ModelTimeout):
        await collect(read(reader, port, chat_timeout_s=0.5))


async def test_other_chat_models_stream_through_astream_with_the_same_pieces() -> None:
    pieces = await collect(stream_model_text(scripted_model("Mulch keeps soil moist [1]."), MESSAGES))
    assert "".join(p.text for p in pieces) == "Mulch keeps soil moist [1]."
    assert all(p.deltas == 1 for p in pieces if p.text)


async def test_a_model_whose_stream_never_says_it_finished_is_model_incomplete() -> None:
    model = GenericFakeChatModel(messages=iter([AIMessage("Mulch keeps soil moist [1].")]))  # no finish reason
    with pytest.raises(ModelIncomplete):
        await collect(stream_model_text(model, MESSAGES))


async def test_the_sdk_reader_sends_the_request_chat_openai_would_and_only_for_the_configured_openai_model() -> None:
    upstream = Upstream(paced(completion_stream(WORDS)))
    port = free_port()
    with serve(upstream.app(), port):
        model = chat_model(port)
        await collect(text_of("openai_sdk", model, port))
        await collect(stream_model_text(model, MESSAGES))
    sdk_body, langchain_body = upstream.bodies
    assert sdk_body == langchain_body
    assert text_stream_for(model, model_settings(port)).__self__ is not None  # type: ignore[attr-defined]
    assert OpenAIChatStream.for_model(scripted_model("x"), model_settings(port)) is None
    assert OpenAIChatStream.for_model(model, model_settings(port, chat_model="anthropic:claude-x")) is None


@pytest.mark.parametrize("reader", READERS)
async def test_closing_the_stream_stops_the_upstream_request_and_is_not_a_model_failure(reader: str) -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def endless() -> AsyncIterator[str]:
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                await asyncio.sleep(0.02)
                yield chunk({"content": "more "})
        finally:
            loop.call_soon_threadsafe(stopped.set)

    upstream = Upstream(endless)
    port = free_port()
    with serve(upstream.app(), port):
        model = chat_model(port)
        recorder = Recorder()
        model.callbacks = [recorder]
        pieces = text_of(reader, model, port)
        assert (await anext(pieces)).text == "more "
        await pieces.aclose()  # what a client disconnect does to the answer: no error, no ModelIncomplete
        await asyncio.wait_for(stopped.wait(), 5)
    if reader == "openai_sdk":  # langchain-core's astream reports a closed stream to on_llm_error, not ours
        assert recorder.errors == []
        (result,) = recorder.ended
        assert result.generations[0][0].message.response_metadata["finish_reason"] == "cancelled"  # type: ignore[attr-defined]


@pytest.mark.parametrize("reader", READERS)
async def test_each_chat_model_call_is_logged_at_debug_with_its_deltas_time_and_usage(
    caplog: pytest.LogCaptureFixture, reader: str
) -> None:
    upstream = Upstream(paced(completion_stream(WORDS)))
    port = free_port()
    with serve(upstream.app(), port), caplog.at_level(logging.DEBUG, logger="chains.model_stream"):
        await collect(read(reader, port))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "chains.model_stream"]
    assert line.startswith("chat model m: 5 deltas in ") and "'output_tokens': 5" in line
