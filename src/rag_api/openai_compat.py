"""The OpenAI chat-completions wire format over the same answer: request and response models, the question and
history from `messages`, and the encoder from answer events to `chat.completion.chunk`s.

On purpose: the book's prompt is fixed, so `system`/`developer`/`tool` messages and sampling options (temperature,
max_tokens, n, tools...) are accepted and ignored, and any `model` name is answered by the book. The extra fields
`sources`, `citations`, `answer_id` and `mode` carry what an OpenAI response has no room for (docs/streaming.md).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chains.answer import (
    Answer,
    AnswerEvent,
    AnswerRequest,
    DoneEvent,
    ErrorEvent,
    HighlightsEvent,
    SourcesEvent,
    TokenEvent,
    Turn,
)
from chains.settings import Settings
from rag_api.answer_request import Fields, answer_request, invalid
from rag_api.errors import error_body
from rag_api.schemas import MAX_TURN_CHARS, SourceOut
from rag_api.streaming import dumps, guard, highlights_json, source_json, usage_named

MODEL_ID = "bookrag"
MAX_MESSAGES = 200


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = Field(max_length=64, description="Only `text` parts are read; others (images...) are ignored.")
    text: str | None = Field(None, max_length=MAX_TURN_CHARS)


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: (
        Annotated[str, Field(max_length=MAX_TURN_CHARS)] | Annotated[list[TextPart], Field(max_length=100)] | None
    ) = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, strict=True)


class ChatCompletionRequest(BaseModel):
    """OpenAI's request body. The last message is the question (a `user` message); earlier `user` and `assistant`
    messages are the conversation. Other fields of OpenAI's API are accepted and ignored."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"model": MODEL_ID, "messages": [{"role": "user", "content": "How deep should mulch be?"}]},
            ]
        },
    )

    model: str = Field(MODEL_ID, max_length=256, description="Any name: the book answers.")
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = Field(False, strict=True)
    stream_options: StreamOptions | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop"] = "stop"


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """OpenAI's `chat.completion`, plus this service's `sources`, `citations`, `answer_id` and `mode`."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage | None = Field(description="Token counts when the chat model reports them, else null.")
    sources: list[SourceOut] = Field(description="The passages the answer was written from, cited as [number].")
    citations: list[int] = Field(description="Numbers of the sources the answer cites.")
    invalid_citations: list[int] = Field(default_factory=list, description="[n] markers that name no source.")
    answer_id: str
    mode: Literal["generated", "extractive", "not_in_book"]
    history_turns_used: int = Field(0, description="How many of the latest turns the answer read (HISTORY_TURNS).")
    terms_not_in_book: list[str] = Field(
        default_factory=list, description="Words of the question the book never uses (as on /ask)."
    )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# One streamed chunk, for the OpenAPI document (a `data:` line; the stream ends with `data: [DONE]`).
CHUNK_SCHEMA = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": 'A `chat.completion.chunk` as JSON, an `{"error": ...}` object, or `[DONE]`.',
        }
    },
}


def _text(content: str | list[TextPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text or "" for part in content if part.type == "text")


def to_answer_request(body: ChatCompletionRequest, settings: Settings) -> AnswerRequest:
    """The last message as the question, earlier user/assistant messages as the conversation, as the one
    `AnswerRequest` (`rag_api.answer_request`)."""
    last = body.messages[-1]
    if last.role != "user":
        raise invalid(("messages",), "the last message must be a user message with text: it is the question")
    turns = [Turn(m.role, _text(m.content)) for m in body.messages[:-1] if m.role == "user" or m.role == "assistant"]
    return answer_request(
        settings, _text(last.content), turns, fields=Fields(question=("messages",)), stream=body.stream
    )


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage_out(usage: dict[str, int] | None) -> dict[str, int] | None:
    return usage_named(usage, ("prompt_tokens", "completion_tokens", "total_tokens"))


def chat_completion(answer: Answer, completion: str, model: str) -> ChatCompletion:
    usage = usage_out(answer.usage)
    return ChatCompletion(
        id=completion,
        created=int(time.time()),
        model=model,
        choices=[ChatChoice(message=ChatMessageOut(content=answer.text))],
        usage=ChatUsage(**usage) if usage else None,
        sources=[SourceOut(**asdict(s)) for s in answer.sources],
        citations=answer.citations,
        invalid_citations=answer.invalid_citations,
        answer_id=answer.answer_id,
        mode=answer.mode,
        history_turns_used=answer.history_turns_used,
        terms_not_in_book=answer.terms_not_in_book,
    )


def model_list(created: int) -> ModelList:
    return ModelList(data=[ModelCard(id=MODEL_ID, created=created, owned_by="bookrag")])


def _data(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


async def chat_chunks(
    events: AsyncIterator[AnswerEvent],
    request_id: str | None,
    completion: str,
    model: str,
    include_usage: bool = False,
) -> AsyncIterator[bytes]:
    """The `data:` lines of a streamed chat completion.

    The first chunk carries the role and `sources` (as soon as retrieval is done, before any text); each token
    event becomes one `delta.content` chunk; the last chunk has `finish_reason: "stop"` with `citations`,
    `answer_id` and `mode`; then a usage chunk when `include_usage` was asked for, and `[DONE]`. A failure
    after the stream started is one `{"error": {...}}` line (OpenAI's shape, which OpenAI clients raise), with no
    `[DONE]` after it.
    """
    head = {"id": completion, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    # Everything but the text is the same for every token chunk: build it once.
    token_prefix = dumps(head)[:-1] + ',"choices":[{"index":0,"delta":{"content":'
    token_suffix = '},"finish_reason":null}]}'

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _data(dumps({**head, "choices": [choice], **extra}))

    sent_role = False
    highlights: list[dict[str, Any]] | None = None
    async for event in guard(events, request_id):
        if isinstance(event, TokenEvent):
            if not sent_role:
                sent_role = True
                yield chunk({"role": "assistant", "content": ""})
            yield _data(token_prefix + dumps(event.text) + token_suffix)
        elif isinstance(event, SourcesEvent):
            sent_role = True
            yield chunk({"role": "assistant", "content": ""}, sources=[source_json(s) for s in event.sources])
        elif isinstance(event, HighlightsEvent):
            highlights = highlights_json(event)
        elif isinstance(event, DoneEvent):
            extra = {} if highlights is None else {"highlights": highlights}
            yield chunk(
                {},
                "stop",
                **extra,
                citations=event.citations,
                invalid_citations=event.invalid_citations,
                answer_id=event.answer_id,
                mode=event.mode,
                history_turns_used=event.history_turns_used,
                terms_not_in_book=event.terms_not_in_book,
            )
            if include_usage:
                yield _data(dumps({**head, "choices": [], "usage": usage_out(event.usage)}))
            yield b"data: [DONE]\n\n"
        elif isinstance(event, ErrorEvent):
            # Past the headers every failure is the server's side (type server_error); `code` tells which.
            yield _data(dumps(error_body(500, event.code, event.message, request_id)))


def included_usage(body: ChatCompletionRequest) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage
