"""Schemathesis against the live app's OpenAPI document: generated valid and invalid requests to every endpoint
must never get a 5xx, and every response must match the documented status codes, content types and schemas.

The app runs under uvicorn on 127.0.0.1 with the real embedded Qdrant and embedding model and a fake chat model
that always answers. The number of examples is bounded (FUZZ_EXAMPLES per operation) so that this stays fast.
Rate limiting is off here: fuzzing is about input handling, and 429 is covered by the security tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from qdrant_client import QdrantClient
from schemathesis.specs.openapi.checks import positive_data_acceptance

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from rag_api.app import create_app
from rag_api.state import Overrides
from tests.fakes import cycling_model
from tests.live import free_port, serve

pytestmark = pytest.mark.integration

FUZZ_EXAMPLES = 40
# Rules JSON Schema cannot state are checked by the route and answered 422, so there a schema-valid body may be
# refused: /api/chat and /v1/chat/completions need text in the *last* (user) message, within MAX_QUESTION_CHARS
# over all its text parts. A `sources`/`chapter` filter (/ask, /search, and the others' options) is checked against
# what the book stores (422 `filter_matches_nothing`), and /feedback's answer_id against the recorded answers (404).
EXCLUDED_CHECKS = {
    path: [positive_data_acceptance] for path in ("/api/chat", "/v1/chat/completions", "/ask", "/search", "/feedback")
}


@pytest.fixture
def live_schema(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> Iterator[schemathesis.BaseSchema]:
    model = cycling_model("Twenty litres a week [1].")
    app = create_app(
        settings.model_copy(update={"rate_limit_per_minute": 0}),
        Overrides(chat_model=model, embeddings=embeddings, client=qdrant),
    )
    with serve(app, free_port()) as base_url:
        yield schemathesis.openapi.from_url(f"{base_url}/openapi.json")


def test_every_operation_answers_within_its_documented_contract(live_schema: schemathesis.BaseSchema) -> None:
    # One hypothesis run per operation (schemathesis' pytest plugin cannot take a function-scoped fixture here).
    operations = [result.ok() for result in live_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/ask", "/search", "/health", "/ready", "/v1/chat/completions"}
    for operation in operations:
        excluded = EXCLUDED_CHECKS.get(operation.path)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(excluded_checks=excluded)  # noqa: B023 (run at once, in this iteration)

        fuzz()
