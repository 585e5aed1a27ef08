"""Pydantic models for every request and response body, with the limits a public endpoint needs.

Numbers and flags are strict (`"k": "5"` and `"stream": 0` are 422, not quietly converted): a client that sends the
wrong type has a bug worth naming. Only those fields: strict strings would refuse nothing JSON can send anyway. A
whole number written `5.0` stays accepted, as JSON Schema's `integer` allows it (`PassageCount`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, field_validator

from chains.settings import MAX_HISTORY_TURNS, MAX_K, MAX_QUESTION_CHARS, MAX_SELECTED_CHARS

MAX_TURN_CHARS = 8000
# "Not only whitespace", spelled so that Python's, Rust's (pydantic-core) and JSON Schema's regexes agree:
# Python counts \x1c-\x1f as whitespace, Unicode does not; Python and Rust count \x85 (NEL), ECMAScript does
# not; ECMAScript counts \ufeff (BOM), Python and Rust do not.
NOT_BLANK = r"[^\s\x1c-\x1f\x85\ufeff]"


def _integral_float_to_int(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# A number of passages (`k`), strictly an integer: no strings, booleans or 2.5; but 5.0, which JSON Schema counts as
# the integer 5. The bounds sit inside, so that OpenAPI shows them as minimum/maximum in an optional field too.
PassageCount = Annotated[int, Strict(), Field(ge=1, le=MAX_K), BeforeValidator(_integral_float_to_int)]
PASSAGE_COUNT_DESCRIPTION = (
    "How many passages to retrieve, at most: candidates close together in a chapter come back as one passage."
)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value.strip()


class TurnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_TURN_CHARS)


class AskRequest(BaseModel):
    """A question about the book, with optional conversation, selected text and filters."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"question": "How deep should the planting hole be?", "stream": False}],
        },
    )

    question: str = Field(
        min_length=1, max_length=MAX_QUESTION_CHARS, pattern=NOT_BLANK, description="The student's question."
    )
    stream: bool | None = Field(
        None,
        strict=True,
        description="Stream server-sent events. Default: stream when the Accept header asks for them.",
    )
    history: list[TurnIn] = Field(
        default_factory=list, max_length=MAX_HISTORY_TURNS, description="Earlier turns, oldest first."
    )
    selected_text: str | None = Field(
        None, max_length=MAX_SELECTED_CHARS, description="Text the reader selected on the page; used first."
    )
    selected_from: str | None = Field(None, max_length=500, description="The page or chapter the selection is from.")
    page_url: str | None = Field(
        None, max_length=2000, description="The page the reader asks from (sent by the widget); not used yet."
    )
    k: PassageCount | None = Field(None, description=PASSAGE_COUNT_DESCRIPTION)
    sources: list[str] | None = Field(None, max_length=100, description="Only search these source files.")
    chapter: str | None = Field(None, max_length=500, description="Only search this chapter (its title).")

    _question_not_blank = field_validator("question")(_not_blank)


class SourceSectionOut(BaseModel):
    start: int = Field(description="Where the section starts in the passage's `text` (a character offset).")
    heading_path: list[str]
    url: str | None = Field(description="The section on the book's site (BOOK_BASE_URL + page_path + #anchor).")
    page_path: str | None = None
    anchor: str | None = None


class SourceOut(BaseModel):
    number: int = Field(description="The number the answer cites it by, as [number].")
    source: str = Field(description="The file it comes from, relative to the book's folder.")
    title: str | None
    heading_path: list[str]
    url: str | None = Field(description="Its section on the book's site (BOOK_BASE_URL + page_path + #anchor).")
    page: int | None
    chunk_index: int | None
    page_path: str | None = Field(None, description="Its page on the book's site, relative to BOOK_BASE_URL.")
    anchor: str | None = Field(None, description="The id of its section's heading on that page.")
    score: float
    text: str
    highlights: list[tuple[int, int]] = Field(
        default_factory=list,
        description="[start, end] character offsets into `text` of the sentences that best answer the question.",
    )
    sections: list[SourceSectionOut] = Field(
        default_factory=list,
        description="The sections `text` spans, in order: one, unless nearby chunks of another subsection were "
        "joined to the passage. `url` is the section of the chunk the passage was found by; link a highlight to the "
        "section holding it (the last one starting at or before it).",
    )
    chunk_span: tuple[int, int] | None = Field(
        None, description="[start, end] of chunk `chunk_index` in `text` when chunks were joined to it."
    )


class TimingsOut(BaseModel):
    retrieval_ms: float
    first_token_ms: float | None
    total_ms: float


class AskResponse(BaseModel):
    answer_id: str
    answer: str
    mode: Literal["generated", "extractive", "not_in_book"] = Field(
        description="generated by the chat model; extractive when no model is configured; not_in_book when "
        "nothing relevant was found, or the model said the book does not cover the question."
    )
    sources: list[SourceOut]
    citations: list[int] = Field(description="Numbers of the sources the answer cites (each names a real source).")
    invalid_citations: list[int] = Field(
        default_factory=list, description="[n] markers of the answer that name no source: never link them."
    )
    usage: dict[str, int] | None
    timings: TimingsOut
    history_turns_used: int = Field(
        0, description="How many of the latest conversation turns the answer read (at most HISTORY_TURNS)."
    )
    terms_not_in_book: list[str] = Field(
        default_factory=list,
        description="Words of the question the book never uses: those a refusal names, or the uncommon ones of an "
        "answered question (its passages may be about something near them).",
    )


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS, pattern=NOT_BLANK)
    k: PassageCount = 5
    sources: list[str] | None = Field(None, max_length=100)
    chapter: str | None = Field(None, max_length=500)

    _query_not_blank = field_validator("query")(_not_blank)


class SearchResult(BaseModel):
    text: str
    score: float = Field(
        description="Cosine similarity of the passage to the query (what the answer's relevance threshold compares). "
        "Results come in retrieval order (`metadata.rank`), which in hybrid mode need not follow this score."
    )
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    results: list[SearchResult]


class DependencyHealth(BaseModel):
    ok: bool
    detail: str | None = None


class ChatModelInfo(BaseModel):
    provider: str = Field(description="`openai` (any OpenAI-compatible endpoint), `anthropic`, ... (CHAT_MODEL).")
    name: str = Field(description="The provider's model name.")


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    down: list[Literal["qdrant", "chat_model", "embeddings"]] = Field(
        default_factory=list, description="The dependencies that are down (empty when status is ok)."
    )
    dependencies: dict[str, DependencyHealth] = Field(
        default_factory=dict, description="Each dependency (qdrant, chat_model, embeddings) and its state."
    )
    qdrant: DependencyHealth
    collection: str
    points: int | None
    chat_model: str | None = Field(description="The configured chat model, or null for extractive answers.")
    model: ChatModelInfo | None = Field(
        None, description="The chat model's provider and name, or null for extractive answers."
    )
    embedding_model: str


class ErrorBody(BaseModel):
    """OpenAI's error shape (message, type, param, code) plus the request id."""

    code: str = Field(description="Stable, for programs: invalid_request, unauthorized, rate_limited, ...")
    message: str = Field(description="For people: what went wrong and what to do.")
    type: str = Field(
        "invalid_request_error",
        description="OpenAI's error type: invalid_request_error, authentication_error, permission_error, "
        "not_found_error, rate_limit_error or server_error.",
    )
    param: str | None = Field(None, description="The request field at fault, when there is one.")
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- POST /api/chat: the body the AI SDK's DefaultChatTransport sends (useChat) ---

MAX_CHAT_MESSAGES = 500
MAX_MESSAGE_PARTS = 100
MAX_PART_TEXT_CHARS = 100_000


class ChatQuestionOptions(BaseModel):
    """What the reader attached to a question: the metadata of the last user message, as `sendMessage` sets it."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    selected_text: str | None = Field(
        None,
        alias="selectedText",
        max_length=MAX_SELECTED_CHARS,
        description="Text the reader selected on the page; used as the first passage.",
    )
    selected_from: str | None = Field(
        None, alias="selectedFrom", max_length=500, description="The page or chapter the selection is from."
    )
    chapter: str | None = Field(None, max_length=500, description="Only search this chapter (its title).")
    sources: list[str] | None = Field(None, max_length=100, description="Only search these source files.")
    k: PassageCount | None = Field(None, description=PASSAGE_COUNT_DESCRIPTION)


class UIMessagePartIn(BaseModel):
    """One part of a UI message. Only `text` parts are read; other parts (sources, files, data) are passed over."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=200)
    text: str | None = Field(None, max_length=MAX_PART_TEXT_CHARS)


class UIMessageIn(BaseModel):
    """A message of the conversation as the AI SDK keeps it (`UIMessage`)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(max_length=200)
    role: Literal["system", "user", "assistant"]
    parts: list[UIMessagePartIn] = Field(max_length=MAX_MESSAGE_PARTS)
    metadata: ChatQuestionOptions | None = Field(
        None, description="On the last user message: the selected text and search filters for this question."
    )


class ChatRequest(BaseModel):
    """The AI SDK chat request (`DefaultChatTransport`): the last user message is the question, earlier messages
    are the conversation. Fields the transport's `body` option adds are ignored."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "id": "chat-1",
                    "messages": [
                        {
                            "id": "m1",
                            "role": "user",
                            "parts": [{"type": "text", "text": "How deep should the planting hole be?"}],
                            "metadata": {"selectedText": "Dig the planting hole twice as wide as the roots."},
                        }
                    ],
                    "trigger": "submit-message",
                }
            ]
        },
    )

    id: str | None = Field(None, max_length=200, description="The chat's id.")
    messages: list[UIMessageIn] = Field(min_length=1, max_length=MAX_CHAT_MESSAGES)
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    message_id: str | None = Field(None, alias="messageId", max_length=200)


# --- POST /feedback: a reader's rating of one answer ---

MAX_FEEDBACK_COMMENT_CHARS = 2000


class FeedbackRequest(BaseModel):
    """A reader's thumbs up or down on an answer, by the `answer_id` its done event or JSON body carried."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"answer_id": "3f2a…", "rating": "down", "comment": "It missed chapter 4"}]},
    )

    answer_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=MAX_FEEDBACK_COMMENT_CHARS, description="What was wrong or right.")


class FeedbackResponse(BaseModel):
    answer_id: str
    rating: Literal["up", "down"]
    stored: bool = True
