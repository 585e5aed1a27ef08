"""Neighbour passages (chains/neighbours.py): a passage whose section goes on in the next chunk is joined with it
when that chunk holds a sentence closer to the question, so a paraphrase whose answer sits in the second half of a
split section reaches the answer. Real model, real embedded Qdrant, a small book ingested with small chunks."""

from __future__ import annotations

import itertools
from pathlib import Path

from langchain_core.documents import Document
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.neighbours import NEARBY_SPAN, join_neighbours, join_texts, neighbour_chunks
from chains.retrieval import BookRetriever
from chains.sentence_rescore import SENTENCE_KEY, encode
from chains.settings import Settings
from chains.vectorstore import METADATA_KEY, build_vector_store
from ingest.loaders import Block, LoadedDocument
from ingest.splitter import SplitOptions, approximate_tokens, split_document
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


def _small_chunked_book(
    tmp_path: Path, qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, chapter: str, section: str
) -> tuple[Settings, list[int]]:
    """A one-chapter book ingested at 64-token chunks: its settings and the chunk indexes of `section`."""
    book = tmp_path / "orchard"
    book.mkdir()
    (book / "chapter.md").write_text(chapter, encoding="utf-8")
    small = settings.model_copy(update={"chunk_size": 64, "chunk_overlap": 0})
    assert not ingest_into(qdrant, embeddings, small, book).failed
    records, _ = qdrant.scroll(small.qdrant_collection, limit=100, with_payload=True)
    metadata = [(r.payload or {})[METADATA_KEY] for r in records]
    return small, sorted(m["chunk_index"] for m in metadata if m["section"].endswith(section))


def test_a_paraphrase_reaches_the_answer_in_the_second_half_of_its_section(
    tmp_path: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    small, split = _small_chunked_book(tmp_path, qdrant, embeddings, settings, CHAPTER, "Blossom time")
    assert len(split) >= 2, "the section is cut into several chunks"

    before = _retriever(qdrant, small, embeddings, join=False).invoke(PARAPHRASE)
    assert ANSWER not in before[0].page_content, "today's first passage is the section's first half"
    after = _retriever(qdrant, small, embeddings, join=True).invoke(PARAPHRASE)
    assert ANSWER in after[0].page_content
    assert after[0].page_content.startswith(before[0].page_content.split("\n\n")[0])  # the same passage, grown
    assert after[0].metadata["joined"] == [before[0].metadata["chunk_index"] + 1]
    assert after[0].metadata["score"] == before[0].metadata["score"]  # no joined chunk was a closer candidate


def test_joined_chunks_write_the_paragraphs_they_share_once() -> None:
    assert join_texts("A.\n\nB.\n\nC.", "C.\n\nD.") == "A.\n\nB.\n\nC.\n\nD."
    assert join_texts("A.\n\nB.", "B.\n\nC.\n\nD.") == "A.\n\nB.\n\nC.\n\nD."
    assert join_texts("A.", "B.") == "A.\n\nB."  # no overlap: both whole


def test_a_long_paragraphs_last_sentences_repeated_by_the_next_chunk_are_written_once() -> None:
    first = "Frost is the worry of spring. Fleece keeps the blossom warm on a cold night."
    second = "Fleece keeps the blossom warm on a cold night. Take it off in the morning."
    assert join_texts(first, second) == (
        "Frost is the worry of spring. Fleece keeps the blossom warm on a cold night. Take it off in the morning."
    )
    # A repeat shorter than a sentence's worth, or not from a word's start, may be chance: both are kept whole.
    assert join_texts("Prune in May.", "May. Then wait.") == "Prune in May.\n\nMay. Then wait."
    assert join_texts("It lies in the upper meadow", "meadow field by the wall") == (
        "It lies in the upper meadow\n\nmeadow field by the wall"
    )


def test_the_splitters_chunks_of_one_long_paragraph_join_back_into_it() -> None:
    # Mill-style paragraphs run over several chunks; a passage joined from them must read as the paragraph did,
    # each sentence once (a reader saw sentences twice, and the extractive answer quoted them twice).
    paragraph = " ".join(
        f"Sentence {i} says that liberty of opinion number {i} matters to the whole of society." for i in range(40)
    )
    document = LoadedDocument(Path("liberty.md"), "Liberty", [Block("heading", "Liberty", 1), Block("text", paragraph)])
    chunks = split_document(document, "liberty.md", approximate_tokens, SplitOptions(60, 20, min_section_tokens=1))
    bodies = [c.text.split("\n\n", 1)[1] if c.text.startswith("#") else c.text for c in chunks]
    assert len(bodies) > 3
    assert any(b.split(". ")[0] in a for a, b in itertools.pairwise(bodies))  # the splitter does repeat
    text = bodies[0]
    for body in bodies[1:]:
        text = join_texts(text, body)
    assert " ".join(text.split()) == paragraph  # every sentence once, in order (a cut with no repeat is a break)


def _metadata(index: int, section: str) -> dict[str, object]:
    path = section.split(" > ")
    return {"source": "ch.md", "chunk_index": index, "section": section, "chapter": path[0], "heading_path": path}


def _passage(index: int, section: str = "Ch > S") -> Document:
    return Document(f"text {index}", metadata=_metadata(index, section))


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
    assert neighbour_chunks([_passage(10)]) == {("ch.md", 9), ("ch.md", 11)}
    assert neighbour_chunks([Document("x", metadata={"source": "ch.md"})]) == set()


def test_without_sentence_vectors_only_the_first_passages_are_joined() -> None:
    # A store ingested before the sentence vectors (or with RETRIEVAL_SENTENCE_RESCORE=0): no payload to compare.
    neighbours = [
        ({"source": "ch.md", "chunk_index": 11, "section": "Ch > S"}, "eleven", {}),
        ({"source": "ch.md", "chunk_index": 21, "section": "Ch > S"}, "twenty-one", {}),
    ]
    documents = join_neighbours([_passage(10), _passage(20)], [{}, {}], neighbours, [1.0, 0.0], k=2, whole=1)
    assert [d.page_content for d in documents] == ["text 10\n\neleven", "text 20"]


def _neighbour(index: int, section: str = "Ch > S") -> tuple[dict[str, object], str, dict[str, object]]:
    return _metadata(index, section), f"text {index}", _payload([[0.0, 1.0]])


def test_the_first_passage_takes_its_whole_section_when_the_section_is_short() -> None:
    # Section S is chunks 7..11; passage 9 ranks first, 11 (of the same section) third, 30 (elsewhere) second.
    section = [_neighbour(i) for i in (7, 8, 10, 11)] + [_neighbour(6, "Ch > Before"), _neighbour(12, "Ch > After")]
    candidates = [_passage(9), _passage(30, "Other"), _passage(11), _passage(40, "Other")]
    payloads = [_payload([[0.0, 1.0]])] * 4
    documents = join_neighbours(candidates, payloads, section, [1.0, 0.0], k=3, whole=0, section_up_to=8)
    first = documents[0]
    assert first.page_content == "\n\n".join(f"text {i}" for i in (7, 8, 9, 10, 11))  # in book order, no other section
    assert first.metadata["joined"] == [7, 8, 10, 11]
    assert [d.metadata["chunk_index"] for d in documents] == [9, 30, 40]  # 11 was joined: the next one moved up

    # Longer than the cap: the first passage keeps the neighbours rule (both neighbours, as one of the `whole`).
    documents = join_neighbours(
        [_passage(9), _passage(30, "Other")], payloads[:2], section, [1.0, 0.0], k=2, whole=1, section_up_to=4
    )
    assert documents[0].metadata["joined"] == [8, 10]
    # Only the first passage: the second keeps its neighbours rule whatever its section's length.
    documents = join_neighbours(
        [_passage(30, "Other"), _passage(9)], payloads[:2], section, [1.0, 0.0], k=2, whole=0, section_up_to=8
    )
    assert "joined" not in documents[1].metadata
    # The read fetches enough around the first passage to see its whole section.
    wanted = neighbour_chunks([_passage(9), _passage(30, "Other")], first_span=8)
    assert sorted(i for _, i in wanted) == [*range(1, 9), *range(10, 18), 29, 31]


def test_a_lower_passage_near_a_higher_one_of_its_chapter_is_joined_with_the_chunks_between() -> None:
    # Passage 9 ranks first, 12 (same section, three chunks on) third; 10 and 11 are read, not candidates.
    between = [_neighbour(10), _neighbour(11)]
    candidates = [_passage(9), _passage(30, "Other"), _passage(12), _passage(40, "Other")]
    payloads = [_payload([[0.0, 1.0]])] * 4  # no neighbour has a better sentence: only the nearby rule joins
    apart = join_neighbours(candidates, payloads, between, [1.0, 0.0], k=3, nearby=0)
    assert [d.metadata["chunk_index"] for d in apart] == [9, 30, 12]
    candidates = _copies(candidates)
    candidates[0].metadata.update(score=0.30, sentence_score=0.50)
    candidates[2].metadata.update(score=0.40, sentence_score=0.45)
    joined = join_neighbours(candidates, payloads, between, [1.0, 0.0], k=3, nearby=5)
    assert [d.metadata["chunk_index"] for d in joined] == [9, 30, 40]  # 12 joined into 9: the next one moved up
    assert joined[0].page_content == "\n\n".join(f"text {i}" for i in (9, 10, 11, 12))
    assert joined[0].metadata["joined"] == [10, 11, 12]
    # The joined candidate's closeness is not lost: the passage shows its chunk, so it takes the best of both.
    assert (joined[0].metadata["score"], joined[0].metadata["sentence_score"]) == (0.40, 0.50)

    # Before the passage too, nearest chunk first in the join, book order in the text; and onto chunks joined already.
    before = [_neighbour(7), _neighbour(8), _neighbour(10)]
    candidates = [_passage(9), _passage(6), _passage(11)]
    joined = join_neighbours(candidates, payloads, before, [1.0, 0.0], k=3, whole=1, nearby=5)
    assert len(joined) == 1 and joined[0].metadata["joined"] == [6, 7, 8, 10, 11]
    assert joined[0].page_content == "\n\n".join(f"text {i}" for i in range(6, 12))
    start, end = joined[0].metadata["chunk_span"]  # where the chunk it was found by is, in the middle
    assert joined[0].page_content[start:end] == "text 9"

    # Across a section of the same chapter too (a topic runs on into the next subsection).
    boxed = [_neighbour(10), _neighbour(11, "Ch > Boxed")]
    joined = join_neighbours(_copies([_passage(9), _passage(12)]), payloads, boxed, [1.0, 0.0], k=2, nearby=5)
    assert len(joined) == 1 and joined[0].metadata["joined"] == [10, 11, 12]
    # It records where each section it spans starts, so that a quote links to its own section: S (9, 10), the
    # subsection Boxed (11), then S again (12).
    text, sections = joined[0].page_content, joined[0].metadata["sections"]
    assert [(text[s["start"] :].split("\n\n")[0], s["heading_path"]) for s in sections] == [
        ("text 9", ["Ch", "S"]),
        ("text 11", ["Ch", "Boxed"]),
        ("text 12", ["Ch", "S"]),
    ]
    start, end = joined[0].metadata["chunk_span"]  # and where the chunk it was found by (9) is
    assert text[start:end] == "text 9"
    one_section = join_neighbours(_copies(candidates), payloads, before, [1.0, 0.0], k=3, nearby=5)
    assert "sections" not in one_section[0].metadata

    # A spare candidate after the k-th passage joins one near it too (it would be the next passage), and a far one
    # stays out.
    ranked = _copies([_passage(9), _passage(30, "Other"), _passage(12), _passage(40)])
    spare = join_neighbours(ranked, payloads, between, [1.0, 0.0], k=2, nearby=5)
    assert [d.metadata["chunk_index"] for d in spare] == [9, 30] and spare[0].metadata["joined"] == [10, 11, 12]

    # Not joined: farther apart than `nearby`, a chunk between that was not read, one of another chapter, or a
    # passage that would span more than NEARBY_SPAN chunks.
    far = join_neighbours(_copies([_passage(9), _passage(15)]), payloads, [], [1.0, 0.0], k=2, nearby=5)
    unread = join_neighbours(
        _copies([_passage(9), _passage(12)]), payloads, [_neighbour(10)], [1.0, 0.0], k=2, nearby=5
    )
    other = [_neighbour(10), _neighbour(11, "Appendix > A")]
    broken = join_neighbours(_copies([_passage(9), _passage(12)]), payloads, other, [1.0, 0.0], k=2, nearby=5)
    for documents in (far, unread, broken):
        assert len(documents) == 2 and all("joined" not in d.metadata for d in documents)
    run = [_neighbour(i) for i in range(10, 30) if i not in (13, 17, 21)]
    steps = _copies([_passage(i) for i in (9, 13, 17, 21)])
    grown = join_neighbours(steps, payloads, run, [1.0, 0.0], k=4, nearby=5)
    assert [d.metadata["chunk_index"] for d in grown] == [9, 21]  # 9-17 is 9 chunks; 9-21 would be 13
    assert NEARBY_SPAN == 12

    # The read fetches the chunks between candidates of one chapter that are near enough, and only those.
    known = [_passage(9), _passage(30, "Other"), _passage(14), _passage(33)]
    wanted = neighbour_chunks(known[:1], known, nearby=5)
    assert wanted == {("ch.md", i) for i in (8, 10, 11, 12, 13)}  # 9's neighbours, 10-13 up to 14; not 30-33


def _copies(documents: list[Document]) -> list[Document]:
    return [Document(d.page_content, metadata=dict(d.metadata)) for d in documents]


# One section cut into three chunks at 64 tokens: the question is about the first part, the answer two chunks on.
LONG_SECTION = """# Winter work

## Pruning

In winter the fruit trees are dormant, and pruning an apple tree while its branches are bare is the main task of
the season: cut out dead, diseased and crossing wood, so that light and air can reach the middle of the tree.

A young tree is pruned to build its framework of four or five strong branches, spaced evenly around the trunk.
Shorten each leader by a third, to an outward-facing bud, and remove any shoot growing straight up into the centre.

Never cut a plum or a cherry in winter, though: silver leaf spores enter their wounds in the cold months, so these
stone fruits are pruned in early summer instead, when the sap is rising and heals the cuts quickly.

## Harvest

Pick apples when they come away with a gentle twist of the wrist, and handle them like eggs: a bruised apple
rots in store and spoils its neighbours. Keep only sound fruit, wrapped in paper, in a cool and dark shed.
"""
LONG_QUESTION = "Is the cold season the right time to prune every one of my fruit trees?"
LONG_ANSWER = "stone fruits are pruned in early summer"


def test_the_first_passage_reads_its_whole_short_section(
    tmp_path: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    small, pruning = _small_chunked_book(tmp_path, qdrant, embeddings, settings, LONG_SECTION, "Pruning")
    assert len(pruning) >= 3, "the section is cut into three chunks or more"

    def first_passage(section_whole_up_to: int) -> Document:
        retriever = _retriever(qdrant, small, embeddings, join=True)
        return retriever.model_copy(update={"section_whole_up_to": section_whole_up_to}).invoke(LONG_QUESTION)[0]

    neighbours_only = first_passage(0)
    assert neighbours_only.metadata["chunk_index"] == pruning[0], "the question lands on the section's first part"
    assert LONG_ANSWER not in neighbours_only.page_content, "the answer is further than the next chunk"
    whole = first_passage(8)
    assert LONG_ANSWER in whole.page_content and "Pick apples" not in whole.page_content  # not the next section
    assert whole.metadata["joined"] == pruning[1:]
    assert whole.metadata["score"] == neighbours_only.metadata["score"]  # no joined chunk was a closer candidate
    assert _retriever(qdrant, small, embeddings, join=True).section_whole_up_to == 0  # off unless set
    assert Settings(_env_file=None).retrieval_section_whole_up_to == 8  # type: ignore[call-arg]  # on by default


# One section about a single topic, cut into several chunks at 64 tokens: a question about the topic finds more
# than one of them.
PRUNING_SECTION = """# Pruning

## Pruning apple trees

Prune apple trees in winter while they are dormant. Pruning apple trees lets light into the crown and keeps the
tree healthy, and a well pruned apple tree crops every year instead of every other year.

A young apple tree is pruned to build its framework: four or five strong branches spaced around the trunk. Shorten
each new leader by a third, cutting just above an outward-facing bud with clean, sharp secateurs.

Paint nothing on the cuts. Burn or bin the prunings from any branch with canker, and disinfect the blade between
trees, since canker spreads on dirty tools from one apple tree to the next in a wet winter.

An old, neglected apple tree is pruned over three winters, never all at once: take out a third of the oldest wood
each year, or the tree answers with a thicket of water shoots that shade the fruit.

## Harvest

Pick apples when they come away with a gentle twist. Store only sound fruit in a cool, dark shed.
"""
PRUNING_QUESTION = "How and when should I prune my apple trees?"


def test_passages_of_one_section_a_few_chunks_apart_come_back_as_one(
    tmp_path: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    small, pruning = _small_chunked_book(tmp_path, qdrant, embeddings, settings, PRUNING_SECTION, "Pruning apple trees")
    assert len(pruning) >= 3, "the section is cut into three chunks or more"
    retriever = _retriever(qdrant, small, embeddings, join=True).model_copy(update={"k": 3, "neighbours_whole": 0})

    apart = retriever.invoke(PRUNING_QUESTION)
    in_section = [d.metadata["chunk_index"] for d in apart if d.metadata["chunk_index"] in pruning]
    assert len(in_section) >= 2, "without the rule, two passages come from the one section"
    together = retriever.model_copy(update={"join_nearby": 5}).invoke(PRUNING_QUESTION)
    first = together[0]
    assert first.metadata["chunk_index"] == apart[0].metadata["chunk_index"]  # the same first passage, grown
    covered = sorted({first.metadata["chunk_index"], *first.metadata.get("joined", [])})
    assert covered == list(range(covered[0], covered[-1] + 1)), "the chunks between are joined too, in book order"
    assert set(in_section) <= set(covered)
    assert not any(d.metadata["chunk_index"] in pruning for d in together[1:]), "no second passage of the section"
    assert Settings(_env_file=None).retrieval_join_nearby == 8  # type: ignore[call-arg]  # on by default
