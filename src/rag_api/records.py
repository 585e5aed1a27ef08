"""A record of what readers asked and how the book answered, for the authors' report (`rag-report`).

One row per answer (the question, the mode, the sources and their scores, the citations, timings, the model and
its token usage) and one per reader's rating. Never an IP address or an API key. The database is any SQLAlchemy
URL (`DATABASE_URL`): a SQLite file under `data/` by default, PostgreSQL for a fleet; the schema is created and
upgraded by Alembic (`rag_api/migrations`) when the store opens, so every process that opens it agrees on it.

Writes are small synchronous statements run in a worker thread by the API (`asyncio.to_thread`); a failing
database is logged and never fails an answer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine, make_url

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
Rating = Literal["up", "down"]

metadata = sa.MetaData()

answers = sa.Table(
    "answers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("question", sa.Text, nullable=False),
    sa.Column("mode", sa.String(32), nullable=False, index=True),
    sa.Column("chapter", sa.Text, nullable=True),
    sa.Column("top_source", sa.Text, nullable=True),
    sa.Column("top_section", sa.Text, nullable=True),
    sa.Column("best_score", sa.Float, nullable=True),
    sa.Column("sources", sa.JSON, nullable=False),
    sa.Column("citations", sa.JSON, nullable=False),
    sa.Column("invalid_citations", sa.JSON, nullable=False),
    sa.Column("retrieval_ms", sa.Float, nullable=True),
    sa.Column("first_token_ms", sa.Float, nullable=True),
    sa.Column("total_ms", sa.Float, nullable=True),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("input_tokens", sa.Integer, nullable=True),
    sa.Column("output_tokens", sa.Integer, nullable=True),
    sa.Column("terms_not_in_book", sa.JSON, nullable=True),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("answer_id", sa.String(64), sa.ForeignKey("answers.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rating", sa.String(8), nullable=False),
    sa.Column("comment", sa.Text, nullable=True),
)


@dataclass(frozen=True, slots=True)
class RecordedSource:
    source: str
    heading_path: list[str]
    score: float
    chunk_index: int | None = None


@dataclass(frozen=True, slots=True)
class AnswerRecord:
    """What is kept of one answer."""

    answer_id: str
    endpoint: str
    question: str
    mode: str
    sources: Sequence[RecordedSource] = ()
    citations: Sequence[int] = ()
    invalid_citations: Sequence[int] = ()
    chapter: str | None = None
    retrieval_ms: float | None = None
    first_token_ms: float | None = None
    total_ms: float | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    terms_not_in_book: Sequence[str] = ()  # words of the question the book never uses (chains.answer.DoneEvent)
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


class UnknownAnswer(LookupError):
    """Feedback for an answer id that was never recorded (or was pruned)."""


def new_answer_id() -> str:
    return uuid.uuid4().hex


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for other databases and for in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


class RecordStore:
    """The answers and ratings in one database; open it with `RecordStore.open(url)`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, migrate: bool = True) -> RecordStore:
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        store = cls(engine)
        if migrate:
            store.migrate()
        return store

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest migration."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()

    # -- writing ------------------------------------------------------------------------------------------

    def record_answer(self, record: AnswerRecord) -> None:
        top = record.sources[0] if record.sources else None
        with self.engine.begin() as connection:
            connection.execute(
                answers.insert().values(
                    id=record.answer_id,
                    created_at=record.created_at,
                    endpoint=record.endpoint,
                    question=record.question,
                    mode=record.mode,
                    chapter=record.chapter,
                    top_source=top.source if top else None,
                    top_section=" > ".join(top.heading_path) if top and top.heading_path else None,
                    best_score=max((s.score for s in record.sources), default=None),
                    sources=[
                        {"source": s.source, "heading_path": s.heading_path, "score": s.score, "chunk": s.chunk_index}
                        for s in record.sources
                    ],
                    citations=list(record.citations),
                    invalid_citations=list(record.invalid_citations),
                    retrieval_ms=record.retrieval_ms,
                    first_token_ms=record.first_token_ms,
                    total_ms=record.total_ms,
                    model=record.model,
                    input_tokens=record.input_tokens,
                    output_tokens=record.output_tokens,
                    terms_not_in_book=list(record.terms_not_in_book),
                )
            )

    def add_feedback(self, answer_id: str, rating: Rating, comment: str | None = None) -> None:
        with self.engine.begin() as connection:
            known = connection.execute(sa.select(answers.c.id).where(answers.c.id == answer_id)).first()
            if known is None:
                raise UnknownAnswer(answer_id)
            connection.execute(
                feedback.insert().values(
                    answer_id=answer_id, created_at=dt.datetime.now(dt.UTC), rating=rating, comment=comment or None
                )
            )

    def prune(self, older_than_days: int, now: dt.datetime | None = None) -> int:
        """Delete answers (and their ratings) older than the retention; the number of answers deleted."""
        cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=older_than_days)
        with self.engine.begin() as connection:
            old = sa.select(answers.c.id).where(answers.c.created_at < cutoff)
            connection.execute(feedback.delete().where(feedback.c.answer_id.in_(old)))
            result = connection.execute(answers.delete().where(answers.c.created_at < cutoff))
            return int(result.rowcount or 0)

    # -- reading ------------------------------------------------------------------------------------------

    def answers_since(self, since: dt.datetime | None = None) -> Iterator[dict[str, Any]]:
        """Every recorded answer (oldest first) with its ratings as a list of {rating, comment}."""
        query = sa.select(answers).order_by(answers.c.created_at)
        if since is not None:
            query = query.where(answers.c.created_at >= since)
        with self.engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(query)]
            ids = [row["id"] for row in rows]
            ratings: dict[str, list[dict[str, Any]]] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                query_fb = sa.select(feedback).where(feedback.c.answer_id.in_(chunk)).order_by(feedback.c.id)
                for fb in connection.execute(query_fb):
                    ratings.setdefault(fb.answer_id, []).append({"rating": fb.rating, "comment": fb.comment})
        for row in rows:
            row["feedback"] = ratings.get(row["id"], [])
            yield row

    def count_answers(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(answers)).scalar_one())


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the report read while the API writes; foreign keys make the feedback cascade real.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class AnswerRecorder:
    """Writes answer records in worker threads without holding up the answer; failures are logged, not raised."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self._pending: set[asyncio.Task[None]] = set()

    def submit(self, record: AnswerRecord) -> None:
        task = asyncio.get_running_loop().create_task(self._write(record))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, record: AnswerRecord) -> None:
        try:
            await asyncio.to_thread(self.store.record_answer, record)
        except Exception:
            logger.exception("could not record answer %s", record.answer_id)

    async def drain(self) -> None:
        """Wait for the records still being written (at shutdown, and in tests)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
