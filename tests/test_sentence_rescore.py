"""Sentence re-scoring (chains/sentence_rescore.py): ingest stores each chunk's sentence vectors, and a paraphrase
that matches one sentence of its passage brings that passage first. Real model, real embedded Qdrant."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.highlights import split_sentences
from chains.retrieval import BookRetriever
from chains.sentence_rescore import (
    SENTENCE_KEY,
    applies_to,
    decode,
    encode,
    rescored_order,
    sentences_digest,
    sentences_of,
)
from chains.settings import Settings
from chains.vectorstore import build_vector_store
from tests.conftest import ingest_into

SAMPLE_BOOK = Path(__file__).resolve().parent.parent / "sample_book"
# From bench/questions/sample_book.jsonl: a student's words, none of them the passage's ("between leaf fall and
# bud break"); by the fused order alone another passage comes first.
PARAPHRASE = "What is the best time of year to put new fruit trees in the ground?"
ANSWER = "between leaf fall and bud break"


def test_sentence_vectors_survive_the_compact_payload() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(7, 384)).astype(np.float32)
    decoded = decode(encode(vectors))
    assert decoded is not None and decoded.shape == (7, 384)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.allclose((decoded * unit).sum(axis=1), 1.0, atol=0.01)  # int8 keeps each direction
    assert decode(None) is None and decode({"format": "other"}) is None and decode(encode([])) is None


def test_a_candidate_with_a_much_better_sentence_moves_up() -> None:
    # Fused scores favour 0 slightly; candidate 2's best sentence is far ahead of everyone's.
    assert rescored_order([1.0, 0.98, 0.97, 0.5], [0.40, 0.41, 0.80, 0.30])[0] == 2
    # Equal best sentences: the fused order stands.
    assert rescored_order([1.0, 0.9, 0.8], [0.5, 0.5, 0.5]) == [0, 1, 2]


def _book(tmp_path: Path, whole: bool = False) -> Path:
    """Two chapters of the sample book (or all five: the ranking test needs the book's own term statistics)."""
    folder = tmp_path / "orchard"
    if whole:
        shutil.copytree(SAMPLE_BOOK, folder)
        return folder
    folder.mkdir()
    for name in ("01-site-and-soil.md", "03-planting.md"):
        shutil.copy(SAMPLE_BOOK / name, folder / name)
    return folder


def test_ingest_stores_each_chunks_sentence_vectors(
    tmp_path: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    assert not ingest_into(qdrant, embeddings, settings, _book(tmp_path)).failed
    records, _ = qdrant.scroll(settings.qdrant_collection, limit=1000, with_payload=True)
    assert records
    for record in records:
        payload = record.payload or {}
        vectors = decode(payload[SENTENCE_KEY])
        sentences = sentences_of(str(payload["page_content"]))
        assert vectors is not None and len(vectors) == len(sentences) == len(split_sentences(payload["page_content"]))
        # The stored vector of a sentence is that sentence's embedding (as highlights would compute it).
        fresh = np.asarray(embeddings.embed_documents([sentences[0]])[0], dtype=np.float32)
        assert float(vectors[0] @ fresh) / float(np.linalg.norm(fresh)) > 0.99


class RecordingEmbeddings(LocalEmbeddings):
    """The session's real model (shared, not reloaded), recording every text given to `embed_documents`."""

    def __init__(self, real: LocalEmbeddings) -> None:  # no super().__init__: it would load the model again
        self.__dict__.update(real.__dict__)
        self.documents: list[str] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.documents.extend(texts)
        return super().embed_documents(texts)


def test_ingest_embeds_each_sentence_once_and_stores_the_same_vectors(
    tmp_path: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    recording = RecordingEmbeddings(embeddings)
    small = settings.model_copy(update={"chunk_size": 96, "chunk_overlap": 48})  # the sample book's sections cut
    assert not ingest_into(qdrant, recording, small, _book(tmp_path)).failed
    records, _ = qdrant.scroll(settings.qdrant_collection, limit=1000, with_payload=True)
    split = [sentences_of(str((r.payload or {})["page_content"])) for r in records]
    every = [sentence for sentences in split for sentence in sentences]
    assert len(set(every)) < len(every)  # overlapping chunks share sentences: without the dedupe, embedded twice
    embedded = Counter(recording.documents)
    assert set(every) <= embedded.keys()
    assert max(embedded.values()) == 1, [t for t, n in embedded.items() if n > 1][:3]
    # Stored exactly as without the dedupe: every chunk's sentences in one call, the shared ones twice.
    vectors = iter(embeddings.embed_documents(every))
    for record, sentences in zip(records, split, strict=True):
        stored = dict((record.payload or {})[SENTENCE_KEY])
        assert stored.pop("sentences") == sentences_digest(sentences)
        assert stored == encode([next(vectors) for _ in sentences])


def test_a_changed_chapter_reuses_the_stored_vectors_of_its_sentences(
    tmp_path: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    book = _book(tmp_path)
    small = settings.model_copy(update={"chunk_size": 96, "chunk_overlap": 48})  # many chunks a section
    assert not ingest_into(qdrant, embeddings, small, book).failed
    records, _ = qdrant.scroll(settings.qdrant_collection, limit=1000, with_payload=True)
    ids = {r.id for r in records}
    before = {s for r in records for s in sentences_of(str((r.payload or {})["page_content"]))}
    # A sentence added to a paragraph: its chunk is replaced by a new one holding the old sentences and the new.
    chapter = book / "03-planting.md"
    added = "Bring gloves, a spade and a watering can to the planting site before you start digging."
    chapter.write_text(
        chapter.read_text().replace("Planting takes an afternoon", f"{added} Planting takes an afternoon")
    )
    recording = RecordingEmbeddings(embeddings)
    assert not ingest_into(qdrant, recording, small, book).failed
    records, _ = qdrant.scroll(settings.qdrant_collection, limit=1000, with_payload=True)
    new = [r for r in records if r.id not in ids]
    kept = {s for r in new for s in sentences_of(str((r.payload or {})["page_content"]))} & before
    assert new and kept  # the new chunks hold sentences stored before
    assert added in recording.documents
    assert not kept & set(recording.documents)  # those are not embedded again
    for record in records:
        sentences = sentences_of(str((record.payload or {})["page_content"]))
        stored = dict((record.payload or {})[SENTENCE_KEY])
        assert stored.pop("sentences") == sentences_digest(sentences)
        assert stored == encode(embeddings.embed_documents(sentences))  # what embedding them again would store


def test_without_re_scoring_ingest_stores_no_sentence_vectors(
    tmp_path: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    off = settings.model_copy(update={"retrieval_sentence_rescore": 0})
    assert not ingest_into(qdrant, embeddings, off, _book(tmp_path)).failed
    records, _ = qdrant.scroll(off.qdrant_collection, limit=1000, with_payload=True)
    assert records and all(SENTENCE_KEY not in (r.payload or {}) for r in records)


@pytest.mark.integration
def test_a_paraphrase_finds_its_passage_first(
    tmp_path: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    assert not ingest_into(qdrant, embeddings, settings, _book(tmp_path, whole=True)).failed
    store = build_vector_store(qdrant, settings, embeddings)
    rescoring = BookRetriever.from_settings(store, settings, None)
    assert rescoring.sentence_rescore == 20  # the default
    plain = rescoring.model_copy(update={"sentence_rescore": 0})

    def first(retriever: BookRetriever) -> str:
        return " ".join(retriever.invoke(PARAPHRASE)[0].page_content.lower().split())

    assert ANSWER not in first(plain)  # what the fused order alone gives
    top = rescoring.invoke(PARAPHRASE)
    assert ANSWER in " ".join(top[0].page_content.lower().split())
    assert top[0].metadata["sentence_score"] > top[1].metadata["sentence_score"]


@pytest.mark.integration
def test_a_store_without_sentence_vectors_ranks_as_before(
    tmp_path: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    old = settings.model_copy(update={"retrieval_sentence_rescore": 0})  # ingested before re-scoring existed
    assert not ingest_into(qdrant, embeddings, old, _book(tmp_path)).failed
    store = build_vector_store(qdrant, settings, embeddings)
    rescoring = BookRetriever.from_settings(store, settings, None)
    plain = rescoring.model_copy(update={"sentence_rescore": 0})
    got = rescoring.invoke(PARAPHRASE)
    assert [d.page_content for d in got] == [d.page_content for d in plain.invoke(PARAPHRASE)]
    assert all("sentence_score" not in d.metadata for d in got)


def test_a_question_naming_an_identifier_keeps_the_fused_order() -> None:
    assert not applies_to("What does error ZX-4471 mean?")
    assert not applies_to("How do I use URLSession to download a file?")
    assert applies_to("What is the best time of year to put new fruit trees in the ground?")
    assert applies_to("What did Thoreau say about Concord?")  # a name is not an identifier
