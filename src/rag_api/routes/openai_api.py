"""`POST /v1/chat/completions` and `GET /v1/models`: the book behind OpenAI's API, for OpenAI clients and chat UIs.

The same answer chain, auth, limits and rate limit as `/ask`; only the wire format differs (`rag_api.openai_compat`).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from rag_api.answering import stream_retrieved_answer, whole_answer
from rag_api.deps import RequestId, State
from rag_api.errors import ERROR_RESPONSES
from rag_api.middleware import note_access
from rag_api.openai_compat import (
    CHUNK_SCHEMA,
    ChatCompletion,
    ChatCompletionRequest,
    ModelList,
    chat_chunks,
    chat_completion,
    completion_id,
    included_usage,
    model_list,
    to_answer_request,
)
from rag_api.streaming import sse_response

router = APIRouter(prefix="/v1", tags=["openai"])

_STARTED = int(time.time())

CHAT_DESCRIPTION = """
OpenAI's chat completions API, answered from the book. The last message (a `user` message) is the question;
earlier `user` and `assistant` messages are the conversation. `system` messages, tools and sampling options are
ignored: the book's own prompt answers only from its passages. Any `model` name is accepted.

Extra fields: the response (and the last streamed chunk) has `citations`, `answer_id`, `mode` and
`history_turns_used`; `sources` (the numbered passages, as in `/ask`) is on the response and on the first streamed
chunk, before any text; when streamed, their `highlights` come on the last chunk (`[{"number", "highlights"}]`).

With `"stream": true` the answer comes as `data:` lines of `chat.completion.chunk`s ending with `data: [DONE]`
(a usage chunk before it with `stream_options.include_usage`). The stream starts once the passages are found, so
a failure until then is an HTTP error in OpenAI's error shape, as without streaming: 503 `qdrant_unavailable` or
`embeddings_unavailable` (with Retry-After) when a dependency is down, 504 `request_timeout`. A failure after the
stream started (the chat model failing or stalling) is one `data: {"error": {...}}` line.
"""


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    summary="Chat with the book (OpenAI-compatible)",
    description=CHAT_DESCRIPTION,
    responses={200: {"content": {"text/event-stream": {"schema": CHUNK_SCHEMA}}}, **ERROR_RESPONSES},
)
async def chat_completions(
    body: ChatCompletionRequest, state: State, request_id: RequestId, http: Request
) -> ChatCompletion | EventSourceResponse:
    request = to_answer_request(body, state.settings)
    if state.settings.log_questions:
        note_access(http, question=request.question)
    completion = completion_id()
    if request.stream:
        # Retrieval before the response: a failure there is an HTTP status that OpenAI clients raise.
        answer = await stream_retrieved_answer(state, request, http)
        chunks = chat_chunks(answer.events(), request_id, completion, body.model, included_usage(body))
        return sse_response(chunks, request_id, on_close=answer.aclose)
    return chat_completion(await whole_answer(state, request, http), completion, body.model)


@router.get(
    "/models",
    response_model=ModelList,
    summary="The one model: the book (OpenAI-compatible)",
    responses={k: v for k, v in ERROR_RESPONSES.items() if k in (401, 429)},
)
async def models() -> ModelList:
    return model_list(_STARTED)
