"""`POST /ask`: an answer with sources, as one JSON object or as server-sent events."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Header
from sse_starlette import EventSourceResponse

from chains.answer import AnswerRequest, Turn
from rag_api.deps import RequestId, State
from rag_api.schemas import AskRequest, AskResponse, ErrorResponse, SourceOut, TimingsOut
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
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
        504: {"model": ErrorResponse},
    },
)
async def ask(
    body: AskRequest, state: State, request_id: RequestId, accept: Annotated[str | None, Header()] = None
) -> AskResponse | EventSourceResponse:
    request = to_answer_request(body)
    if wants_stream(body, accept):
        return EventSourceResponse(
            ask_sse(state.answerer.stream(request), request_id),
            ping=SSE_PING_SECONDS,
            send_timeout=SSE_SEND_TIMEOUT_SECONDS,
            headers={"X-Request-ID": request_id or ""},
        )
    answer = await state.answerer.answer(request)
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
