"""From the answer's events to streamed responses: the shared plumbing and the `/ask` wire format.

Every streaming encoder (`/ask` events here, OpenAI chunks in `rag_api.openai_compat`, other protocols beside it)
reads `guard(rag_api.answering.stream_answer(...))`: the chain's events with token deltas coalesced
(`coalesce_tokens`), a failure turned into one final `ErrorEvent` (`guard`). Once the first byte is sent an error
can no longer be an HTTP status, so it becomes the stream's last event. Cancellation (the client went away) is
logged and re-raised, never turned into an event: nobody is listening.

On purpose: events are encoded to bytes here rather than as `ServerSentEvent` objects, and a token event is
written from a template with only its text JSON-encoded. A token is the one event that repeats hundreds of times
a stream; this keeps its cost to one small `json.dumps` and one string format (see docs/streaming.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from chains.answer import (
    AnswerEvent,
    DoneEvent,
    ErrorEvent,
    HighlightsEvent,
    Source,
    SourcesEvent,
    StatusEvent,
    TokenEvent,
)
from rag_api.errors import classify

logger = logging.getLogger(__name__)

# A comment line every 15 s keeps proxies and load balancers from closing a quiet stream (e.g. while the model
# thinks); a client that stops reading for 30 s is given up on, which cancels its generation.
SSE_PING_SECONDS = 15
SSE_SEND_TIMEOUT_SECONDS = 30
# No proxy may buffer, store or re-encode (compress) the stream: each would hold tokens back.
SSE_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}


@dataclass(frozen=True, slots=True)
class _Failed:
    error: Exception


async def close_events(events: AsyncIterator[Any]) -> None:
    """Close an async iterator that can be closed (an async generator), which runs its cleanup."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


async def coalesce_tokens(events: AsyncIterator[AnswerEvent], window_s: float = 0.0) -> AsyncIterator[AnswerEvent]:
    """Pass `events` through, sending token deltas at most once per `window_s`, merged into one `TokenEvent`.

    A task reads `events` ahead, so the model is never slowed down by the client. The first token goes out at
    once, and so does any token that comes `window_s` or more after the previous token event: a slow model's tokens
    are never held. Tokens that come faster wait until `window_s` after the previous token event (25 ms by default,
    less than a screen frame or two) and go out together: fewer events, so less CPU and fewer packets per token.
    With `window_s=0` only tokens that piled up while the previous event was being sent are merged. Closing this
    iterator (the client went away) cancels the reader and so the model call.
    """
    loop = asyncio.get_running_loop()
    pending: deque[AnswerEvent | _Failed | None] = deque()
    arrived = asyncio.Event()

    async def read_ahead() -> None:
        try:
            async for event in events:
                pending.append(event)
                arrived.set()
                if not isinstance(event, TokenEvent):
                    # Let the consumer send it now: otherwise `sources` waits while this task, still running,
                    # builds and sends the model request (several ms before its first await on the network).
                    await asyncio.sleep(0)
            pending.append(None)
        except Exception as exc:  # handed to the consumer, which raises it in its own task
            pending.append(_Failed(exc))
        finally:
            arrived.set()
            await close_events(events)

    reader = asyncio.create_task(read_ahead(), name="answer-read-ahead")
    last_token_at: float | None = None
    try:
        while True:
            while not pending:
                arrived.clear()
                await arrived.wait()
            item = pending.popleft()
            if item is None:
                return
            if isinstance(item, _Failed):
                raise item.error
            if isinstance(item, TokenEvent):
                if last_token_at is not None:
                    wait = last_token_at + window_s - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                if pending and isinstance(pending[0], TokenEvent):
                    parts, deltas = [item.text], item.deltas
                    while pending and isinstance(pending[0], TokenEvent):
                        token = pending.popleft()
                        assert isinstance(token, TokenEvent)
                        parts.append(token.text)
                        deltas += token.deltas
                    item = TokenEvent("".join(parts), deltas)
                last_token_at = loop.time()
            yield item
    finally:
        reader.cancel()
        await asyncio.wait({reader})


async def guard(events: AsyncIterator[AnswerEvent], request_id: str | None) -> AsyncIterator[AnswerEvent]:
    """Pass events through; turn a failure into a final `ErrorEvent`."""
    try:
        async for event in events:
            yield event
    except asyncio.CancelledError:
        logger.info("request %s: client disconnected, generation cancelled", request_id)
        raise
    except Exception as exc:
        info = classify(exc)
        if info.code == "internal_error":
            logger.exception("request %s: stream failed", request_id, exc_info=exc)
        else:
            logger.warning("request %s: stream failed: %s: %s", request_id, info.code, info.message)
        yield ErrorEvent(info.code, info.message)
    finally:
        await close_events(events)


def sse_response(
    chunks: AsyncIterator[bytes],
    request_id: str | None,
    on_close: Callable[[], Awaitable[None]] | None = None,
) -> EventSourceResponse:
    """A server-sent-events response with heartbeats, a send timeout and no proxy buffering; `on_close` runs
    once the response is over (e.g. `RetrievedAnswer.aclose`)."""
    return EventSourceResponse(
        chunks,
        ping=SSE_PING_SECONDS,
        send_timeout=SSE_SEND_TIMEOUT_SECONDS,
        sep="\n",
        headers={**SSE_HEADERS, "X-Request-ID": request_id or ""},
        background=BackgroundTask(on_close) if on_close is not None else None,
    )


def dumps(data: Any) -> str:
    """Compact JSON, UTF-8 kept as is (never contains a newline, so it is one `data:` line)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


# The answer's token usage is LangChain's (`input_tokens`, `output_tokens`, `total_tokens`, `chains.model_stream`);
# a wire format that names them otherwise renames them with `usage_named`.
USAGE_KEYS = ("input_tokens", "output_tokens", "total_tokens")


def usage_named(usage: dict[str, int] | None, names: tuple[str, str, str]) -> dict[str, int] | None:
    """The usage under a wire format's names (in `USAGE_KEYS` order); None when the model reported none."""
    if not usage:
        return None
    return {name: usage.get(key, 0) for key, name in zip(USAGE_KEYS, names, strict=True)}


def source_json(source: Source) -> dict[str, Any]:
    return asdict(source)


def highlights_json(event: HighlightsEvent) -> list[dict[str, Any]]:
    """`[{"number": 1, "highlights": [[start, end], ...]}, ...]`: each source's highlights, by its number."""
    return [{"number": number, "highlights": spans} for number, spans in event.highlights.items()]


def event_payload(event: AnswerEvent) -> tuple[str, dict[str, Any]]:
    """The SSE event name and JSON data for one answer event."""
    if isinstance(event, TokenEvent):
        return "token", {"text": event.text}
    if isinstance(event, StatusEvent):
        return "status", {"stage": event.stage}
    if isinstance(event, SourcesEvent):
        return "sources", {"sources": [source_json(s) for s in event.sources]}
    if isinstance(event, HighlightsEvent):
        return "highlights", {"highlights": highlights_json(event)}
    if isinstance(event, DoneEvent):
        return "done", {
            "answer_id": event.answer_id,
            "mode": event.mode,
            "citations": event.citations,
            "invalid_citations": event.invalid_citations,
            "usage": event.usage,
            "timings": asdict(event.timings),
            "history_turns_used": event.history_turns_used,
            "terms_not_in_book": event.terms_not_in_book,
        }
    return "error", {"code": event.code, "message": event.message}


def encode_sse(name: str, event_id: int, data: str) -> bytes:
    return f"event: {name}\nid: {event_id}\ndata: {data}\n\n".encode()


async def ask_sse(events: AsyncIterator[AnswerEvent], request_id: str | None) -> AsyncIterator[bytes]:
    """`/ask`'s stream: named events with sequential ids and JSON data (docs/streaming.md)."""
    sequence = 0
    async for event in guard(events, request_id):
        sequence += 1
        if isinstance(event, TokenEvent):  # the hot path: no dict, one small dumps
            yield f'event: token\nid: {sequence}\ndata: {{"text":{dumps(event.text)}}}\n\n'.encode()
            continue
        name, data = event_payload(event)
        yield encode_sse(name, sequence, dumps(data))
