"""The configured request limits (MAX_QUESTION_CHARS, MAX_HISTORY_TURNS, MAX_SELECTED_CHARS, MAX_K).

The schemas state the ceilings, so the OpenAPI document is fixed; an operator may lower a limit in the settings,
and a body over the lowered limit gets the same 422 `invalid_request` as one over the ceiling.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError

from chains.settings import Settings
from rag_api.schemas import AskRequest, SearchRequest


def _too_long(field: str, limit: int, unit: str, setting: str) -> dict[str, Any]:
    return {
        "loc": ("body", field),
        "msg": f"must have at most {limit} {unit} ({setting})",
        "type": "too_long",
    }


def check_ask_limits(body: AskRequest, settings: Settings) -> None:
    problems = []
    if len(body.question) > settings.max_question_chars:
        problems.append(_too_long("question", settings.max_question_chars, "characters", "MAX_QUESTION_CHARS"))
    if len(body.history) > settings.max_history_turns:
        problems.append(_too_long("history", settings.max_history_turns, "turns", "MAX_HISTORY_TURNS"))
    if body.selected_text is not None and len(body.selected_text) > settings.max_selected_chars:
        problems.append(_too_long("selected_text", settings.max_selected_chars, "characters", "MAX_SELECTED_CHARS"))
    if body.k is not None and body.k > settings.max_k:
        problems.append(_too_long("k", settings.max_k, "passages", "MAX_K"))
    if problems:
        raise RequestValidationError(problems)


def check_search_limits(body: SearchRequest, settings: Settings) -> None:
    problems = []
    if len(body.query) > settings.max_question_chars:
        problems.append(_too_long("query", settings.max_question_chars, "characters", "MAX_QUESTION_CHARS"))
    if body.k > settings.max_k:
        problems.append(_too_long("k", settings.max_k, "passages", "MAX_K"))
    if problems:
        raise RequestValidationError(problems)
