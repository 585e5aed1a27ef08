"""The one request every answer face parses into: `chains.answer.AnswerRequest`, checked against the configured
limits in one place.

`/ask`, `/api/chat` and `/v1/chat/completions` each read their own wire format (a JSON question, the AI SDK's
UI messages, OpenAI's messages) and hand the pieces to `answer_request`, which applies MAX_QUESTION_CHARS,
MAX_SELECTED_CHARS, MAX_K and MAX_TURN_CHARS with the same 422 message on every face (`param` says where the field
sits in that face's body). The history *window* is not cut here: the answer chain keeps the last HISTORY_TURNS turns
(`chains.answer`, its `prepare` step), for the API and for a LangChain user alike, and every face reports how many
it read (`history_turns_used`). Only `/ask`, whose client sends its own history, refuses more than
MAX_HISTORY_TURNS turns; the chat faces send the whole conversation each time, so theirs is never refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError

from chains.answer import AnswerRequest, Turn
from chains.settings import Settings
from rag_api.schemas import MAX_TURN_CHARS

Location = tuple[str | int, ...]

BLANK = "must not be empty or only whitespace"


@dataclass(frozen=True, slots=True)
class Fields:
    """Where a face's body holds each field, for the `param` of a 422 (`/ask`'s own field names by default)."""

    question: Location = ("question",)
    history: Location = ("history",)
    selected_text: Location = ("selected_text",)
    k: Location = ("k",)


def _problem(location: Location, message: str, kind: str) -> dict[str, Any]:
    return {"loc": ("body", *location), "msg": message, "type": kind}


def _too_long(location: Location, limit: int, unit: str, setting: str) -> dict[str, Any]:
    return _problem(location, f"must have at most {limit} {unit} ({setting})", "too_long")


def answer_request(
    settings: Settings,
    question: str,
    history: Iterable[Turn] = (),
    *,
    fields: Fields = Fields(),
    refuse_long_history: bool = False,
    selected_text: str | None = None,
    selected_from: str | None = None,
    page_url: str | None = None,
    k: int | None = None,
    sources: Sequence[str] | None = None,
    chapter: str | None = None,
    stream: bool = False,
) -> AnswerRequest:
    """The request, or `RequestValidationError` (422 `invalid_request`) naming every limit it is over.

    Turns with no text are dropped and each turn is cut to MAX_TURN_CHARS; with `refuse_long_history`, more than
    MAX_HISTORY_TURNS turns is a 422 (`/ask`), otherwise the whole conversation goes to the chain, which reads the
    last HISTORY_TURNS of it."""
    question = question.strip()
    turns = tuple(Turn(t.role, t.content[:MAX_TURN_CHARS]) for t in history if t.content.strip())
    problems = []
    if not question:
        problems.append(_problem(fields.question, BLANK, "value_error"))
    elif len(question) > settings.max_question_chars:
        problems.append(_too_long(fields.question, settings.max_question_chars, "characters", "MAX_QUESTION_CHARS"))
    if refuse_long_history and len(turns) > settings.max_history_turns:
        problems.append(_too_long(fields.history, settings.max_history_turns, "turns", "MAX_HISTORY_TURNS"))
    if selected_text is not None and len(selected_text) > settings.max_selected_chars:
        limit = settings.max_selected_chars
        problems.append(_too_long(fields.selected_text, limit, "characters", "MAX_SELECTED_CHARS"))
    if k is not None and k > settings.max_k:
        problems.append(_too_long(fields.k, settings.max_k, "passages", "MAX_K"))
    if problems:
        raise RequestValidationError(problems)
    return AnswerRequest(
        question=question,
        history=turns,
        selected_text=selected_text or None,
        selected_from=selected_from,
        page_url=page_url,
        k=k,
        sources=sources,
        chapter=chapter,
        stream=stream,
    )


def invalid(location: Location, message: str) -> RequestValidationError:
    """A 422 for a body that fits its schema but holds no answerable question (no user message, ...)."""
    return RequestValidationError([_problem(location, message, "value_error")])
