"""Request schemas: "not only whitespace" means the same to the app (pydantic's Rust regex) and to clients that
validate against the OpenAPI schema (ECMAScript regex), which disagree about a few characters."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rag_api.schemas import SearchRequest

# NEL is whitespace to Python and Rust but not to ECMAScript; BOM the other way round; \x1c-\x1f only to Python.
DISPUTED_BLANKS = ["\x85", "\ufeff", "\x1c", "\x1f", " \x85\ufeff "]


@pytest.mark.parametrize("blank", DISPUTED_BLANKS)
def test_a_query_of_disputed_whitespace_only_is_refused(blank: str) -> None:
    with pytest.raises(ValidationError):
        SearchRequest(query=blank)


@pytest.mark.parametrize("blank", DISPUTED_BLANKS)
def test_disputed_whitespace_beside_text_is_accepted(blank: str) -> None:
    assert SearchRequest(query=f"pruning{blank}").query
