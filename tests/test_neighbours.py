"""Neighbour passages (chains/neighbours.py): a passage whose section goes on in the next chunk is joined with it
when that chunk holds a sentence closer to the question, so a paraphrase whose answer sits in the second half of a
split section reaches the answer. Real model, real embedded Qdrant, a small book ingested with small chunks."""

from __future__ import annotations

from pathlib import Path

from langchain_core.documents import Document
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.neighbours import join_neighbours, join_texts, neighbours_filter
from chains.retrieval import BookRetriever
from chains.sentence_rescore import SENTENCE_KEY, encode
from chains.settings import Settings
from chains.vectorstore import METADATA_KEY, build_vector_store
from tests.conftest import ingest_into

# One section, long enough to be cut in two at 64 tokens: the first half is about the section's topic in the words
# a student uses, the answer (frost protection for blossom) is in the second half, in the book's own words.
CHAPTER = """# Spring in the orchard

## Blossom time

In spring the fruit trees flower, and a late frost is the great worry of the season: frost on the flowers of
apple, pear and plum trees can ruin a whole year's crop of fruit, since every ruined flower is a fruit lost.

Thin the young apples in early summer so the rest grow large. Drape horticultural fleece over small trees before
dusk on a cold clear night, and take it off next morning. Hang codling moth traps in May, and mulch the roots.

## Harvest

Pick apples when they come away with a gentle twist. Store only sound fruit in a cool, dark shed.
"""
# A student's words: none of "fleece", "drape", "dusk" or "cold clear night".
PARAPHRASE = "In spring, how do I keep a late frost from ruining my fruit trees' flowers?"
ANSWER = "horticultural fleece over small trees"


def _retriever(qdrant: QdrantClient, settings: Settings, embeddings: LocalEmbeddings, join: bool) -> BookRetriever:
    return BookRetriever(
        vector_store=build_vector_store(qdrant, settings, embeddings),
        k=1,
        sentence_rescore=settings.retrieval_sentence_rescore,
        join_neighbours=join,
    )


def test_a_paraphrase_reaches_the_answer_in_the_second_half_of_its_section(
    tmp_path: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    book = tmp_path / "orchard"
    book.mkdir()
    (book / "spring.md").write_text(CHAPTER, encoding="utf-8")
    small = settings.model_copy(update={"chunk_size": 64, "chunk_overlap": 0})
    assert not ingest_into(qdrant, embeddings, small, book).failed
    records, _ = qdrant.scroll(small.qdrant_collection, limit=100, with_payload=True)
    split = [r for r in records if (r.payload or {})[METADATA_KEY]["section"].endswith("Blossom time")]
    assert len(split) >= 2, "the section is cut into several chunks"

    before = _retriever(qdrant, small, embeddings, join=False).invoke(PARAPHRASE)
    assert ANSWER not in before[0].page_content, "today's first passage is the section's first half"
    after = _retriever(qdrant, small, embeddings, join=True).invoke(PARAPHRASE)
    assert ANSWER in after[0].page_content
    assert after[0].page_content.startswith(before[0].page_content.split("\n\n")[0])  # the same passage, grown
    assert after[0].metadata["joined"] == [before[0].metadata["chunk_index"] + 1]
    assert after[0].metadata["score"] == before[0].metadata["score"]  # its own cosine: the threshold is unchanged


def test_joined_chunks_write_the_paragraphs_they_share_once() -> None:
    assert join_texts("A.\n\nB.\n\nC.", "C.\n\nD.") == "A.\n\nB.\n\nC.\n\nD."
    assert join_texts("A.\n\nB.", "B.\n\nC.\n\nD.") == "A.\n\nB.\n\nC.\n\nD."
    assert join_texts("A.", "B.") == "A.\n\nB."  # no overlap: both whole


def _passage(index: int, section: str = "Ch > S") -> Document:
    return Document(f"text {index}", metadata={"source": "ch.md", "chunk_index": index, "section": section})


def _payload(vectors: list[list[float]]) -> dict[str, object]:
    return {SENTENCE_KEY: encode(vectors)}


def test_after_the_first_passages_only_a_neighbour_with_a_better_sentence_is_joined() -> None:
    query = [1.0, 0.0]
    # Passages 10 and 20 (ranks 1 and 2), each with a best sentence at cosine 0.6.
    payloads = [_payload([[0.6, 0.8]]), _payload([[0.6, 0.8]])]
    neighbours = [
        ({"source": "ch.md", "chunk_index": 11, "section": "Ch > S"}, "eleven", _payload([[0.9, 0.44]])),  # better
        ({"source": "ch.md", "chunk_index": 19, "section": "Ch > S"}, "nineteen", _payload([[0.1, 0.99]])),  # worse
        ({"source": "ch.md", "chunk_index": 21, "section": "Ch > Other"}, "other", _payload([[1.0, 0.0]])),  # section
    ]
    documents = join_neighbours([_passage(10), _passage(20)], payloads, neighbours, query, k=2, whole=0)
    assert documents[0].page_content == "text 10\n\neleven" and documents[0].metadata["joined"] == [11]
    assert documents[1].page_content == "text 20" and "joined" not in documents[1].metadata

    # The first passages take their same-section neighbours whatever their sentences; never another section's.
    documents = join_neighbours([_passage(10), _passage(20)], payloads, neighbours, query, k=2, whole=2)
    assert documents[1].page_content == "nineteen\n\ntext 20" and documents[1].metadata["joined"] == [19]


def test_a_lower_passage_next_to_a_higher_one_is_joined_into_it_and_the_next_candidate_moves_up() -> None:
    candidates = [_passage(10), _passage(30), _passage(11), _passage(50)]
    payloads = [_payload([[0.0, 1.0]])] * 4
    documents = join_neighbours(candidates, payloads, [], [1.0, 0.0], k=3, whole=1)
    assert [d.metadata["chunk_index"] for d in documents] == [10, 30, 50]
    assert documents[0].page_content == "text 10\n\ntext 11" and documents[0].metadata["joined"] == [11]
    # A neighbour ranked higher stays where it is: 11 (no better sentence than 10's) is not joined into 10, nor 10
    # back into 11.
    worse = [_payload([[0.9, 0.44]]), _payload([[0.5, 0.87]])]
    documents = join_neighbours([_passage(10), _passage(11)], worse, [], [1.0, 0.0], k=2, whole=0)
    assert [d.page_content for d in documents] == ["text 10", "text 11"]
    assert neighbours_filter([_passage(10)], METADATA_KEY) is not None
    assert neighbours_filter([Document("x", metadata={"source": "ch.md"})], METADATA_KEY) is None


def test_without_sentence_vectors_only_the_first_passages_are_joined() -> None:
    # A store ingested before the sentence vectors (or with RETRIEVAL_SENTENCE_RESCORE=0): no payload to compare.
    neighbours = [
        ({"source": "ch.md", "chunk_index": 11, "section": "Ch > S"}, "eleven", {}),
        ({"source": "ch.md", "chunk_index": 21, "section": "Ch > S"}, "twenty-one", {}),
    ]
    documents = join_neighbours([_passage(10), _passage(20)], [{}, {}], neighbours, [1.0, 0.0], k=2, whole=1)
    assert [d.page_content for d in documents] == ["text 10\n\neleven", "text 20"]
