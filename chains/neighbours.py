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

Measured over five books (docs/retrieval.md, "Neighbour passages").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def neighbours_filter(documents: Sequence[Document], metadata_key: str) -> models.Filter | None:
    """A filter matching the chunks right before and after each passage, in its own file."""
    wanted: dict[str, set[int]] = {}
    for document in documents:
        key = neighbour_key(document.metadata)
        if key is not None:
            wanted.setdefault(key[0], set()).update((key[1] - 1, key[1] + 1))
    if not wanted:
        return None
    return models.Filter(
        should=[
            models.Filter(
                must=[
                    models.FieldCondition(key=f"{metadata_key}.source", match=models.MatchValue(value=source)),
                    models.FieldCondition(key=f"{metadata_key}.chunk_index", match=models.MatchAny(any=sorted(ids))),
                ]
            )
            for source, ids in sorted(wanted.items())
        ]
    )


def join_texts(first: str, second: str) -> str:
    """Two consecutive chunks of one section as one text, the paragraphs the second repeats from the first once."""
    head, tail = first.split(_PARAGRAPH), second.split(_PARAGRAPH)
    for shared in range(min(len(head), len(tail)), 0, -1):
        if head[-shared:] == tail[:shared]:
            return _PARAGRAPH.join(head + tail[shared:])
    return first + _PARAGRAPH + second


def join_neighbours(
    documents: Sequence[Document],
    payloads: Sequence[Mapping[str, Any] | None],
    neighbours: Sequence[tuple[Mapping[str, Any], str, Mapping[str, Any] | None]],
    query: Sequence[float],
    whole: int = 0,
) -> int:
    """Join to each passage (with its stored payload) its same-section neighbours (metadata, text, payload): all of
    them for the first `whole` passages, else those whose best sentence beats the passage's own; in place.
    Returns how many chunks were joined."""
    shown = {key for d in documents if (key := neighbour_key(d.metadata)) is not None}
    by_key = {
        key: (metadata, text, payload)
        for metadata, text, payload in neighbours
        if (key := neighbour_key(metadata)) is not None and key not in shown
    }
    if not by_key:
        return 0
    own = best_sentence_scores(query, payloads)  # None: some passage has no sentence vectors
    joined = 0
    for rank, document in enumerate(documents):
        key = neighbour_key(document.metadata)
        if key is None:
            continue
        source, index = key
        candidates = [
            (position, by_key[(source, position)])
            for position in (index - 1, index + 1)
            if (source, position) in by_key
            and by_key[(source, position)][0].get("section") == document.metadata.get("section")
        ]
        if not candidates:
            continue
        if rank < whole:
            chosen = [(position, text) for position, (_, text, _) in candidates]
        else:
            scores = None if own is None else best_sentence_scores(query, [p for _, (_, _, p) in candidates])
            if scores is None or own is None:
                continue
            chosen = [
                (position, text)
                for (position, (_, text, _)), score in zip(candidates, scores, strict=True)
                if score > own[rank]
            ]
        if not chosen:
            continue
        text = document.page_content
        for position, other in chosen:  # in book order: the one before, then the one after
            text = join_texts(other, text) if position < index else join_texts(text, other)
        for position, _ in chosen:
            del by_key[(source, position)]  # joined once, to the better-ranked passage
        document.page_content = text
        document.metadata["joined"] = [position for position, _ in chosen]
        joined += len(chosen)
    return joined
