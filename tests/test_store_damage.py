"""A damaged embedded store is named (which file, what to do), never served as an empty book and never a
traceback: at API start-up, in /ready, and in rag-ingest. And a store write failing midway (a full disk) never
leaves a chapter partly served."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from click.testing import CliRunner
from httpx import ASGITransport, AsyncClient
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.errors import DependencyUnavailable, StoreDamaged
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import EmbeddedQdrantClient, build_qdrant_client, build_vector_store, ensure_collection
from ingest.cli import main as ingest_main
from ingest.indexer import Indexer, discover_files, source_filter
from rag_api.app import create_app
from rag_api.main import main as api_main
from rag_api.state import Overrides
from tests.conftest import QDRANT_URL, SAMPLE_CHAPTER, ingest_into

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(QDRANT_URL is not None, reason="the embedded store's files"),
]


def storage_of(settings: Settings) -> Path:
    return settings.qdrant_path / "collection" / settings.qdrant_collection / "storage.sqlite"


@pytest.fixture
def stored_book(settings: Settings, embeddings: LocalEmbeddings, book_dir: Path) -> Path:
    client = build_qdrant_client(settings)
    try:
        assert not ingest_into(client, embeddings, settings, book_dir).failed
    finally:
        client.close()
    assert storage_of(settings).stat().st_size > 0
    return book_dir


def delete_storage(settings: Settings) -> str:
    storage_of(settings).unlink()
    return "is missing"


def truncate_storage(settings: Settings) -> str:
    storage = storage_of(settings)
    data = storage.read_bytes()
    storage.write_bytes(data[: len(data) // 3])
    return "damaged"


def garble_a_point(settings: Settings) -> str:
    with sqlite3.connect(storage_of(settings)) as connection:
        connection.execute("UPDATE points SET point = ? WHERE rowid = (SELECT min(rowid) FROM points)", (b"garbage",))
    connection.close()
    return "cannot be read"


DAMAGES = [delete_storage, truncate_storage, garble_a_point]


@pytest.mark.parametrize("damage", DAMAGES)
def test_opening_a_damaged_store_names_the_file_and_the_fix(
    settings: Settings, stored_book: Path, damage: object
) -> None:
    what = damage(settings)  # type: ignore[operator]
    with pytest.raises(StoreDamaged) as failure:
        build_qdrant_client(settings)
    message = str(failure.value)
    assert what in message and "restore" in message.lower() and "rag-ingest" in message
    assert str(storage_of(settings)) in message


@pytest.mark.parametrize("damage", DAMAGES)
def test_rag_ingest_on_a_damaged_store_exits_1_with_the_message(
    settings: Settings, stored_book: Path, damage: object
) -> None:
    what = damage(settings)  # type: ignore[operator]
    env = {"QDRANT_PATH": str(settings.qdrant_path), "QDRANT_COLLECTION": settings.qdrant_collection}
    result = CliRunner().invoke(ingest_main, [str(stored_book), "-q"], env=env)
    assert result.exit_code == 1, result.output
    assert "damaged" in result.output and what in result.output
    assert ("Traceback" not in result.output and result.exception is None) or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("damage", [delete_storage, truncate_storage])
def test_rag_api_refuses_to_start_on_a_damaged_store(
    settings: Settings, stored_book: Path, damage: object, tmp_path: Path
) -> None:
    what = damage(settings)  # type: ignore[operator]
    env = {"QDRANT_PATH": str(settings.qdrant_path), "QDRANT_COLLECTION": settings.qdrant_collection}
    result = CliRunner().invoke(api_main, ["--port", "9"], env=env)
    assert result.exit_code == 1, result.output
    assert "damaged" in result.output and what in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("damage", DAMAGES)
async def test_ready_is_503_naming_the_damage_never_ok_with_zero_points(
    settings: Settings, embeddings: LocalEmbeddings, stored_book: Path, damage: object
) -> None:
    what = damage(settings)  # type: ignore[operator]
    app = create_app(settings, Overrides(embeddings=embeddings))
    async with LifespanManager(app) as manager:
        transport = ASGITransport(app=manager.app)
        async with AsyncClient(transport=transport, base_url="http://testserver") as http:
            ready = await http.get("/ready")
            assert ready.status_code == 503, ready.text
            detail = ready.json()["dependencies"]["qdrant"]["detail"]
            assert "damaged" in detail and what in detail
            search = await http.post("/search", json={"query": "watering young trees"})
            assert search.status_code == 503


async def test_ready_sees_a_storage_file_deleted_under_the_running_server(
    settings: Settings, embeddings: LocalEmbeddings, stored_book: Path
) -> None:
    app = create_app(settings, Overrides(embeddings=embeddings))
    async with LifespanManager(app) as manager:
        transport = ASGITransport(app=manager.app)
        async with AsyncClient(transport=transport, base_url="http://testserver") as http:
            assert (await http.get("/ready")).status_code == 200
            storage_of(settings).unlink()
            ready = await http.get("/ready")
            assert ready.status_code == 503 and "is missing" in ready.text


class DiskFullClient(EmbeddedQdrantClient):
    """A real embedded store that, once armed, writes only the first `room` points it is given and then fails
    as a full disk does (each point is persisted on its own in local mode)."""

    room: int | None = None

    def upsert(self, collection_name: str, points: Any, **kwargs: Any) -> Any:
        if self.room is None:
            return super().upsert(collection_name, points=points, **kwargs)
        fits, self.room = points[: self.room], max(self.room - len(points), 0)
        if fits:
            super().upsert(collection_name, points=fits, **kwargs)
        if len(fits) < len(points):
            raise OSError(28, "No space left on device")
        return None


def test_a_write_failing_midway_never_serves_part_of_a_chapter(
    settings: Settings, embeddings: LocalEmbeddings, book_dir: Path
) -> None:
    small = settings.model_copy(update={"chunk_size_unit": "chars", "chunk_size": 120, "chunk_overlap": 0})
    client = DiskFullClient(str(small.qdrant_path))
    try:
        assert not ingest_into(client, embeddings, small, book_dir).failed
        old_watering = stored_ids(client, small, "book/watering.md")
        sentences = [f"Sentence {n} about cider apples, pressed in October by the orchard keeper." for n in range(11)]
        (book_dir / "cider.md").write_text("# Cider\n\n" + "\n\n".join(sentences), encoding="utf-8")
        (book_dir / "watering.md").write_text(SAMPLE_CHAPTER.replace("twenty litres", "thirty litres"))
        client.room = 5  # the disk fills after five more points, midway through the chapters
        with pytest.raises(DependencyUnavailable):
            ensure_collection(client, small, embeddings.dimension)
            Indexer(client, embeddings, small, embeddings.count_tokens, batch_size=64).ingest(
                list(discover_files([book_dir])), book_dir.parent
            )
        client.room = None
        cider = stored_ids(client, small, "book/cider.md")
        assert len(cider) > 0  # some of the new chapter's chunks are on disk ...
        retriever = BookRetriever.from_settings(build_vector_store(client, small, embeddings), small)
        found = retriever.invoke("cider apples pressed in October", k=20, sources=["book/cider.md"])
        assert found == []  # ... but a chapter is served whole or not at all
        watering = retriever.invoke("how much water does a young tree need", k=20, sources=["book/watering.md"])
        assert watering and {d.id for d in watering} <= old_watering  # the previous complete version
        assert "thirty litres" not in str([d.page_content for d in watering])

        report = ingest_into(client, embeddings, small, book_dir)  # the next run completes it
        assert not report.failed
        retriever.forget_local_index()
        found = retriever.invoke("cider apples pressed in October", k=20, sources=["book/cider.md"])
        assert len(found) == len(stored_ids(client, small, "book/cider.md")) > len(cider)
    finally:
        client.close()


def stored_ids(client: QdrantClient, settings: Settings, source: str) -> set[str]:
    points, _ = client.scroll(settings.qdrant_collection, scroll_filter=source_filter(source), limit=1000)
    return {str(p.id) for p in points}
