"""A damaged store of Qdrant's engine (files under QDRANT_PATH/edge/<collection> cut short, garbage in its WAL, a file
missing) is named, with the store's path, what looks wrong and what to do, at API start-up, in /ready and /search,
and by rag-ingest: never a Rust panic, a traceback or an empty book, and nothing of the user's files is changed."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from click.testing import CliRunner
from httpx import ASGITransport, AsyncClient

from chains.embeddings import LocalEmbeddings
from chains.errors import StoreDamaged
from chains.settings import Settings
from chains.store_migration import BACKUP
from chains.vectorstore import build_qdrant_client
from ingest.cli import main as ingest_main
from rag_api.app import create_app
from rag_api.main import main as api_main
from rag_api.state import Overrides
from tests.conftest import QDRANT_URL, ingest_into

pytestmark = [pytest.mark.integration, pytest.mark.skipif(QDRANT_URL is not None, reason="the embedded store's files")]


def collection_dir(settings: Settings) -> Path:
    return settings.qdrant_path / "edge" / settings.qdrant_collection


def segment(settings: Settings) -> Path:
    segments = sorted((collection_dir(settings) / "segments").iterdir())
    assert segments
    return segments[0]


def fingerprint(settings: Settings) -> dict[str, str]:
    """Every file of the store and a hash of its bytes: what must not change when a damage is reported. The
    engine folds a segment's payload journals (`tracker_journal.dat`) into their storage as it opens the segment,
    before it meets a damaged WAL: its own bookkeeping (the storage files, compared here, stay the same)."""
    return {
        str(p.relative_to(settings.qdrant_path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(settings.qdrant_path.rglob("*"))
        if p.is_file() and p.name not in (".lock", "tracker_journal.dat")
    }


@pytest.fixture
def stored_book(settings: Settings, embeddings: LocalEmbeddings, book_dir: Path) -> Path:
    """The book, ingested into the engine and the store closed (as a stopped server leaves it)."""
    client = build_qdrant_client(settings)
    try:
        assert not ingest_into(client, embeddings, settings, book_dir).failed
    finally:
        client.close()
    return book_dir


def cut_the_vectors_short(settings: Settings) -> str:
    """A segment file truncated (a full disk, a copy cut off): the engine would open it and fail searches later."""
    vectors = next((segment(settings) / "vector_storage-dense").rglob("chunk_0.mmap"))
    vectors.write_bytes(vectors.read_bytes()[:4096])
    return "cut short"


def garbage_in_the_wal(settings: Settings) -> str:
    wal = sorted((collection_dir(settings) / "wal").glob("open-*"))[0]
    noise = random.Random(7).randbytes(8192)
    with wal.open("r+b") as handle:
        handle.write(noise)
    return "cannot be opened"


def a_segment_file_missing(settings: Settings) -> str:
    """`version.info` gone: the engine alone would open the segment as no segment at all, an empty book."""
    (segment(settings) / "version.info").unlink()
    return "is missing"


def the_segment_state_missing(settings: Settings) -> str:
    (segment(settings) / "segment.json").unlink()
    return "is missing"


DAMAGES: list[Callable[[Settings], str]] = [
    cut_the_vectors_short,
    garbage_in_the_wal,
    a_segment_file_missing,
    the_segment_state_missing,
]


def assert_names_it(message: str, settings: Settings, what: str) -> None:
    assert "damaged" in message and what in message, message
    assert str(settings.qdrant_path) in message and "rag-ingest" in message and "Traceback" not in message
    assert "panicked" not in message


@pytest.mark.parametrize("damage", DAMAGES)
def test_opening_a_damaged_engine_store_names_it_and_changes_nothing(
    settings: Settings, stored_book: Path, damage: Callable[[Settings], str]
) -> None:
    what = damage(settings)
    before = fingerprint(settings)
    with pytest.raises(StoreDamaged) as failure:
        build_qdrant_client(settings)
    assert_names_it(str(failure.value), settings, what)
    assert f"mv {collection_dir(settings)} {collection_dir(settings)}.damaged" in str(failure.value)
    assert fingerprint(settings) == before  # nothing moved, deleted or rewritten


def test_the_fix_names_the_local_mode_backup_when_there_is_one(settings: Settings, stored_book: Path) -> None:
    (settings.qdrant_path / BACKUP).mkdir()
    a_segment_file_missing(settings)
    with pytest.raises(StoreDamaged, match="local-mode-backup holds the store as it was before"):
        build_qdrant_client(settings)


@pytest.mark.parametrize("damage", DAMAGES)
def test_rag_ingest_on_a_damaged_engine_store_exits_1_with_the_message(
    settings: Settings, stored_book: Path, damage: Callable[[Settings], str]
) -> None:
    what = damage(settings)
    before = fingerprint(settings)
    env = {"QDRANT_PATH": str(settings.qdrant_path), "QDRANT_COLLECTION": settings.qdrant_collection}
    result = CliRunner().invoke(ingest_main, [str(stored_book), "-q"], env=env)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert_names_it(result.output, settings, what)
    assert fingerprint(settings) == before


@pytest.mark.parametrize("damage", DAMAGES)
def test_rag_api_refuses_to_start_on_a_damaged_engine_store(
    settings: Settings, stored_book: Path, damage: Callable[[Settings], str]
) -> None:
    what = damage(settings)
    env = {"QDRANT_PATH": str(settings.qdrant_path), "QDRANT_COLLECTION": settings.qdrant_collection}
    result = CliRunner().invoke(api_main, ["--port", "9"], env=env)
    assert result.exit_code == 1, result.output
    assert_names_it(result.output, settings, what)


@pytest.mark.parametrize("damage", DAMAGES)
async def test_ready_and_search_are_503_naming_the_damage(
    settings: Settings, embeddings: LocalEmbeddings, stored_book: Path, damage: Callable[[Settings], str]
) -> None:
    what = damage(settings)
    app = create_app(settings, Overrides(embeddings=embeddings))
    async with LifespanManager(app) as manager:
        transport = ASGITransport(app=manager.app)
        async with AsyncClient(transport=transport, base_url="http://testserver") as http:
            ready = await http.get("/ready")
            assert ready.status_code == 503, ready.text
            assert_names_it(ready.json()["dependencies"]["qdrant"]["detail"], settings, what)
            search = await http.post("/search", json={"query": "watering young trees"})
            assert search.status_code == 503, search.text


def test_a_store_that_was_not_closed_cleanly_still_opens_and_a_clean_one_reopens(
    settings: Settings, stored_book: Path
) -> None:
    """The record a clean close leaves is checked once and dropped on open, so that a process killed later (its
    writes not recorded) does not make the next open report damage; reopening a clean store works."""
    for _ in range(2):
        client = build_qdrant_client(settings)
        try:
            assert client.count(settings.qdrant_collection).count > 0
        finally:
            client.close()
    client = build_qdrant_client(settings)
    layout = (collection_dir(settings) / "bookrag-collection.json").read_text(encoding="utf-8")
    assert '"closed"' not in layout  # open: no record (a kill now leaves none)
    client.close()
