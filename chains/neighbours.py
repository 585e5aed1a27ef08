"""Neighbour passages: a passage whose section goes on in the chunk before or after it is joined with that chunk,
always for the first passages (RETRIEVAL_NEIGHBOURS_WHOLE, 2), for the others when one of the neighbour's
sentences is closer to the question than any of the passage's own.

A section longer than one chunk is cut into several, and a question often lands on the right section but on the
wrong part of it: the passage retrieved is about the topic, its neighbour holds the sentence that answers. Deciding
costs one small read (at most two chunks per passage) and no model call: the neighbours' sentence vectors are
stored at ingest (`chains.sentence_rescore`). The first passages, the likeliest to be on the right section, take
both neighbours whatever their sentences (the sentence test alone missed most of those on Walden). Only a
neighbour in the same file and section (`metadata.section`) and not already among the passages is joined, in book
order, the text the two chunks share (the splitter's overlap: whole paragraphs, or a long paragraph's last
sentences) written once. The passage keeps its rank and citation (same section, same anchor) and its cosine,
unless a joined chunk was a closer candidate: then it takes that one's, as it shows that chunk (the refusal
threshold reads it); `metadata.joined` lists the chunk indexes joined to it.

The first passage goes further when its section is short (RETRIEVAL_SECTION_WHOLE_UP_TO chunks, 8): it takes
the whole section, so a question that lands on the right section reads all of it (the parent-document idea, with
the section as the parent and a cap that keeps a long chapter from flooding the answer). The same read fetches
that many chunks on each side of it; a section that runs past them is longer than the cap and keeps the
neighbours rule.

Two passages of one chapter at most a few chunks apart (RETRIEVAL_JOIN_NEARBY, 8) are one passage: the lower one
joins the higher with the chunks between them (NEARBY_SPAN chunks at most in all), and the next candidate moves up;
a spare candidate ranked after the k-th passage joins one the same way (it would be the passage after them).
They are usually views of one stretch of the book, and the answer often lies between them (in a long section, a
Walden chapter, or where a topic runs on into the next subsection); shown apart, they spend two of the k places on it
and still leave out the middle. The same read fetches the chunks between candidates. A passage may so stand for
several candidates, and fewer than k passages come back.

Measured over seven books (docs/retrieval.md, "Neighbour passages", "The first passage's whole section" and
"Nearby passages of one chapter").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from langchain_core.documents import Document
from qdrant_client import models

from chains.sentence_rescore import best_sentence_scores

_PARAGRAPH = "\n\n"
# The shortest text two chunks must share to be written once (a sentence's worth: shorter could be chance).
MIN_REPEAT = 20
# A passage grown by joining nearby candidates spans at most this many chunks, so that a chapter found in many
# places does not become one passage.
NEARBY_SPAN = 12


def neighbour_key(metadata: Mapping[str, Any]) -> tuple[str, int] | None:
    """(source, chunk index) of a passage, or None when it lacks either (a point not written by the indexer)."""
    source, index = metadata.get("source"), metadata.get("chunk_index")
    if not isinstance(source, str) or not isinstance(index, int) or isinstance(index, bool):
        return None
    return source, index


def neighbour_chunks(
    documents: Sequence[Document], known: Sequence[Document] = (), first_span: int = 1, nearby: int = 0
) -> set[tuple[str, int]]:
    """The chunks (source, chunk index) to read for joining: those right before and after each passage
    (`first_span` on each side of the first one), in its own file, and those between two candidates (`known`) of one
    chapter at most `nearby` chunks apart; less the candidates themselves, whose payloads the search returned."""
    have = {key for d in (*documents, *known) if (key := neighbour_key(d.metadata)) is not None}
    wanted: set[tuple[str, int]] = set()
    for rank, document in enumerate(documents):
        if (key := neighbour_key(document.metadata)) is not None:
            span = max(1, first_span) if rank == 0 else 1
            wanted.update((key[0], i) for i in range(key[1] - span, key[1] + span + 1) if i >= 0)
    placed = [(key, d.metadata.get("chapter")) for d in known if (key := neighbour_key(d.metadata)) is not None]
    for (source, index), chapter in placed:
        for (other_source, other), other_chapter in placed:
            if source == other_source and chapter == other_chapter and index < other <= index + nearby:
                wanted.update((source, i) for i in range(index + 1, other))
    return wanted - have


def chunks_filter(chunks: Iterable[tuple[str, int]], metadata_key: str = "metadata") -> models.Filter:
    """A filter matching the chunks given as (source, chunk index)."""
    by_source: dict[str, set[int]] = {}
    for source, index in chunks:
        by_source.setdefault(source, set()).add(index)
    return models.Filter(
        should=[
            models.Filter(
                must=[
                    models.FieldCondition(key=f"{metadata_key}.source", match=models.MatchValue(value=source)),
                    models.FieldCondition(key=f"{metadata_key}.chunk_index", match=models.MatchAny(any=sorted(ids))),
                ]
            )
            for source, ids in sorted(by_source.items())
        ]
    )


def join_texts(first: str, second: str) -> str:
    """Two consecutive chunks of one section as one text, what the second repeats from the first written once."""
    return joined(first, second)[0]


def joined(first: str, second: str) -> tuple[str, int]:
    """`join_texts`, and where `second` starts in the text.

    The splitter starts a chunk with the end of the one before: whole paragraphs, or, inside a paragraph longer
    than a chunk, its last sentences. Either is written once; chunks that share nothing are two paragraphs."""
    head, tail = first.split(_PARAGRAPH), second.split(_PARAGRAPH)
    for shared in range(min(len(head), len(tail)), 0, -1):
        if head[-shared:] == tail[:shared]:
            kept = head[:-shared]
            return _PARAGRAPH.join(kept + tail), len(_PARAGRAPH.join(kept)) + len(_PARAGRAPH) if kept else 0
    if (shared_text := _repeated_start(first, second)) > 0:
        return first + second[shared_text:], len(first) - shared_text
    return first + _PARAGRAPH + second, len(first) + len(_PARAGRAPH)


def _repeated_start(first: str, second: str) -> int:
    """How many characters `second` starts with that end `first`, from a word's start there (0: none, or fewer
    than MIN_REPEAT, which could be chance)."""
    probe = second[:MIN_REPEAT]
    if len(probe) < MIN_REPEAT:
        return 0
    position = first.find(probe, max(0, len(first) - len(second)))
    while position != -1:
        if (position == 0 or first[position - 1].isspace()) and second.startswith(first[position:]):
            return len(first) - position
        position = first.find(probe, position + 1)
    return 0


def section_run(
    pool: Mapping[tuple[str, int], tuple[Mapping[str, Any], str, Mapping[str, Any] | None]],
    key: tuple[str, int],
    section: object,
    up_to: int,
) -> list[int] | None:
    """The other chunk indexes of `key`'s section, when the section (as far as `pool` holds it around `key`) has
    at most `up_to` chunks; None when it is longer, or when `up_to` is 0."""
    if up_to < 2:
        return None
    source, index = key
    run = [index]
    for step in (-1, 1):
        position = index + step
        while (source, position) in pool and pool[(source, position)][0].get("section") == section:
            run.append(position)
            if len(run) > up_to:
                return None
            position += step
    return sorted(i for i in run if i != index)


def join_neighbours(
    candidates: Sequence[Document],
    payloads: Sequence[Mapping[str, Any] | None],
    neighbours: Sequence[tuple[Mapping[str, Any], str, Mapping[str, Any] | None]],
    query: Sequence[float],
    k: int,
    whole: int = 0,
    section_up_to: int = 0,
    nearby: int = 0,
) -> list[Document]:
    """The first `k` passages of `candidates` (ranked, with their stored payloads), each joined with its
    same-section neighbours (metadata, text, payload; read from the store): the first passage with its whole
    section when that has at most `section_up_to` chunks, all of them for the first `whole` passages, else those
    whose best sentence beats the passage's own. A neighbour that is itself a lower candidate is joined into the
    higher one and leaves the list (the next candidate moves up); one ranked higher stays where it is. So does a
    lower candidate of the same file and chapter at most `nearby` chunks from a passage kept above it, with the
    chunks between them (up to NEARBY_SPAN chunks in all), the spare candidates after the k-th passage too.
    Joined documents are changed in place."""
    pool: dict[tuple[str, int], tuple[Mapping[str, Any], str, Mapping[str, Any] | None]] = {}
    for metadata, text, payload in neighbours:
        if (key := neighbour_key(metadata)) is not None:
            pool[key] = (metadata, text, payload)
    position_of: dict[tuple[str, int], int] = {}
    for i, document in enumerate(candidates):
        if (key := neighbour_key(document.metadata)) is not None:
            position_of.setdefault(key, i)
            pool[key] = (document.metadata, document.page_content, payloads[i])
    used: set[tuple[str, int]] = set()  # chunks already shown, as a passage or joined to one
    kept: list[Document] = []
    for i, document in enumerate(candidates):
        key = neighbour_key(document.metadata)
        if key is not None and key in used:
            continue  # joined into a passage above
        if key is not None and nearby and _join_nearby(kept, document, key, pool, used, nearby):
            continue  # joined, with the chunks between, into a passage above
        if len(kept) == k:
            continue  # k passages: the candidates left can only join them
        kept.append(document)
        if key is None:
            continue
        used.add(key)
        source, index = key
        section = section_run(pool, key, document.metadata.get("section"), section_up_to) if len(kept) == 1 else None
        if section:
            order = [i for i in reversed(section) if i < index] + [i for i in section if i > index]  # nearest first
            chosen = [(position, pool[(source, position)][1]) for position in order]
            _join(document, chosen, index, pool, source)
            used.update((source, position) for position in section)
            continue
        options = [
            (position, pool[(source, position)])
            for position in (index - 1, index + 1)
            if (source, position) in pool
            and (source, position) not in used
            and pool[(source, position)][0].get("section") == document.metadata.get("section")
        ]
        if not options:
            continue
        if len(kept) <= whole:
            chosen = [(position, text) for position, (_, text, _) in options]
        else:
            own = best_sentence_scores(query, [payloads[i]])
            scores = best_sentence_scores(query, [payload for _, (_, _, payload) in options])
            if own is None or scores is None:
                continue  # no sentence vectors (a store ingested before them): nothing to compare
            chosen = [
                (position, text)
                for (position, (_, text, _)), score in zip(options, scores, strict=True)
                if score > own[0]
            ]
        if not chosen:
            continue
        _join(document, chosen, index, pool, source)
        used.update((source, position) for position, _ in chosen)
    return kept


def _join_nearby(
    kept: Sequence[Document],
    candidate: Document,
    key: tuple[str, int],
    pool: Mapping[tuple[str, int], tuple[Mapping[str, Any], str, Mapping[str, Any] | None]],
    used: set[tuple[str, int]],
    nearby: int,
) -> bool:
    """Join `candidate` into the first passage of `kept` whose chunks (its own and those joined to it) are in the
    same file and chapter and at most `nearby` chunks away, with the chunks between them; False when there is none
    (or a chunk between is missing from `pool`, or shown already, or of another chapter, or the passage would span
    more than NEARBY_SPAN chunks)."""
    source, index = key
    chapter = candidate.metadata.get("chapter")
    for passage in kept:
        own = neighbour_key(passage.metadata)
        if own is None or own[0] != source or passage.metadata.get("chapter") != chapter:
            continue
        covered = {own[1], *passage.metadata.get("joined", ())}
        first, last = min(covered), max(covered)
        if last < index <= last + nearby:
            between = list(range(last + 1, index))
        elif first - nearby <= index < first:
            between = list(range(index + 1, first))[::-1]  # nearest the passage first, as `_join` takes them
        else:
            continue
        if max(last, index) - min(first, index) >= NEARBY_SPAN or any(
            (source, i) not in pool or (source, i) in used or pool[(source, i)][0].get("chapter") != chapter
            for i in between
        ):
            continue
        chosen = [(i, pool[(source, i)][1]) for i in between] + [(index, candidate.page_content)]
        _join(passage, chosen, own[1], pool, source, already=covered - {own[1]})
        used.update((source, i) for i, _ in chosen)
        return True
    return False


def _join(
    document: Document,
    chosen: Sequence[tuple[int, str]],
    index: int,
    pool: Mapping[tuple[str, int], tuple[Mapping[str, Any], str, Mapping[str, Any] | None]],
    source: str,
    already: Iterable[int] = (),
) -> None:
    """Join the chunks `chosen` (position, text) into the passage, which holds chunk `index` and those `already`
    joined to it: the text is written again from its chunks in book order; `metadata.chunk_span` records where
    chunk `index` is in it, and `metadata.sections` where each section it spans starts (a passage joined across
    subsections links each quote to its own section).
    A joined chunk that was a candidate brings its scores: the passage's cosine and best sentence become the best
    of the chunks it shows, so joining a candidate never hides the evidence that it was close to the question (the
    refusal threshold reads them)."""
    texts = {position: text for position, text in chosen}
    positions = sorted({index, *already, *texts})
    text = ""
    found = [0, 0]
    sections: list[dict[str, Any]] = []  # where each section it spans starts in `text`
    for position in positions:
        chunk = texts[position] if position in texts else pool[(source, position)][1]
        text, start = joined(text, chunk) if text else (chunk, 0)
        if position == index:
            found = [start, len(text)]
        here = section_of(document.metadata if position == index else pool[(source, position)][0])
        if not sections or any(sections[-1][key] != value for key, value in here.items()):
            sections.append({"start": start, **here})
    document.page_content = text
    document.metadata["chunk_span"] = found
    document.metadata["joined"] = [position for position in positions if position != index]
    if len(sections) > 1:
        document.metadata["sections"] = sections
    else:
        document.metadata.pop("sections", None)
    for score in ("score", "sentence_score"):
        shown = [pool[(source, p)][0].get(score) for p, _ in chosen if (source, p) in pool]
        best = max(
            (float(v) for v in (*shown, document.metadata.get(score)) if isinstance(v, int | float)), default=None
        )
        if best is not None:
            document.metadata[score] = best


def section_of(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The section a stored chunk is in, as a passage's `metadata.sections` records it."""
    path = metadata.get("heading_path")
    anchor, page_path = metadata.get("anchor"), metadata.get("page_path")
    return {
        "heading_path": [str(p) for p in path] if isinstance(path, list) else [],
        "anchor": anchor if isinstance(anchor, str) else None,
        "page_path": page_path if isinstance(page_path, str) else None,
    }
