"""`POST /ask`: an answer with sources, as one JSON object or as server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse

from chains.answer import AnswerEvent, AnswerRequest, DoneEvent, Timings, Turn
from chains.guard import call_within_deadline, within_deadline
from rag_api.deps import RequestId, State
from rag_api.errors import ERROR_RESPONSES
from rag_api.limits import check_ask_limits
from rag_api.middleware import note_access
from rag_api.schemas import AskRequest, AskResponse, SourceOut, TimingsOut
from rag_api.streaming import ask_sse

router = APIRouter(tags=["answers"])

SSE_PING_SECONDS = 15
SSE_SEND_TIMEOUT_SECONDS = 30

STREAM_DESCRIPTION = """
Answers the question from the book's passages, with numbered sources that the answer cites as [1], [2].

**JSON** (default): one `AskResponse`.

**Server-sent events**: send `"stream": true` or `Accept: text/event-stream`. Events, in this order, each with
an increasing `id` and JSON `data`:

| event | data | when |
|---|---|---|
| `status` | `{"stage": "retrieving" \\| "generating"}` | work starts; the model starts (typing indicator) |
| `sources` | `{"sources": [Source, ...]}` | once, before the first token |
| `token` | `{"text": "..."}` | each text delta of the answer |
| `done` | `{"answer_id", "mode", "citations", "usage", "timings"}` | last event of a successful answer |
| `error` | `{"code", "message"}` | last event when something fails after the stream started |

Every stream ends with exactly one `done` or `error`. Comment lines (`: ping`) are sent every 15 s to keep
proxies from closing idle connections; `X-Accel-Buffering: no` turns off nginx buffering.
"""


# One event of the stream (OpenAPI 3.1 reads a text/event-stream `schema` as the schema of each event).
SSE_EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["status", "sources", "token", "done", "error"]},
        "data": {"type": "string", "description": "A JSON object: see the table above."},
        "id": {"type": "string", "description": "1, 2, 3... in order"},
    },
}


def to_answer_request(body: AskRequest) -> AnswerRequest:
    return AnswerRequest(
        question=body.question,
        history=tuple(Turn(t.role, t.content) for t in body.history),
        selected_text=body.selected_text,
        selected_from=body.selected_from,
        k=body.k,
        sources=body.sources,
        chapter=body.chapter,
    )


def note_answer(http: Request, timings: Timings | None, usage: dict[str, int] | None) -> None:
    """Retrieval and model time and token counts for the access log line."""
    if timings is not None:
        note_access(
            http,
            retrieval_ms=round(timings.retrieval_ms, 1),
            model_ms=round(timings.total_ms - timings.retrieval_ms, 1),
        )
    if usage:
        note_access(http, input_tokens=usage.get("input_tokens"), output_tokens=usage.get("output_tokens"))


async def noting_done(events: AsyncIterator[AnswerEvent], http: Request) -> AsyncIterator[AnswerEvent]:
    async for event in events:
        if isinstance(event, DoneEvent):
            note_answer(http, event.timings, event.usage)
        yield event


def wants_stream(body: AskRequest, accept: str | None) -> bool:
    if body.stream is not None:
        return body.stream
    return accept is not None and "text/event-stream" in accept


@router.post(
    "/ask",
    response_model=AskResponse,
    summary="Ask the book a question",
    description=STREAM_DESCRIPTION,
    responses={
        200: {"content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}},
        **ERROR_RESPONSES,
    },
)
async def ask(
    body: AskRequest,
    state: State,
    request_id: RequestId,
    http: Request,
    accept: Annotated[str | None, Header()] = None,
) -> AskResponse | EventSourceResponse:
    check_ask_limits(body, state.settings)
    if state.settings.log_questions:
        note_access(http, question=body.question)
    request = to_answer_request(body)
    deadline = state.settings.request_timeout_s
    if wants_stream(body, accept):
        events = within_deadline(noting_done(state.answerer.stream(request), http), deadline)
        return EventSourceResponse(
            ask_sse(events, request_id),
            ping=SSE_PING_SECONDS,
            send_timeout=SSE_SEND_TIMEOUT_SECONDS,
            headers={"X-Request-ID": request_id or ""},
        )
    answer = await call_within_deadline(state.answerer.answer(request), deadline)
    note_answer(http, answer.timings, answer.usage)
    assert answer.timings is not None
    return AskResponse(
        answer_id=answer.answer_id,
        answer=answer.text,
        mode=answer.mode,
        sources=[SourceOut(**asdict(s)) for s in answer.sources],
        citations=answer.citations,
        usage=answer.usage,
        timings=TimingsOut(**asdict(answer.timings)),
    )
