"""`POST /ask`: an answer with sources, as one JSON object or as server-sent events."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse

from chains.answer import AnswerRequest, Turn
from chains.settings import Settings
from rag_api.answer_request import answer_request
from rag_api.answering import resolve_filters, stream_answer, whole_answer
from rag_api.deps import RequestId, State
from rag_api.errors import ERROR_RESPONSES
from rag_api.middleware import note_access
from rag_api.schemas import AskRequest, AskResponse, SourceOut, TimingsOut
from rag_api.streaming import ask_sse, sse_response

router = APIRouter(tags=["answers"])

STREAM_DESCRIPTION = """
Answers the question from the book's passages, with numbered sources that the answer cites as [1], [2].

**JSON** (default): one `AskResponse`, the same content as the stream folded (text, sources, citations).

**Server-sent events**: send `"stream": true`, or `Accept: text/event-stream` with no `stream` field. Events come
in this order, each with an `id` counting 1, 2, 3... and one line of JSON `data`:

| event | data | when |
|---|---|---|
| `status` | `{"stage": "retrieving"}` | first: the search starts (show a typing indicator) |
| `sources` | `{"sources": [Source, ...]}` | once, before the first token (may be `[]`: not in the book) |
| `status` | `{"stage": "generating"}` | the chat model starts (absent when no model is called) |
| `token` | `{"text": "..."}` | text deltas of the answer, in order; append them (one may carry several model tokens) |
| `highlights` | `{"highlights": [{"number", "highlights"}, ...]}` | once, among the tokens: the sources' highlights |
| `done` | `{"answer_id", "mode", "citations", "invalid_citations", "usage", "timings", "history_turns_used"}` | last |
| `error` | `{"code", "message"}` | last event when something fails after the stream started |

`Source` is `{number, source, title, heading_path, url, page, chunk_index, page_path, anchor, score, text,
highlights}` (as in `AskResponse`); a generated answer's `highlights` (`[[start, end], ...]` in `text`) come late, in
the `highlights` event, so that scoring them never delays the first token; `url` is its section on the book's
site (BOOK_BASE_URL + page_path + #anchor), null without a base.
`usage` is `{input_tokens, output_tokens, total_tokens}` when the model reports it, else `null`; `timings` is
`{retrieval_ms, first_token_ms, total_ms}` (`first_token_ms` is `null` when no model was called).

Every stream ends with exactly one `done` or `error`, then the response ends. Errors before the stream starts
(401, 413, 422, 429) are ordinary JSON error responses. The stream starts before the search, on purpose (the
`retrieving` status is a typing indicator at once), so a dependency that fails during retrieval (Qdrant down:
`qdrant_unavailable`; the embedding model: `embeddings_unavailable`) arrives as the `error` event, not as a 503
(the JSON form answers 503 with Retry-After; `/v1/chat/completions` and `/api/chat` start their streams after
retrieval and answer 503). Comment lines (`: ping ...`) come every 15 s so that proxies
keep idle connections open; `Cache-Control: no-cache, no-transform` and `X-Accel-Buffering: no` stop proxy
buffering. Closing the connection cancels the answer: the chat model stops being called.

```
event: status
id: 1
data: {"stage":"retrieving"}

event: sources
id: 2
data: {"sources":[{"number":1,"source":"watering.md","heading_path":["Watering","Mulch"],...}]}

event: status
id: 3
data: {"stage":"generating"}

event: token
id: 4
data: {"text":"Eight centimetres"}

event: done
id: 9
data: {"answer_id":"4f1c...","mode":"generated","citations":[1],"usage":null,"timings":{...}}
```
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


def to_answer_request(body: AskRequest, settings: Settings, accept: str | None = None) -> AnswerRequest:
    """The body as the one `AnswerRequest` (`rag_api.answer_request`): more than MAX_HISTORY_TURNS turns is a 422
    here, since this client sends its own history."""
    return answer_request(
        settings,
        body.question,
        (Turn(t.role, t.content) for t in body.history),
        refuse_long_history=True,
        selected_text=body.selected_text,
        selected_from=body.selected_from,
        page_url=body.page_url,
        k=body.k,
        sources=body.sources,
        chapter=body.chapter,
        stream=wants_stream(body, accept),
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
    request = to_answer_request(body, state.settings, accept)
    if state.settings.log_questions:
        note_access(http, question=request.question)
    if request.stream:
        request = await resolve_filters(state, request)  # 422 before the stream, not a false refusal
        return sse_response(ask_sse(stream_answer(state, request, http), request_id), request_id)
    answer = await whole_answer(state, request, http)
    assert answer.timings is not None
    return AskResponse(
        answer_id=answer.answer_id,
        answer=answer.text,
        mode=answer.mode,
        sources=[SourceOut(**asdict(s)) for s in answer.sources],
        citations=answer.citations,
        invalid_citations=answer.invalid_citations,
        usage=answer.usage,
        timings=TimingsOut(**asdict(answer.timings)),
        history_turns_used=answer.history_turns_used,
        terms_not_in_book=answer.terms_not_in_book,
    )
