"""The question's words the book never uses, when they do not refuse it: the sample book has no cider, yet its
apple passages come near "How do I press my apples to make cider at home?". The answer says so (extractive), the
model is told (a real local OpenAI-compatible server reads the prompt), the record keeps the words, and
`rag-report` counts them for the authors, refused or not. A 0001 records database upgrades without losing a row.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from click.testing import CliRunner
from qdrant_client import QdrantClient

from chains.answer import build_answer_chain
from chains.book_terms import BookVocabulary
from chains.embeddings import LocalEmbeddings
from chains.models import build_chat_model
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import build_vector_store
from rag_api.records import MIGRATIONS, AnswerRecord, RecordStore
from rag_api.report import build_terms, main, render_markdown
from tests.conftest import app_client, ingest_into, vocabulary_ready
from tests.live import free_port, serve
from tests.test_model_stream import WORDS, Upstream, completion_stream, paced

pytestmark = pytest.mark.integration

SAMPLE_BOOK = Path(__file__).resolve().parent.parent / "sample_book"
CIDER = "How do I press my apples to make cider at home?"
WATER = "How much water does a young tree need?"


@pytest.fixture
def sample_book(qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings) -> Path:
    assert not ingest_into(qdrant, embeddings, settings, SAMPLE_BOOK).failed
    return SAMPLE_BOOK


async def _answer(question: str, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings) -> dict:
    retriever = BookRetriever.from_settings(build_vector_store(qdrant, settings, embeddings), settings)
    vocabulary = BookVocabulary(settings.qdrant_collection)
    vocabulary.read_now(qdrant)
    return dict(await build_answer_chain(retriever, None, settings, vocabulary=vocabulary).ainvoke(question))


async def test_an_answered_question_names_the_uncommon_word_the_book_never_uses(
    sample_book: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    answer = await _answer(CIDER, settings, qdrant, embeddings)
    assert answer["mode"] == "extractive" and answer["sources"], "near enough to answer: not refused"
    assert answer["terms_not_in_book"] == ["cider"]
    assert str(answer["answer"]).startswith("The book never uses the word “cider”: the passages below may not answer")
    plain = await _answer(WATER, settings, qdrant, embeddings)
    assert plain["terms_not_in_book"] == [] and str(plain["answer"]).startswith("No chat model is configured")
    names_only = settings.model_copy(update={"refusal_term_check": "names"})
    assert (await _answer(CIDER, names_only, qdrant, embeddings))["terms_not_in_book"] == []


async def test_a_refusal_reports_the_terms_it_named(
    sample_book: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    answer = await _answer("How do I train an apple tree as an espalier against a wall?", settings, qdrant, embeddings)
    assert answer["mode"] == "not_in_book" and answer["terms_not_in_book"] == ["espalier"]


async def test_the_model_is_told_the_word_and_the_api_and_the_record_carry_it(
    sample_book: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    upstream = Upstream(paced(completion_stream(WORDS)))
    port = free_port()
    configured = settings.model_copy(
        update={"chat_model": "m", "openai_base_url": f"http://127.0.0.1:{port}/v1", "chat_max_retries": 0}
    )
    with serve(upstream.app(), port):
        async for app, http in app_client(configured, embeddings, qdrant, build_chat_model(configured)):
            await vocabulary_ready(app, qdrant)
            whole = (await http.post("/ask", json={"question": CIDER, "stream": False})).json()
            streamed = await http.post("/ask", json={"question": CIDER, "stream": True})
            plain = (await http.post("/ask", json={"question": WATER, "stream": False})).json()
            await app.state.rag.recorder.drain()
    assert whole["mode"] == "generated" and whole["terms_not_in_book"] == ["cider"]
    done = streamed.text.split("event: done\n", 1)[1].split("data: ", 1)[1].split("\n", 1)[0]
    assert json.loads(done)["terms_not_in_book"] == ["cider"]
    assert plain["terms_not_in_book"] == []
    told, _, untold = (body["messages"][-1]["content"] for body in upstream.bodies)
    assert told.endswith("</question>\n\n<not_in_book>\ncider\n</not_in_book>")
    assert "<not_in_book>" not in untold and untold.endswith("</question>")
    assert "<not_in_book>" in upstream.bodies[0]["messages"][0]["content"], "the system message says what it means"
    report = CliRunner().invoke(main, ["--format", "json", "--database-url", settings.database_url])
    assert report.exit_code == 0, report.output
    (term,) = json.loads(report.output)["terms_not_in_book"]
    assert (term["term"], term["count"], term["refused"], term["questions"]) == ("cider", 2, 0, [CIDER])


def _row(question: str, mode: str, terms: list[str] | None, minutes_ago: int) -> dict:
    asked = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC) - dt.timedelta(minutes=minutes_ago)
    return {"question": question, "mode": mode, "terms_not_in_book": terms, "created_at": asked}


def test_the_report_counts_each_term_once_an_answer_most_asked_first() -> None:
    rows = [
        _row("Cider from my apples?", "extractive", ["cider"], 30),
        _row("How do I make CIDER, cider?", "generated", ["CIDER", "cider"], 20),
        _row("Does the book cover Kubernetes?", "not_in_book", ["Kubernetes"], 10),
        _row("How deep is the hole?", "extractive", None, 5),  # recorded before the column: no terms
        _row("How do I press apples for cider?", "not_in_book", ["cider"], 1),
    ]
    cider, kubernetes = build_terms(rows)
    assert (cider.term, cider.count, cider.refused) == ("cider", 3, 1)
    latest_first = ["How do I press apples for cider?", "How do I make CIDER, cider?", "Cider from my apples?"]
    assert cider.questions == latest_first
    assert (kubernetes.term, kubernetes.count, kubernetes.refused) == ("kubernetes", 1, 1)
    text = render_markdown({"unanswered": [], "disliked": [], "weak": []}, len(rows), None, [cider, kubernetes])
    assert "## Words readers used that the book never does (2)" in text
    assert "- “cider”: 3×, refused 1×, e.g. “How do I press apples for cider?”" in text


def test_a_records_database_of_the_first_schema_upgrades_keeping_its_answers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    engine = sa.create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.exec_driver_sql(
            "INSERT INTO answers (id, created_at, endpoint, question, mode, sources, citations, invalid_citations) "
            "VALUES ('old', '2026-12-01 10:00:00', '/ask', 'an old question', 'extractive', '[]', '[]', '[]')"
        )
    engine.dispose()
    store = RecordStore.open(url)  # migrates to the newest schema
    try:
        store.record_answer(AnswerRecord("new", "/ask", CIDER, "extractive", terms_not_in_book=["cider"]))
        rows = {row["id"]: row for row in store.answers_since()}
    finally:
        store.close()
    assert rows["old"]["question"] == "an old question" and rows["old"]["terms_not_in_book"] is None
    assert rows["new"]["terms_not_in_book"] == ["cider"]
