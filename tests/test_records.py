"""The record of answers and ratings: stored through the API, read back by `rag-report`, pruned, or not kept at all.

The store tests run on SQLite and on a real PostgreSQL started by the suite (skipped where it is not installed).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from qdrant_client import QdrantClient

from chains.citations import check_citations, cited_markers
from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from rag_api.records import AnswerRecord, RecordedSource, RecordStore, UnknownAnswer, sqlite_path
from rag_api.report import build_report, main, parse_since, question_key
from tests.conftest import app_client
from tests.postgres import postgres_url  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration


def record(
    answer_id: str, question: str, mode: str = "extractive", score: float = 0.6, **extra: object
) -> AnswerRecord:
    values: dict[str, object] = {
        "answer_id": answer_id,
        "endpoint": "/ask",
        "question": question,
        "mode": mode,
        "sources": [RecordedSource("03-planting.md", ["Planting", "Depth and Width"], score, 2)],
        "citations": [1],
        **extra,
    }
    return AnswerRecord(**values)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = RecordStore.open(url)
    yield opened
    if request.param == "postgresql":  # one server for the session: leave it empty for the next test
        from rag_api.records import metadata

        metadata.drop_all(opened.engine)
        with opened.engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    opened.close()


def test_an_answer_and_its_rating_are_stored_and_read_back(store: RecordStore) -> None:
    store.record_answer(record("a1", "How deep should the hole be?", input_tokens=12))
    store.add_feedback("a1", "down", "It did not say how wide")
    (row,) = store.answers_since()
    assert row["question"] == "How deep should the hole be?"
    assert row["top_source"] == "03-planting.md" and row["top_section"] == "Planting > Depth and Width"
    assert row["best_score"] == pytest.approx(0.6) and row["input_tokens"] == 12
    assert row["feedback"] == [{"rating": "down", "comment": "It did not say how wide"}]


def test_feedback_for_an_unknown_answer_is_refused(store: RecordStore) -> None:
    with pytest.raises(UnknownAnswer):
        store.add_feedback("never-recorded", "up")


def test_retention_prunes_old_answers_and_their_ratings(store: RecordStore) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    store.record_answer(record("old", "an old question", created_at=old))
    store.add_feedback("old", "down", "old comment")
    store.record_answer(record("new", "a new question"))
    assert store.prune(30) == 1
    assert [row["id"] for row in store.answers_since()] == ["new"]


def test_opening_twice_migrates_once(store: RecordStore) -> None:
    store.record_answer(record("a1", "q"))
    again = RecordStore(store.engine)
    again.migrate()  # already at head: nothing to do, nothing lost
    assert again.count_answers() == 1


def test_citations_naming_no_source_are_told_apart() -> None:
    assert cited_markers("Dig wide [1]. Mulch [2, 7]; water [2][3].") == [1, 2, 7, 3]
    assert check_citations("Dig wide [1]. Mulch [2, 7]; water [0].", 3) == ([1, 2], [7, 0])


def test_report_groups_refusals_dislikes_and_weak_answers() -> None:
    now = dt.datetime.now(dt.UTC)
    rows = [
        {"id": "1", "question": "Is Kubernetes covered?", "mode": "not_in_book", "created_at": now,
         "top_source": None, "top_section": None, "best_score": None, "invalid_citations": [], "feedback": []},
        {"id": "2", "question": "is kubernetes covered", "mode": "not_in_book", "created_at": now,
         "top_source": None, "top_section": None, "best_score": None, "invalid_citations": [], "feedback": []},
        {"id": "3", "question": "When to prune?", "mode": "generated", "created_at": now, "top_source": "04.mdx",
         "top_section": "Pruning", "best_score": 0.7, "invalid_citations": [9],
         "feedback": [{"rating": "down", "comment": "wrong season"}]},
    ]  # fmt: skip
    report = build_report(rows, weak_score=0.45)
    (unanswered,) = report["unanswered"]
    assert unanswered.count == 2 and question_key(unanswered.question) == "is kubernetes covered"
    (disliked,) = report["disliked"]
    assert disliked.comments == ["wrong season"] and disliked.chapter == "04.mdx"
    (weak,) = report["weak"]
    assert weak.invalid_citations == [9]


def test_since_accepts_durations_and_dates() -> None:
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert parse_since("7d", now) == dt.datetime(2026, 11, 24, tzinfo=dt.UTC)
    assert parse_since("2026-11-01", now) == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert parse_since(None, now) is None


async def _ask_and_rate(settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient) -> tuple[str, str]:
    """One answered and one refused question through the API, the answered one rated down."""
    async for app, client in app_client(settings, embeddings, qdrant):
        answered = (await client.post("/ask", json={"question": "How much water does a young tree need?"})).json()
        refused = (await client.post("/ask", json={"question": "What is the capital gains tax rate in Norway?"})).json()
        rated = await client.post(
            "/feedback", json={"answer_id": answered["answer_id"], "rating": "down", "comment": "too vague"}
        )
        assert rated.status_code == 201, rated.text
        unknown = await client.post("/feedback", json={"answer_id": "0" * 32, "rating": "up"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
        await app.state.rag.recorder.drain()
        return answered["answer_id"], refused["answer_id"]
    raise AssertionError("unreachable")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_answers_asked_through_the_api_reach_the_report(
    backend: str,
    request: pytest.FixtureRequest,
    settings: Settings,
    embeddings: LocalEmbeddings,
    qdrant: QdrantClient,
    indexed_book: Path,
) -> None:
    if backend == "postgresql":
        settings = settings.model_copy(update={"database_url": request.getfixturevalue("postgres_url")})
    answered_id, refused_id = await _ask_and_rate(settings, embeddings, qdrant)
    try:
        result = CliRunner().invoke(main, ["--format", "json", "--database-url", settings.database_url])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert report["answers"] == 2
        assert [item["question"] for item in report["unanswered"]] == ["What is the capital gains tax rate in Norway?"]
        (disliked,) = report["disliked"]
        assert disliked["question"] == "How much water does a young tree need?"
        assert disliked["comments"] == ["too vague"] and disliked["chapter"].endswith("watering.md")
        for output_format in ("markdown", "csv"):
            rendered = CliRunner().invoke(main, ["--format", output_format, "--database-url", settings.database_url])
            assert rendered.exit_code == 0 and "capital gains tax" in rendered.output
    finally:
        if backend == "postgresql":
            store = RecordStore.open(settings.database_url)
            from rag_api.records import metadata

            metadata.drop_all(store.engine)
            with store.engine.begin() as connection:
                connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
            store.close()
    assert answered_id != refused_id


async def test_nothing_is_kept_with_recording_off(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> None:
    settings = settings.model_copy(update={"record_questions": False})
    async for _app, client in app_client(settings, embeddings, qdrant):
        answer = (await client.post("/ask", json={"question": "How much water does a young tree need?"})).json()
        rated = await client.post("/feedback", json={"answer_id": answer["answer_id"], "rating": "up"})
        assert rated.status_code == 404
    database = sqlite_path(settings.database_url)
    assert database is not None and not database.exists()


def test_the_report_names_a_database_it_cannot_open(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--database-url", "postgresql+psycopg://nobody@127.0.0.1:9/none"])
    assert result.exit_code == 1 and "cannot open the records database" in result.output
