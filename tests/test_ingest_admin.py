"""`POST /admin/ingest`: ingest through the running service, which holds the store; guarded by an admin key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from httpx import AsyncClient
from pydantic import SecretStr
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from tests.conftest import app_client, vocabulary_ready

pytestmark = pytest.mark.integration

ADMIN_KEY = "admin-key-0123456789abcdef"
ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture
def admin_settings(settings: Settings, book_dir: Path) -> Settings:
    return settings.model_copy(update={"ingest_root": book_dir.parent, "admin_api_keys": [SecretStr(ADMIN_KEY)]})


@pytest.fixture
async def client(
    admin_settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> AsyncIterator[AsyncClient]:
    async for _, http in app_client(admin_settings, embeddings, qdrant):
        yield http


async def test_admin_ingest_makes_the_book_searchable_and_is_incremental(client: AsyncClient) -> None:
    response = await client.post("/admin/ingest", json={"paths": ["book"]}, headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["failed"] == 0 and body["added"] >= 2
    assert {f["source"] for f in body["files"]} == {"book/watering.md", "book/pruning.md"}
    found = await client.post("/search", json={"query": "How much water does a young tree need?", "k": 1})
    assert "twenty litres" in found.json()["results"][0]["text"]

    again = (await client.post("/admin/ingest", json={"paths": ["book"]}, headers=ADMIN)).json()
    assert again["added"] == again["updated"] == again["removed"] == 0 and again["unchanged"] == body["added"]


async def test_admin_ingest_dry_run_delete_and_failed_files(client: AsyncClient, book_dir: Path) -> None:
    (book_dir / "empty.md").write_text("")
    dry = (await client.post("/admin/ingest", json={"paths": ["book"], "dry_run": True}, headers=ADMIN)).json()
    assert dry["dry_run"] and dry["added"] >= 2 and dry["failed"] == 1
    health = (await client.get("/health")).json()
    assert health["points"] == 0

    await client.post("/admin/ingest", json={"paths": ["book"]}, headers=ADMIN)
    deleted = await client.post("/admin/ingest", json={"delete": ["book/pruning.md"]}, headers=ADMIN)
    assert deleted.status_code == 200 and deleted.json()["removed"] >= 1


@pytest.mark.parametrize("path", ["../..", "/etc", "book/../../outside"])
async def test_admin_ingest_refuses_paths_outside_the_root(client: AsyncClient, path: str) -> None:
    response = await client.post("/admin/ingest", json={"paths": [path]}, headers=ADMIN)
    assert response.status_code == 400
    assert "outside INGEST_ROOT" in response.json()["error"]["message"]


async def test_admin_ingest_needs_an_admin_key(client: AsyncClient) -> None:
    assert (await client.post("/admin/ingest", json={"paths": ["book"]})).status_code == 401
    wrong = await client.post("/admin/ingest", json={"paths": ["book"]}, headers={"X-API-Key": "x" * 20})
    assert wrong.status_code == 403


async def test_admin_ingest_is_off_without_ingest_root(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    closed = settings.model_copy(update={"admin_api_keys": [SecretStr(ADMIN_KEY)]})
    async for _, http in app_client(closed, embeddings, qdrant):
        response = await http.post("/admin/ingest", json={"paths": ["book"]}, headers=ADMIN)
        assert response.status_code == 404
        assert "INGEST_ROOT" in response.json()["error"]["message"]


@pytest.fixture
def real_book_dir(book_dir: Path) -> Path:
    return book_dir.resolve()


async def test_admin_ingest_keys_by_ingest_root_which_the_collection_remembers(
    client: AsyncClient, qdrant: QdrantClient, admin_settings: Settings, real_book_dir: Path
) -> None:
    from ingest.book_root import ROOT_KEY, remembered_root

    book_dir = real_book_dir
    first = (await client.post("/admin/ingest", json={"paths": ["book/watering.md"]}, headers=ADMIN)).json()
    assert [f["source"] for f in first["files"]] == ["book/watering.md"] and first["notes"] == []
    assert remembered_root(qdrant, admin_settings.qdrant_collection) == book_dir.parent

    # A collection whose remembered root is another folder (a CLI ingest elsewhere): the response says so.
    qdrant.update_collection(admin_settings.qdrant_collection, metadata={ROOT_KEY: str(book_dir)})
    moved = (await client.post("/admin/ingest", json={"paths": ["book"]}, headers=ADMIN)).json()
    assert any(f"the book root changes from {book_dir} to {book_dir.parent}" in n for n in moved["notes"])
    assert remembered_root(qdrant, admin_settings.qdrant_collection) == book_dir.parent


async def test_a_chapter_replaced_through_the_server_is_in_the_books_vocabulary_at_once(
    admin_settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, book_dir: Path
) -> None:
    """A replaced chapter can leave the point count as it was, which alone would keep the old vocabulary: the
    term check would go on refusing a name the book now has."""
    question = {"question": "How do the pruning shears from Felco keep the cut clean?"}
    async for app, http in app_client(admin_settings, embeddings, qdrant):
        first = (await http.post("/admin/ingest", json={"paths": ["book"]}, headers=ADMIN)).json()
        points = first["added"]
        await vocabulary_ready(app, qdrant)
        assert (await http.post("/ask", json=question)).json()["mode"] == "not_in_book"  # no "Felco" in the book

        pruning = book_dir / "pruning.md"
        pruning.write_text(pruning.read_text().replace("cutting just", "with Felco pruning shears, cutting just"))
        again = (await http.post("/admin/ingest", json={"paths": ["book"]}, headers=ADMIN)).json()
        assert again["updated"] + again["added"] >= 1 and (await http.get("/health")).json()["points"] == points
        await vocabulary_ready(app, qdrant)
        assert (await http.post("/ask", json=question)).json()["mode"] != "not_in_book"
