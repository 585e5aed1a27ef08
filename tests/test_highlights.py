"""Highlights: the sentences that answer, as offsets into the passage, scored with the real embedding model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from chains.answer import build_answer_chain
from chains.embeddings import LocalEmbeddings
from chains.highlights import choose, highlight_passages, quote, split_sentences
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import build_vector_store
from tests.conftest import ingest_into
from tests.test_sentence_rescore import RecordingEmbeddings

PRUNING = (
    "Most pruning is done in late winter, while the trees are dormant and their shape is easy to see. Apples and "
    "pears are pruned then. Stone fruit is different: cherries and plums are pruned in summer, after harvest, "
    "because winter cuts let in silver leaf disease. Always cut just above an outward-facing bud."
)
PLANTING = (
    "Dig the hole twice as wide as the root ball but no deeper. Set the tree so that the graft union stays a "
    "hand's width above the soil. Backfill with the soil you dug out."
)


def test_sentences_keep_their_offsets_and_short_fragments_join_a_neighbour() -> None:
    text = "First sentence here. Ok. Then the third one, longer.\n\n- a list item\n- another list item"
    sentences = split_sentences(text)
    assert all(text[s.start : s.end] == s.text for s in sentences)
    assert sentences[0].text == "First sentence here. Ok."
    assert [s.text for s in sentences[-2:]] == ["- a list item", "- another list item"]


def test_choose_keeps_the_best_and_a_close_second_in_text_order() -> None:
    assert choose([0.2, 0.9, 0.86, 0.1], best_overall=0.9) == [1, 2]
    assert choose([0.2, 0.5, 0.1], best_overall=0.9) == [1]  # a weak passage still shows its best sentence


@pytest.mark.integration
def test_the_answering_sentence_is_highlighted(embeddings: LocalEmbeddings) -> None:
    question = "When should I prune cherry trees?"
    spans = highlight_passages(
        question, embeddings.embed_query(question), [PRUNING, PLANTING], embeddings.embed_documents
    )
    pruning, planting = spans
    assert all(0 <= start < end <= len(PRUNING) for start, end in pruning)
    assert "cherries and plums are pruned in summer" in quote(PRUNING, pruning)
    assert len(planting) == 1


def test_lexical_highlights_need_no_model() -> None:
    question = "When should I prune cherry trees?"
    (pruning,) = highlight_passages(question, [], [PRUNING], None)
    assert "cherries and plums are pruned in summer" in quote(PRUNING, pruning)


SAMPLE_BOOK = Path(__file__).resolve().parent.parent / "sample_book"
QUESTIONS = (
    "How deep should the planting hole be?",
    "What soil pH do apple trees like?",
    "When should bare-root trees be planted?",
    "How far apart should trees on dwarfing rootstock stand?",
)


def _orchard(tmp_path: Path) -> Path:
    folder = tmp_path / "orchard"
    folder.mkdir()
    for name in ("01-site-and-soil.md", "03-planting.md"):
        shutil.copy(SAMPLE_BOOK / name, folder / name)
    return folder


async def _answers_and_embedded(
    tmp_path: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings, ingest: Settings
) -> tuple[list[list[list[tuple[int, int]]]], list[list[list[tuple[int, int]]]], list[str]]:
    """Highlights of each question's answer (no chat model: they come with the sources), the highlights of the
    same passages with every sentence embedded for the answer (as before stored vectors were used), and the texts
    the answers gave to `embed_documents`."""
    assert not ingest_into(qdrant, embeddings, ingest, _orchard(tmp_path)).failed
    recording = RecordingEmbeddings(embeddings)
    retriever = BookRetriever.from_settings(build_vector_store(qdrant, settings, recording), settings, None)
    chain = build_answer_chain(retriever, None, settings)
    got, before = [], []
    for question in QUESTIONS:
        sources = (await chain.ainvoke(question))["sources"]
        assert sources
        got.append([s.highlights for s in sources])
        texts = [s.text for s in sources]
        before.append(highlight_passages(question, embeddings.embed_query(question), texts, embeddings.embed_documents))
    return got, before, recording.documents


@pytest.mark.integration
async def test_an_answer_uses_the_stored_sentence_vectors_and_embeds_no_sentence(
    tmp_path: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    got, before, embedded = await _answers_and_embedded(tmp_path, settings, qdrant, embeddings, settings)
    assert embedded == []
    # The int8 stored vectors choose the sentences the float ones do, but for a near tie: on this book one passage
    # of the eight, whose two candidate sentences score 0.473 and 0.457 against the question.
    passages = [(mine, theirs) for g, b in zip(got, before, strict=True) for mine, theirs in zip(g, b, strict=True)]
    assert len(passages) >= len(QUESTIONS)
    assert sum(mine == theirs for mine, theirs in passages) >= len(passages) - 1


@pytest.mark.integration
async def test_a_store_without_sentence_vectors_embeds_the_sentences_as_before(
    tmp_path: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    old = settings.model_copy(update={"retrieval_sentence_rescore": 0})  # ingested with no sentence vectors
    got, before, embedded = await _answers_and_embedded(tmp_path, settings, qdrant, embeddings, old)
    assert embedded  # the passages' sentences, embedded for the answers
    assert got == before


@pytest.mark.integration
async def test_passages_joined_with_their_neighbours_use_the_neighbours_stored_vectors_too(
    tmp_path: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    small = settings.model_copy(update={"chunk_size": 64, "chunk_overlap": 16})  # sections split into chunks
    got, before, embedded = await _answers_and_embedded(tmp_path, small, qdrant, embeddings, small)
    retriever = BookRetriever.from_settings(build_vector_store(qdrant, small, embeddings), small, None)
    joined = [d for q in QUESTIONS for d in retriever.invoke(q) if d.metadata.get("joined")]
    assert joined  # the case under test: passages that are more than their own chunk
    assert embedded == []  # every sentence of a joined passage came from its chunks' stored vectors
    assert got == before
