"""The `rag-ingest` command: summary and exit codes, one line per bad file, dry runs, delete, and the message
when another process holds the embedded store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from langchain_core.embeddings import Embeddings
from qdrant_client import QdrantClient

from chains.settings import Settings
from chains.vectorstore import build_qdrant_client
from ingest.cli import main as ingest_main
from tests.conftest import QDRANT_URL

pytestmark = pytest.mark.integration


def cli_env(settings: Settings) -> dict[str, str]:
    env = {"QDRANT_PATH": str(settings.qdrant_path), "QDRANT_COLLECTION": settings.qdrant_collection}
    if settings.qdrant_url:
        env["QDRANT_URL"] = str(settings.qdrant_url)
    return env


def run_cli(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(ingest_main, list(args), env=cli_env(settings), catch_exceptions=False)


def point_count(settings: Settings) -> int | None:
    client = build_qdrant_client(settings)
    try:
        if not client.collection_exists(settings.qdrant_collection):
            return None
        return client.count(settings.qdrant_collection, exact=True).count
    finally:
        client.close()


def test_cli_ingests_prunes_and_dry_runs(settings: Settings, book_dir: Path, tmp_path: Path) -> None:
    first = run_cli(settings, str(book_dir), "--base-dir", str(tmp_path), "-q")
    assert first.exit_code == 0, first.output
    assert "2 files (0 failed, 2 changed)" in first.stdout
    points = point_count(settings)

    (book_dir / "pruning.md").unlink()
    dry = run_cli(settings, str(book_dir), "--base-dir", str(tmp_path), "--prune", "--dry-run", "-q")
    assert dry.exit_code == 0
    assert "dry run" in dry.stdout and "1 files pruned" in dry.stdout and "would prune book/pruning.md" in dry.stdout
    assert point_count(settings) == points

    pruned = run_cli(settings, str(book_dir), "--base-dir", str(tmp_path), "--prune", "-q")
    assert pruned.exit_code == 0 and "1 files pruned" in pruned.stdout
    again = run_cli(settings, str(book_dir), "--base-dir", str(tmp_path), "--prune", "-q")
    assert "0 added, 0 updated" in again.stdout and "0 removed" in again.stdout


def test_cli_unchanged_reingest_does_not_load_the_model(
    settings: Settings, book_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ingest.cli

    loads: list[str] = []
    real_build = ingest.cli.build_embeddings

    def counting_build(config: Settings) -> Embeddings:
        loads.append(config.embedding_model)
        return real_build(config)

    monkeypatch.setattr(ingest.cli, "build_embeddings", counting_build)
    assert run_cli(settings, str(book_dir), "--base-dir", str(tmp_path), "-q").exit_code == 0
    assert len(loads) == 1
    again = run_cli(settings, str(book_dir), "--base-dir", str(tmp_path), "-q")
    assert again.exit_code == 0 and "2 unchanged" in again.stdout
    assert len(loads) == 1  # every file hash matched: the model was never needed

    (book_dir / "pruning.md").write_text("# Pruning\n\nCut plums in summer only.\n")
    changed = run_cli(settings, str(book_dir), "--base-dir", str(tmp_path), "-q")
    assert changed.exit_code == 0 and "1 updated" in changed.stdout and len(loads) == 2


def test_cli_dry_run_on_a_fresh_store_creates_nothing(settings: Settings, book_dir: Path, tmp_path: Path) -> None:
    result = run_cli(settings, str(book_dir), "--base-dir", str(tmp_path), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would change book/watering.md" in result.stdout and "dry run: would have 2 files" in result.stdout
    assert point_count(settings) is None  # not even the collection was created


def test_cli_delete_removes_one_source(settings: Settings, book_dir: Path, tmp_path: Path) -> None:
    run_cli(settings, str(book_dir), "--base-dir", str(tmp_path), "-q")
    before = point_count(settings)
    result = run_cli(settings, "--delete", "book/pruning.md", "-q")
    assert result.exit_code == 0, result.output
    assert before is not None and point_count(settings) == before - 1
    missing = run_cli(settings, "--delete", "book/nope.md", "-q")
    assert missing.exit_code == 1 and "book/nope.md: no such source" in missing.stderr


def test_cli_each_bad_input_gets_one_line_and_counts_as_failed(
    settings: Settings, book_dir: Path, tmp_path: Path
) -> None:
    (book_dir / "notes.txt").write_bytes(b"\x00\x01\x02binary")
    (book_dir / "empty.md").write_text("")
    (book_dir / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really")
    (book_dir / "gone.md").symlink_to(book_dir / "missing.md")  # broken, inside the folder
    unsupported = tmp_path / "cover.png"
    unsupported.write_bytes(b"\x89PNG")
    result = run_cli(settings, str(book_dir), str(unsupported), "--base-dir", str(tmp_path), "-q")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    reasons = {line.split(": ")[1]: line for line in lines}
    assert len(lines) == 5, result.stderr
    assert "binary" in reasons["book/notes.txt"]
    assert "empty" in reasons["book/empty.md"]
    assert "PDF" in reasons["book/broken.pdf"]
    assert "cannot read" in reasons["book/missing.md"]  # a broken link is named by where it points
    assert "unsupported file type" in reasons["cover.png"]
    assert "Traceback" not in result.output
    assert "(5 failed, 2 changed)" in result.stdout  # the good chapters still went in


def test_cli_progress_shows_files_and_chunks_on_stderr_and_no_rate_for_two_chunks(
    settings: Settings, book_dir: Path
) -> None:
    result = run_cli(settings, str(book_dir), "--base-dir", str(book_dir.parent), "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "chunks embedded" in result.stderr and "2/2 files" in result.stderr
    assert "/s" not in result.stderr  # two chunks make no rate (tests/test_ingest_progress.py: one shown past 64)
    assert "chunks embedded" not in result.stdout and "files" in result.stdout


@pytest.mark.skipif(bool(QDRANT_URL), reason="the lock is a property of the embedded store")
def test_cli_says_how_to_get_through_when_another_process_holds_the_store(
    qdrant: QdrantClient, settings: Settings, book_dir: Path
) -> None:
    # `qdrant` holds the on-disk store, like a running API server; the CLI runs as a real second process.
    env = {**os.environ, **cli_env(settings)}
    result = subprocess.run(
        [sys.executable, "-m", "ingest.cli", str(book_dir), "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "open in another process" in result.stderr
    assert "POST /admin/ingest" in result.stderr and "QDRANT_URL" in result.stderr


def test_cli_needs_paths_or_delete() -> None:
    result = CliRunner().invoke(ingest_main, [])
    assert result.exit_code == 2
    assert "--delete" in result.output


def test_cli_bad_setting_is_a_usage_error_naming_the_variable(book_dir: Path) -> None:
    result = CliRunner().invoke(ingest_main, [str(book_dir)], env={"CHUNK_SIZE": "lots"})
    assert result.exit_code == 2
    assert "CHUNK_SIZE" in result.output


def test_cli_path_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(ingest_main, [str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def stored_sources(settings: Settings) -> set[str]:
    client = build_qdrant_client(settings)
    try:
        points, _ = client.scroll(settings.qdrant_collection, limit=10_000, with_payload=True)
        return {str((p.payload or {})["metadata"]["source"]) for p in points}
    finally:
        client.close()


def test_cli_keys_sources_by_the_book_root_so_one_chapter_later_keeps_its_key(
    settings: Settings, book_dir: Path
) -> None:
    # The folder argument is the root, whatever folder the command runs from (here: the repository).
    first = run_cli(settings, str(book_dir), "-q")
    assert first.exit_code == 0, first.output
    assert stored_sources(settings) == {"watering.md", "pruning.md"}
    points = point_count(settings)

    (book_dir / "pruning.md").write_text("# Pruning\n\nCut plums in summer only, never in winter.\n")
    one = run_cli(settings, str(book_dir / "pruning.md"), "-q")
    assert one.exit_code == 0, one.output
    assert "1 files (0 failed, 1 changed)" in one.stdout
    assert stored_sources(settings) == {"watering.md", "pruning.md"}  # the same key: replaced, not duplicated
    assert point_count(settings) == points  # one chunk a chapter, as before
    assert "note:" not in one.stderr


def test_cli_a_first_single_file_ingest_takes_its_folder_as_root(settings: Settings, book_dir: Path) -> None:
    assert run_cli(settings, str(book_dir / "watering.md"), "-q").exit_code == 0
    assert run_cli(settings, str(book_dir), "-q").exit_code == 0
    assert stored_sources(settings) == {"watering.md", "pruning.md"}


def test_cli_refuses_a_path_outside_the_remembered_root_unless_told(
    settings: Settings, book_dir: Path, tmp_path: Path
) -> None:
    assert run_cli(settings, str(book_dir), "-q").exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "grafting.md").write_text("# Grafting\n\nWhip-and-tongue grafts join a scion to a rootstock.\n")
    refused = run_cli(settings, str(other), "-q")
    assert refused.exit_code == 2
    assert "outside the book root this collection remembers" in refused.output and "--root" in refused.output
    assert stored_sources(settings) == {"watering.md", "pruning.md"}

    moved = run_cli(settings, str(other), "--root", str(other), "-q")
    assert moved.exit_code == 0, moved.output
    assert f"the book root changes from {book_dir.resolve()} to {other.resolve()}" in moved.stderr
    assert stored_sources(settings) == {"watering.md", "pruning.md", "grafting.md"}


def test_cli_says_how_to_fix_a_store_keyed_from_another_folder(
    settings: Settings, book_dir: Path, tmp_path: Path
) -> None:
    from ingest.book_root import ROOT_KEY

    # A store from before the book root was remembered: keyed relative to the folder the CLI ran from.
    assert run_cli(settings, str(book_dir), "--base-dir", str(tmp_path), "-q").exit_code == 0
    client = build_qdrant_client(settings)
    client.update_collection(settings.qdrant_collection, metadata={ROOT_KEY: ""})
    client.close()
    assert stored_sources(settings) == {"book/watering.md", "book/pruning.md"}

    again = run_cli(settings, str(book_dir), "-q")
    assert again.exit_code == 0, again.output
    assert "2 stored source(s) are keyed from another folder" in again.stderr
    assert "'book/pruning.md', now 'pruning.md'" in again.stderr and "--prune" in again.stderr

    fixed = run_cli(settings, str(book_dir), "--prune", "-q")
    assert fixed.exit_code == 0 and "2 files pruned" in fixed.stdout
    assert stored_sources(settings) == {"watering.md", "pruning.md"}
    assert "note:" not in run_cli(settings, str(book_dir), "-q").stderr
