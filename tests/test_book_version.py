"""What the service reads from the whole book once and keeps (the chapter catalogue, the vocabulary) is read again
whenever the stored book changes, also when another process changed it without a word (`book_version`); and a
request the embedded engine refuses is not reported as a damaged store."""

from __future__ import annotations

from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from chains.catalogue import BookCatalogue
from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from chains.vectorstore import VISIBLE, book_version
from tests.conftest import QDRANT_URL, ingest_into

pytestmark = pytest.mark.integration


def test_a_chapter_renamed_elsewhere_with_as_many_chunks_reaches_the_catalogue(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    assert not ingest_into(qdrant, embeddings, settings, book_dir).failed
    catalogue = BookCatalogue(settings.qdrant_collection)
    assert "Pruning" in catalogue.current(qdrant).chapters
    before = book_version(qdrant, settings.qdrant_collection)
    pruning = book_dir / "pruning.md"
    pruning.write_text(pruning.read_text(encoding="utf-8").replace("# Pruning", "# Pruning and Training"), "utf-8")
    assert not ingest_into(qdrant, embeddings, settings, book_dir).failed  # as an ingest in another process would
    after = book_version(qdrant, settings.qdrant_collection)
    assert after[0] == before[0] and after != before  # as many points, another book
    chapters = catalogue.current(qdrant).chapters
    assert "Pruning and Training" in chapters and "Pruning" not in chapters


@pytest.mark.skipif(bool(QDRANT_URL), reason="the embedded engine's own errors")
def test_a_request_the_engine_refuses_is_a_request_error_not_a_damaged_store(
    qdrant: QdrantClient, indexed_book: Path, settings: Settings
) -> None:
    with pytest.raises(ValueError, match="refused the request: No appropriate index") as caught:
        qdrant.facet(settings.qdrant_collection, key="metadata.title", facet_filter=VISIBLE, limit=10)
    assert "damaged" not in str(caught.value)
