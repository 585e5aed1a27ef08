"""The chat model's answer as a stream of text pieces, read as cheaply as the endpoint allows.

`ChatOpenAI.astream` turns every streamed token into a pydantic `ChatCompletionChunk`, dumps it back to a dict,
builds an `AIMessageChunk` and a `ChatGenerationChunk`, runs the per-token callbacks and keeps every chunk to merge
at the end: most of the server's CPU per token (docs/benchmarks.md). For a `ChatOpenAI` model this module sends
the very request `ChatOpenAI` would (its payload, its `openai` client with the same key, base URL, timeout and
retries, so the same HTTP errors) and reads the server-sent events itself: a few dict lookups a token, and all the
deltas that arrived in one network read become one piece. The LangChain callbacks still see the call start and
end, with the whole message and its usage, so tracing works; only the per-token callbacks are not fired.

Any other chat model (a fake in tests, another provider), or a request `ChatOpenAI` would not send to Chat
Completions (the Responses API, structured output), goes through `model.astream`, folded into the same pieces.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.callbacks import AsyncCallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.load import dumpd
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, LLMResult

from chains.errors import DependencyUnavailable, ModelTimeout

try:  # the HTTP library of the `openai` client: httpx2 from openai 3 on, httpx before
    import httpx2 as _http
except ImportError:  # pragma: no cover - older openai
    import httpx as _http  # type: ignore[no-redef]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelText:
    """Text the model streamed since the previous piece, how many deltas it joins, and the usage when reported."""

    text: str
    deltas: int = 1
    usage: dict[str, int] | None = None


def usage_dict(raw: Any) -> dict[str, int] | None:
    """`{input_tokens, output_tokens, total_tokens}` from an OpenAI `usage` object, or None."""
    if not isinstance(raw, dict):
        return None
    prompt, completion = int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": int(raw.get("total_tokens") or prompt + completion),
    }


class SseDataSplitter:
    """Incremental split of a `text/event-stream` body into the `data` of each event (bytes in, strings out).

    Events end at a blank line (`\\n\\n`, `\\r\\n\\r\\n` or `\\r\\r`); a `data` field spread over several lines is
    joined with newlines, as the SSE specification says. Comments, `event:` and `id:` lines are skipped.
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[str]:
        buffer = self._pending + data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *events, self._pending = buffer.split(b"\n\n")
        return [payload for event in events if (payload := _event_data(event)) is not None]


def _event_data(event: bytes) -> str | None:
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(lines).decode()


@dataclass(slots=True)
class _Fold:
    """What the data events of one network read add up to."""

    text: str = ""
    deltas: int = 0
    usage: dict[str, int] | None = None
    done: bool = False


def fold_events(payloads: Iterable[str]) -> _Fold:
    """Join the content deltas of Chat Completions chunks; note usage and `[DONE]`; raise on an error event."""
    fold = _Fold()
    parts: list[str] = []
    for payload in payloads:
        if payload == "[DONE]":
            fold.done = True
            break
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError:
            logger.warning("the chat model endpoint sent a data line that is not JSON: %.200r", payload)
            raise DependencyUnavailable("chat_model", "the chat model endpoint sent a malformed stream") from None
        if not isinstance(chunk, dict):
            continue
        if chunk.get("error"):
            logger.warning("the chat model endpoint sent an error in its stream: %s", chunk["error"])
            raise DependencyUnavailable("chat_model", "the chat model endpoint failed while streaming its answer")
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            content = (choice.get("delta") or {}).get("content")
            if content:
                parts.append(content)
                fold.deltas += 1
        if chunk.get("usage"):
            fold.usage = usage_dict(chunk["usage"])
    fold.text = "".join(parts)
    return fold


def chat_completions_payload(model: BaseChatModel, messages: Sequence[BaseMessage]) -> dict[str, Any] | None:
    """The streaming Chat Completions request `model` would send for `messages`, or None when it is not a
    `ChatOpenAI` or would not use Chat Completions for it (then `model.astream` must be used)."""
    from langchain_openai import ChatOpenAI

    build = getattr(model, "_get_request_payload", None)  # private in langchain-openai: checked, not assumed
    if not isinstance(model, ChatOpenAI) or model.root_async_client is None or build is None:
        return None
    options: dict[str, Any] = {"stream": True}
    if model.stream_usage:
        options["stream_options"] = {"include_usage": True}
    payload: dict[str, Any] = build(list(messages), **options)
    if "messages" not in payload or "response_format" in payload or payload.get("tools"):
        return None
    return payload


async def stream_model_text(model: BaseChatModel, messages: Sequence[BaseMessage]) -> AsyncIterator[ModelText]:
    """The model's answer to `messages`, one piece per network read (or per chunk, through `model.astream`)."""
    payload = chat_completions_payload(model, messages)
    if payload is None:
        async for piece in _through_astream(model, messages):
            yield piece
        return
    async for piece in _read_chat_completions(model, messages, payload):
        yield piece


async def _through_astream(model: BaseChatModel, messages: Sequence[BaseMessage]) -> AsyncIterator[ModelText]:
    async for chunk in model.astream(list(messages)):
        usage = None
        if isinstance(chunk, AIMessageChunk) and chunk.usage_metadata:
            meta = chunk.usage_metadata
            usage = {
                "input_tokens": int(meta.get("input_tokens", 0)),
                "output_tokens": int(meta.get("output_tokens", 0)),
                "total_tokens": int(meta.get("total_tokens", 0)),
            }
        text = chunk.text if isinstance(chunk.text, str) else ""
        if text or usage:
            yield ModelText(text, 1 if text else 0, usage)


async def _read_chat_completions(
    model: Any, messages: Sequence[BaseMessage], payload: dict[str, Any]
) -> AsyncIterator[ModelText]:
    callbacks = AsyncCallbackManager.configure(
        None, model.callbacks, model.verbose, None, model.tags, None, model.metadata
    )
    invocation = {key: value for key, value in payload.items() if key != "messages"}
    serialized = getattr(model, "_serialized", None) or dumpd(model)  # langchain-core caches it on the model
    (run,) = await callbacks.on_chat_model_start(
        serialized, [list(messages)], invocation_params=invocation, batch_size=1
    )
    parts: list[str] = []
    usage: dict[str, int] | None = None
    deltas, started, first_text_at = 0, time.perf_counter(), None
    try:
        streaming = model.root_async_client.chat.completions.with_streaming_response.create(**payload)
        async with streaming as response:
            splitter, done = SseDataSplitter(), False
            async for data in _body(response):
                if done:  # read on to the end: an HTTP/1.1 connection is reused only when its body was drained
                    continue
                fold = fold_events(splitter.feed(data))
                done, usage = fold.done, fold.usage or usage
                if fold.text and first_text_at is None:
                    first_text_at = time.perf_counter()
                deltas += fold.deltas
                if fold.text or fold.usage:
                    parts.append(fold.text)
                    yield ModelText(fold.text, fold.deltas, fold.usage)
    except BaseException as exc:
        await run.on_llm_error(exc)
        raise
    logger.debug(
        "chat model %s: %d deltas in %.1f ms (first text after %s ms), usage %s",
        payload.get("model"),
        deltas,
        (time.perf_counter() - started) * 1000,
        "-" if first_text_at is None else f"{(first_text_at - started) * 1000:.1f}",
        usage,
    )
    message = AIMessage("".join(parts), usage_metadata=cast("UsageMetadata | None", usage))
    await run.on_llm_end(LLMResult(generations=[[ChatGeneration(message=message)]]))


async def _body(response: Any) -> AsyncIterator[bytes]:
    """The response body as it arrives. The `openai` client raises its own errors for the request, but a failure
    while the body streams comes from its HTTP library: named here as this project's errors."""
    try:
        async for data in response.iter_bytes():
            yield data
    except _http.TimeoutException as exc:
        raise ModelTimeout("the chat model stopped sending its answer and was given up on") from exc
    except _http.TransportError as exc:
        message = "the connection to the chat model endpoint broke while it streamed its answer"
        raise DependencyUnavailable("chat_model", message) from exc
