"""The configured limits of `/search` (MAX_QUESTION_CHARS, MAX_K); the answer faces' are in `rag_api.answer_request`.

The schemas state the ceilings, so the OpenAPI document is fixed; an operator may lower a limit in the settings,
and a body over the lowered limit gets the same 422 `invalid_request` as one over the ceiling.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError

from chains.settings import Settings
from rag_api.schemas import SearchRequest


def _too_long(field: str, limit: int, unit: str, setting: str) -> dict[str, Any]:
    return {
        "loc": ("body", field),
        "msg": f"must have at most {limit} {unit} ({setting})",
        "type": "too_long",
    }


def check_search_limits(body: SearchRequest, settings: Settings) -> None:
    problems = []
    if len(body.query) > settings.max_question_chars:
        problems.append(_too_long("query", settings.max_question_chars, "characters", "MAX_QUESTION_CHARS"))
    if body.k > settings.max_k:
        problems.append(_too_long("k", settings.max_k, "passages", "MAX_K"))
    if problems:
        raise RequestValidationError(problems)
