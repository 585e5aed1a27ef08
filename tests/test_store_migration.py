"""An embedded store from the previous version (qdrant-client local-mode files) moves into Qdrant's engine on the
first open (chains/store_migration.py): every point with its vectors and payload, the old files kept aside, one
clear log line; a store that cannot be moved is left exactly as it was, with a message saying what to do.

The old store is real: the project's indexer writing into qdrant-client's local mode, as the previous version did.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from chains.edge_client import EdgeClient
from chains.embeddings import LocalEmbeddings
from chains.errors import DependencyUnavailable, StoreDamaged
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.store_migration import BACKUP
from chains.vectorstore import build_qdrant_client, build_vector_store
from tests.conftest import QDRANT_URL, ingest_into

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(QDRANT_URL is not None, reason="the embedded store's files"),
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant"),  # the old store
]


def everything(client: QdrantClient, name: str) -> dict[str, tuple[object, object]]:
    """Every point of `name`: id -> (payload, vectors), read through the public API."""
    points, offset = client.scroll(name, limit=10_000, with_payload=True, with_vectors=True)
    assert offset is None
    return {str(p.id): (p.payload, p.vector) for p in points}


@pytest.fixture
def old_store(settings: Settings, embeddings: LocalEmbeddings, book_dir: Path) -> dict[str, tuple[object, object]]:
    """The book ingested by the indexer into local mode at QDRANT_PATH, plus a second collection; returns the
    book's points as local mode reads them."""
    client = QdrantClient(path=str(settings.qdrant_path))
    try:
        assert not ingest_into(client, embeddings, settings, book_dir).failed
        other = settings.model_copy(update={"qdrant_collection": "other_book"})
        assert not ingest_into(client, embeddings, other, book_dir / "pruning.md").failed
        return everything(client, settings.qdrant_collection)
    finally:
        client.close()


def test_an_old_store_is_moved_into_the_engine_with_every_point_and_kept_aside(
    settings: Settings,
    embeddings: LocalEmbeddings,
    old_store: dict[str, tuple[object, object]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="chains.store_migration"):
        client = build_qdrant_client(settings)
    try:
        assert isinstance(client, EdgeClient)
        moved = everything(client, settings.qdrant_collection)
        assert set(moved) == set(old_store) and len(moved) >= 2
        for key, (payload, vectors) in old_store.items():
            assert moved[key][0] == payload
            assert isinstance(vectors, dict) and isinstance(moved[key][1], dict)
            assert moved[key][1]["dense"] == pytest.approx(vectors["dense"], abs=1e-6)
            sparse, old = moved[key][1]["sparse"], vectors["sparse"]  # the same terms with the same weights
            assert sparse.indices == old.indices and sparse.values == pytest.approx(old.values, rel=1e-6)
        assert client.count("other_book").count > 0  # every collection, not only the configured one
        retriever = BookRetriever.from_settings(build_vector_store(client, settings, embeddings), settings)
        assert retriever.invoke("How much water does a young tree need?", k=1)[0].metadata["source"] == (
            "book/watering.md"
        )
    finally:
        client.close()
    message = " ".join(r.getMessage() for r in caplog.records)
    backup = settings.qdrant_path / BACKUP
    assert "local mode" in message and f"{len(old_store)} points" in message and str(backup) in message
    assert " s:" in message  # how long it took
    assert not (settings.qdrant_path / "meta.json").exists()
    assert (backup / "meta.json").exists() and (backup / "collection" / settings.qdrant_collection).is_dir()
    kept = QdrantClient(path=str(backup))  # the old files still open as they were
    try:
        assert set(everything(kept, settings.qdrant_collection)) == set(old_store)
    finally:
        kept.close()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="chains.store_migration"):
        again = build_qdrant_client(settings)  # the second open moves nothing
    try:
        assert again.count(settings.qdrant_collection).count == len(old_store)
    finally:
        again.close()
    assert not caplog.records


def test_an_old_store_held_by_a_running_older_version_is_left_as_it_is(
    settings: Settings, old_store: dict[str, tuple[object, object]]
) -> None:
    older = QdrantClient(path=str(settings.qdrant_path))  # local mode locks its folder, as the old server did
    try:
        with pytest.raises(DependencyUnavailable, match=r"open in another process.*Stop that process"):
            build_qdrant_client(settings)
    finally:
        older.close()
    assert (settings.qdrant_path / "meta.json").exists()
    assert not (settings.qdrant_path / "edge" / settings.qdrant_collection).exists()
    client = build_qdrant_client(settings)  # once it is stopped, the move goes through
    try:
        assert client.count(settings.qdrant_collection).count == len(old_store)
    finally:
        client.close()


def test_a_collection_in_both_stores_with_other_counts_is_refused_and_nothing_changes(
    settings: Settings, embeddings: LocalEmbeddings, old_store: dict[str, tuple[object, object]], book_dir: Path
) -> None:
    """An engine collection made by hand (or by the opt-in engine of the previous version) beside the old files:
    which one is the book is the user's call, so neither is touched."""
    (settings.qdrant_path / "meta.json").rename(settings.qdrant_path / "meta.json.aside")
    engine = build_qdrant_client(settings)
    try:
        assert not ingest_into(engine, embeddings, settings, book_dir / "pruning.md").failed
    finally:
        engine.close()
    (settings.qdrant_path / "meta.json.aside").rename(settings.qdrant_path / "meta.json")
    with pytest.raises(StoreDamaged, match=r"twice.*Nothing was changed"):
        build_qdrant_client(settings)
    assert (settings.qdrant_path / "meta.json").exists()
    assert not (settings.qdrant_path / BACKUP).exists()
