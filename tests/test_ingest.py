"""Incremental ingest into a real Qdrant with the real embedding model, and the `rag-ingest` command."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from ingest.cli import main as ingest_main
from tests.conftest import ingest_into

pytestmark = pytest.mark.integration


def stored_texts(client: QdrantClient, settings: Settings) -> list[str]:
    points, _ = client.scroll(settings.qdrant_collection, limit=10_000, with_payload=True)
    return [str((p.payload or {})["page_content"]) for p in points]


def count(client: QdrantClient, settings: Settings) -> int:
    return client.count(settings.qdrant_collection, exact=True).count


def test_reingest_unchanged_book_writes_nothing(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    first = ingest_into(qdrant, embeddings, settings, book_dir)
    points = count(qdrant, settings)
    assert first.added == points > 0
    second = ingest_into(qdrant, embeddings, settings, book_dir)
    assert (second.added, second.removed, second.unchanged) == (0, 0, points)
    assert count(qdrant, settings) == points


def test_changed_chapter_replaces_its_old_chunks(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    ingest_into(qdrant, embeddings, settings, book_dir)
    chapter = book_dir / "pruning.md"
    chapter.write_text(
        "# Pruning\n\nPrune plum trees only in summer, never in winter, to avoid silver leaf disease.\n",
        encoding="utf-8",
    )
    report = ingest_into(qdrant, embeddings, settings, book_dir)
    assert report.added >= 1 and report.removed >= 1
    texts = " ".join(stored_texts(qdrant, settings))
    assert "silver leaf disease" in texts
    assert "outward-facing bud" not in texts
    assert "twenty litres" in texts  # the other chapter is untouched


def test_bad_file_is_reported_and_the_rest_ingested(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    (book_dir / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (book_dir / "empty.md").write_text("")
    report = ingest_into(qdrant, embeddings, settings, book_dir)
    assert sorted(f.source for f in report.failed) == ["book/broken.pdf", "book/empty.md"]
    assert "2 failed" in report.summary()
    assert "twenty litres" in " ".join(stored_texts(qdrant, settings))


def run_cli(settings: Settings, *args: str) -> object:
    env = {"QDRANT_PATH": str(settings.qdrant_path), "QDRANT_COLLECTION": settings.qdrant_collection}
    if settings.qdrant_url:
        env["QDRANT_URL"] = str(settings.qdrant_url)
    return CliRunner().invoke(ingest_main, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def cli_settings(settings: Settings) -> Settings:
    return settings  # the CLI opens the store itself, so no test client may hold it


def test_cli_ingests_prunes_and_dry_runs(cli_settings: Settings, book_dir: Path, tmp_path: Path) -> None:
    first = run_cli(cli_settings, str(book_dir), "--base-dir", str(tmp_path), "-q")
    assert first.exit_code == 0, first.output  # type: ignore[attr-defined]
    assert "0 failed" in first.stdout  # type: ignore[attr-defined]

    (book_dir / "pruning.md").unlink()
    dry = run_cli(cli_settings, str(book_dir), "--base-dir", str(tmp_path), "--prune", "--dry-run", "-q")
    assert "dry run" in dry.stdout and "1 files pruned" in dry.stdout  # type: ignore[attr-defined]

    pruned = run_cli(cli_settings, str(book_dir), "--base-dir", str(tmp_path), "--prune", "-q")
    assert pruned.exit_code == 0 and "1 files pruned" in pruned.stdout  # type: ignore[attr-defined]
    again = run_cli(cli_settings, str(book_dir), "--base-dir", str(tmp_path), "--prune", "-q")
    assert "0 added" in again.stdout and "0 removed" in again.stdout  # type: ignore[attr-defined]


def test_cli_exit_code_1_and_file_named_when_a_file_fails(cli_settings: Settings, book_dir: Path) -> None:
    (book_dir / "notes.txt").write_bytes(b"\x00\x01\x02binary")
    result = run_cli(cli_settings, str(book_dir), "-q")
    assert result.exit_code == 1  # type: ignore[attr-defined]
    assert "notes.txt" in result.stderr and "binary" in result.stderr  # type: ignore[attr-defined]
    assert "1 failed" in result.stdout  # type: ignore[attr-defined]


def test_cli_bad_setting_is_a_usage_error_naming_the_variable(book_dir: Path) -> None:
    result = CliRunner().invoke(ingest_main, [str(book_dir)], env={"CHUNK_SIZE": "lots"})
    assert result.exit_code == 2
    assert "CHUNK_SIZE" in result.output


def test_cli_path_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(ingest_main, [str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
