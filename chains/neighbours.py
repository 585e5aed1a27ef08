"""Neighbour passages: a passage whose section goes on in the chunk before or after it is joined with that chunk,
always for the first passages (RETRIEVAL_NEIGHBOURS_WHOLE, 2), for the others when one of the neighbour's
sentences is closer to the question than any of the passage's own.

A section longer than one chunk is cut into several, and a question often lands on the right section but on the
wrong part of it: the passage retrieved is about the topic, its neighbour holds the sentence that answers. Deciding
costs one small read (at most two chunks per passage) and no model call: the neighbours' sentence vectors are
stored at ingest (`chains.sentence_rescore`). The first passages, the likeliest to be on the right section, take
both neighbours whatever their sentences (the sentence test alone missed most of those on Walden). Only a
neighbour in the same file and section (`metadata.section`) and not already among the passages is joined, in book
order, the paragraphs the two chunks share (the splitter's overlap) written once. The passage keeps its own score
(the refusal threshold is unchanged), rank and citation (same section, same anchor); `metadata.joined` lists the
chunk indexes joined to it.

The first passage goes further when its section is short (RETRIEVAL_SECTION_WHOLE_UP_TO chunks, 8): it takes
the whole section, so a question that lands on the right section reads all of it (the parent-document idea, with
the section as the parent and a cap that keeps a long chapter from flooding the answer). The same read fetches
that many chunks on each side of it; a section that runs past them is longer than the cap and keeps the
neighbours rule.

Measured over seven books (docs/retrieval.md, "Neighbour passages" and "The first passage's whole section").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from langchain_core.documents import Document
from qdrant_client import models

from chains.sentence_rescore import best_sentence_scores

_PARAGRAPH = "\n\n"


def neighbour_key(metadata: Mapping[str, Any]) -> tuple[str, int] | None:
    """(source, chunk index) of a passage, or None when it lacks either (a point not written by the indexer)."""
    source, index = metadata.get("source"), metadata.get("chunk_index")
    if not isinstance(source, str) or not isinstance(index, int) or isinstance(index, bool):
        return None
    return source, index


def neighbours_filter(
    documents: Sequence[Document], metadata_key: str, known: Sequence[Document] = (), first_span: int = 1
) -> models.Filter | None:
    """A filter matching the chunks right before and after each passage (`first_span` on each side of the first
    one), in its own file, except those `known` already (the other candidates, whose payloads the search
    returned); None when there is none to read."""
    have = {key for d in (*documents, *known) if (key := neighbour_key(d.metadata)) is not None}
    wanted: dict[str, set[int]] = {}
    for rank, document in enumerate(documents):
        key = neighbour_key(document.metadata)
        if key is not None:
            span = max(1, first_span) if rank == 0 else 1
            around = [i for i in range(key[1] - span, key[1] + span + 1) if i != key[1] and i >= 0]
            missing = {i for i in around if (key[0], i) not in have}
            if missing:
                wanted.setdefault(key[0], set()).update(missing)
    if not wanted:
        return None
    return chunks_filter({(source, i) for source, ids in wanted.items() for i in ids}, metadata_key)


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
    """Two consecutive chunks of one section as one text, the paragraphs the second repeats from the first once."""
    head, tail = first.split(_PARAGRAPH), second.split(_PARAGRAPH)
    for shared in range(min(len(head), len(tail)), 0, -1):
        if head[-shared:] == tail[:shared]:
            return _PARAGRAPH.join(head + tail[shared:])
    return first + _PARAGRAPH + second


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
) -> list[Document]:
    """The first `k` passages of `candidates` (ranked, with their stored payloads), each joined with its
    same-section neighbours (metadata, text, payload; read from the store): the first passage with its whole
    section when that has at most `section_up_to` chunks, all of them for the first `whole` passages, else those
    whose best sentence beats the passage's own. A neighbour that is itself a lower candidate is joined into the
    higher one and leaves the list (the next candidate moves up); one ranked higher stays where it is. Joined
    documents are changed in place."""
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
        if len(kept) == k:
            break
        key = neighbour_key(document.metadata)
        if key is not None and key in used:
            continue  # joined into a passage above
        kept.append(document)
        if key is None:
            continue
        used.add(key)
        source, index = key
        section = section_run(pool, key, document.metadata.get("section"), section_up_to) if len(kept) == 1 else None
        if section:
            order = [i for i in reversed(section) if i < index] + [i for i in section if i > index]  # nearest first
            chosen = [(position, pool[(source, position)][1]) for position in order]
            _join(document, chosen, index)
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
        _join(document, chosen, index)
        used.update((source, position) for position, _ in chosen)
    return kept


def _join(document: Document, chosen: Sequence[tuple[int, str]], index: int) -> None:
    """Join the chunks `chosen` (position, text; those before `index` nearest first) into the passage."""
    text = document.page_content
    for position, other in chosen:
        text = join_texts(other, text) if position < index else join_texts(text, other)
    document.page_content = text
    document.metadata["joined"] = sorted(position for position, _ in chosen)
