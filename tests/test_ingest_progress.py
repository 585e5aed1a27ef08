"""The progress and the summary of an ingest count what was really done, and the rate leaves out model loading."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.embeddings import Embeddings
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from chains.vectorstore import ensure_collection
from ingest.indexer import RATE_MIN_CHUNKS, Indexer, Progress, discover_files
from ingest.job import ProgressFigures

pytestmark = pytest.mark.integration


class LoadsOnFirstUse(Embeddings):
    """The real model behind a `load()` the indexer calls before embedding (as the CLI's LazyEmbeddings has)."""

    def __init__(self, model: LocalEmbeddings) -> None:
        self.model = model
        self.loads = 0
        self.embedded_before_load = 0

    def load(self) -> None:
        self.loads += 1

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not self.loads:
            self.embedded_before_load += len(texts)
        return self.model.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.model.embed_query(text)


def test_progress_counts_chunks_embedded_and_written_and_the_model_is_loaded_before_the_rate_clock(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    ensure_collection(qdrant, settings, embeddings.dimension)
    model = LoadsOnFirstUse(embeddings)
    seen: list[tuple[int, int, int]] = []

    def record(progress: Progress) -> None:
        seen.append((progress.files_done, progress.chunks_embedded, progress.chunks_written))

    files = list(discover_files([book_dir]))
    report = Indexer(qdrant, model, settings, batch_size=1).ingest(files, book_dir.parent, on_progress=record)
    stored = qdrant.count(settings.qdrant_collection, exact=True).count
    assert model.loads == 1 and model.embedded_before_load == 0
    assert report.embedded == report.added == stored > 1
    assert seen[-1] == (len(files), stored, stored)  # the last report: everything read, embedded and written
    assert all(written <= embedded for _, embedded, written in seen)  # never written before it is embedded
    assert any(written < embedded for _, embedded, written in seen)  # reported as embedded before the write
    assert stored < RATE_MIN_CHUNKS  # too few for a rate: the summary says how many, and in how long
    assert "chunks/s" not in report.summary() and f"{stored} embedded in " in report.summary()


def test_an_unchanged_ingest_loads_no_model_and_reports_no_rate(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    ensure_collection(qdrant, settings, embeddings.dimension)
    files = list(discover_files([book_dir]))
    Indexer(qdrant, embeddings, settings).ingest(files, book_dir.parent)
    model = LoadsOnFirstUse(embeddings)
    again = Indexer(qdrant, model, settings).ingest(files, book_dir.parent)
    assert model.loads == 0 and again.embedded == 0 and again.load_seconds == 0
    assert "chunks/s" not in again.summary() and "model load" not in again.summary()


def test_a_single_chunk_ingest_shows_no_rate_and_a_long_one_shows_the_rate_without_the_model_load(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, tmp_path: Path
) -> None:
    ensure_collection(qdrant, settings, embeddings.dimension)
    book = tmp_path / "book"
    book.mkdir()
    (book / "one.md").write_text("# One\n\nA single short chunk.\n", encoding="utf-8")
    lines: list[str] = []
    one = Indexer(qdrant, LoadsOnFirstUse(embeddings), settings).ingest(
        list(discover_files([book])), tmp_path, on_progress=lambda p: lines.append(ProgressFigures.of(p).line())
    )
    assert one.embedded == 1
    assert "/s" not in one.summary() and "1 embedded in " in one.summary()
    assert lines[-1] == "1/1 files read, 1 chunks embedded, 1 written"  # no "(0.3/s)" from one chunk

    for n in range(RATE_MIN_CHUNKS + 6):
        (book / f"part{n:03}.md").write_text(f"# Part {n}\n\nThe text of part number {n}.\n", encoding="utf-8")
    rates: list[float | None] = []
    many = Indexer(qdrant, LoadsOnFirstUse(embeddings), settings).ingest(
        list(discover_files([book])), tmp_path, on_progress=lambda p: rates.append(p.rate)
    )
    assert many.embedded == RATE_MIN_CHUNKS + 6
    assert "chunks/s embedded" in many.summary()
    assert 0 < many.embed_seconds <= many.seconds - many.load_seconds
    shown = float(many.summary().split(", ")[-1].split(" chunks/s")[0])
    assert shown == pytest.approx(many.embedded / many.embed_seconds, abs=0.06)
    assert rates[0] is None and rates[-1] is not None and rates[-1] > 0
