"""`POST /api/chat`: the answer as the AI SDK's UI message stream, for frontends built on `useChat`.

The same answer as `/ask` (one answer chain, the same deadline, limits, keys and rate limit), in another
wire format (`rag_api.aisdk`). The AI SDK sends the whole conversation each time, so a long one is never refused:
the answer reads its last HISTORY_TURNS turns and says how many (`historyTurnsUsed`), as every face does.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from chains.answer import AnswerRequest, Turn
from chains.settings import Settings
from rag_api.aisdk import SEP, UI_MESSAGE_STREAM_HEADERS, new_message_id, ui_message_sse
from rag_api.answer_request import Fields, answer_request, invalid
from rag_api.answering import stream_retrieved_answer
from rag_api.deps import RequestId, State
from rag_api.errors import ERROR_RESPONSES
from rag_api.middleware import note_access
from rag_api.schemas import ChatQuestionOptions, ChatRequest, UIMessageIn
from rag_api.streaming import SSE_PING_SECONDS, SSE_SEND_TIMEOUT_SECONDS

router = APIRouter(tags=["answers"])

CHAT_DESCRIPTION = """
For frontends built on the AI SDK (`useChat` with `DefaultChatTransport({ api: "<base>/api/chat" })`): takes
the chat request it sends and answers with its **UI message stream** (protocol v1, header
`x-vercel-ai-ui-message-stream: v1`): server-sent events whose data is one JSON chunk each, in this order:

| chunk (`type` and fields) | when |
|---|---|
| `start`: `messageId` | first |
| `data-status`: `data: {"stage": "retrieving" \\| "generating"}`, `transient: true` | typing indicator |
| `source-document`: `sourceId`, `mediaType`, `title`, `filename`, `providerMetadata.bookrag` | each passage |
| `text-start`, `text-delta` (`delta`)..., `text-end` | the answer, after the sources |
| `finish`: `messageMetadata` (`answerId`, `mode`, `citations`, `usage`, `timings`) | a whole answer |
| `error`: `errorText` | instead of `finish`, on a failure after the stream started |

The stream starts once the passages are found: a failure before that (Qdrant or the embedding model down, the
deadline) is an HTTP error with a JSON body, as for `/ask` without streaming (503 with Retry-After, 504), which
`DefaultChatTransport` raises as the chat's error. The `retrieving` status then comes just before the sources.

`providerMetadata.bookrag.number` is the number the answer cites as [n]; its `text`, `score`, `page`, `url` (the
section on the book's site), `pagePath` and `anchor` are there too. The stream ends with `data: [DONE]`.

The last user message is the question; its `metadata` may carry `selectedText`, `selectedFrom`, `chapter`,
`sources` and `k` (as `/ask`'s fields). Earlier messages are the conversation (the answer reads the last HISTORY_TURNS).
"""

# One server-sent event of the stream (OpenAPI 3.1 reads a text/event-stream `schema` as the schema of each event).
CHUNK_EVENT_SCHEMA = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string", "description": "A UI message chunk as JSON, or [DONE] last."}},
}


def message_text(message: UIMessageIn) -> str:
    return "\n".join(part.text for part in message.parts if part.type == "text" and part.text).strip()


def to_answer_request(body: ChatRequest, settings: Settings) -> AnswerRequest:
    """The question (last user message), the conversation before it, and the reader's selection and filters (its
    `metadata`), as the one `AnswerRequest` (`rag_api.answer_request`)."""
    index = next((i for i in range(len(body.messages) - 1, -1, -1) if body.messages[i].role == "user"), None)
    if index is None:
        raise invalid(("messages",), "must contain a user message (the question)")
    options = body.messages[index].metadata or ChatQuestionOptions()
    metadata = ("messages", index, "metadata")
    return answer_request(
        settings,
        message_text(body.messages[index]),
        (Turn(m.role, message_text(m)) for m in body.messages[:index] if m.role != "system"),
        fields=Fields(
            question=("messages", index, "parts"),
            selected_text=(*metadata, "selectedText"),
            k=(*metadata, "k"),
        ),
        selected_text=options.selected_text,
        selected_from=options.selected_from,
        k=options.k,
        sources=options.sources,
        chapter=options.chapter,
        stream=True,
    )


@router.post(
    "/api/chat",
    response_class=EventSourceResponse,
    summary="Ask the book, as the AI SDK's useChat does",
    description=CHAT_DESCRIPTION,
    responses={
        200: {"content": {"text/event-stream": {"schema": CHUNK_EVENT_SCHEMA}}, "description": "UI message stream"},
        **ERROR_RESPONSES,
    },
)
async def chat(body: ChatRequest, state: State, request_id: RequestId, http: Request) -> EventSourceResponse:
    request = to_answer_request(body, state.settings)
    if state.settings.log_questions:
        note_access(http, question=request.question)
    # Retrieval before the response: a failure there is an HTTP status, which DefaultChatTransport raises.
    answer = await stream_retrieved_answer(state, request, http)
    return EventSourceResponse(
        ui_message_sse(answer.events(), request_id, new_message_id()),
        ping=SSE_PING_SECONDS,
        send_timeout=SSE_SEND_TIMEOUT_SECONDS,
        sep=SEP,
        headers={**UI_MESSAGE_STREAM_HEADERS, "X-Request-ID": request_id or ""},
        background=BackgroundTask(answer.aclose),
    )
