"""A damaged embedded store from before the edge engine (qdrant-client local-mode files, moved into the engine on
the first open) is named (which file, what to do), never served as an empty book, never half-migrated and never a
traceback: at API start-up, in /ready, and in rag-ingest."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from click.testing import CliRunner
from httpx import ASGITransport, AsyncClient
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.errors import StoreDamaged
from chains.settings import Settings
from chains.vectorstore import build_qdrant_client
from ingest.cli import main as ingest_main
from rag_api.app import create_app
from rag_api.main import main as api_main
from rag_api.state import Overrides
from tests.conftest import QDRANT_URL, ingest_into

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(QDRANT_URL is not None, reason="the embedded store's files"),
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant"),  # the old store
]


def storage_of(settings: Settings) -> Path:
    return settings.qdrant_path / "collection" / settings.qdrant_collection / "storage.sqlite"


@pytest.fixture
def stored_book(settings: Settings, embeddings: LocalEmbeddings, book_dir: Path) -> Path:
    """The book, ingested by the indexer into a local-mode store (what the previous version kept on disk)."""
    client = QdrantClient(path=str(settings.qdrant_path))
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
    assert (settings.qdrant_path / "meta.json").exists()  # nothing moved aside ...
    assert not (settings.qdrant_path / "edge" / settings.qdrant_collection).exists()  # ... nor half-copied


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
