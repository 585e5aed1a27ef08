"""From the answer's events to the `/ask` wire format (server-sent events), with one error event on failure.

`guard` is shared by every streaming encoder: once the first byte is sent an error can no longer be an HTTP
status, so a failure becomes the stream's last event. Cancellation (the client went away) is logged and
re-raised, never turned into an event: nobody is listening.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from sse_starlette import ServerSentEvent

from chains.answer import (
    AnswerEvent,
    DoneEvent,
    ErrorEvent,
    Source,
    SourcesEvent,
    StatusEvent,
    TokenEvent,
)
from rag_api.errors import classify

logger = logging.getLogger(__name__)


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
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def source_json(source: Source) -> dict[str, Any]:
    return asdict(source)


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def event_payload(event: AnswerEvent) -> tuple[str, dict[str, Any]]:
    """The SSE event name and JSON data for one answer event."""
    if isinstance(event, TokenEvent):
        return "token", {"text": event.text}
    if isinstance(event, StatusEvent):
        return "status", {"stage": event.stage}
    if isinstance(event, SourcesEvent):
        return "sources", {"sources": [source_json(s) for s in event.sources]}
    if isinstance(event, DoneEvent):
        return "done", {
            "answer_id": event.answer_id,
            "mode": event.mode,
            "citations": event.citations,
            "usage": event.usage,
            "timings": asdict(event.timings),
        }
    return "error", {"code": event.code, "message": event.message}


async def ask_sse(events: AsyncIterator[AnswerEvent], request_id: str | None) -> AsyncIterator[ServerSentEvent]:
    """`/ask`'s stream: named events with sequential ids and JSON data."""
    sequence = 0
    async for event in guard(events, request_id):
        sequence += 1
        name, data = event_payload(event)
        yield ServerSentEvent(data=_dumps(data), event=name, id=str(sequence))
