"""The book's sources and chapters as stored, and filters resolved against them as readers type them.

A filter that names nothing stored (`"chapter": "planting"` for "Planting", `"sources": ["03-planting.md"]` for
`sample_book/03-planting.md`) would otherwise search nothing and answer "not in the book", which is false. Here a
value matches case-insensitively, without number prefixes (`03-`, `3.`, `Chapter 3:`, `IV:`) or file extensions, and a
source also by its file name or trailing path; one that still matches nothing is a `FilterMatchesNothing` naming the
values that exist, the closest first.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from qdrant_client import QdrantClient

from chains.errors import RagError
from chains.vectorstore import FACET_LIMIT, METADATA_KEY, VISIBLE, BookVersion, book_version

_PREFIX = re.compile(r"^\s*(?:chapter|part|section)?\s*\d+(?:\.\d+)*\s*[-_.:)]?\s*", re.IGNORECASE)
# A Roman chapter number before the title, as classics number them ("IV: Natural Selection", "Chapter XII. ..."):
# upper case and followed by its separator, so that a title word ("I think", "Mix") is left alone.
_ROMAN_PREFIX = re.compile(r"^\s*(?:(?i:chapter|part|book)\s+)?[IVXLC]{1,7}\s*[.:)]\s+(?=\S)")
_NON_WORD = re.compile(r"[\W_]+")
_SUGGESTIONS = 5


class FilterMatchesNothing(RagError):
    """A `sources` or `chapter` filter that names nothing in the book (HTTP 422, naming what exists)."""

    code = "filter_matches_nothing"

    def __init__(self, field: str, values: Sequence[str], known: Sequence[str]) -> None:
        self.field = field
        self.values = list(values)
        self.suggestions = closest(values, known)
        asked = ", ".join(repr(v) for v in values)
        offer = ", ".join(repr(s) for s in self.suggestions) if self.suggestions else "none are stored"
        super().__init__(f"{field}: {asked} matches nothing in the book; the closest stored {field}: {offer}")


def normalise(value: str) -> str:
    """How a chapter or file name compares: no case, no number prefix, no extension, no punctuation."""
    name = PurePosixPath(value.strip()).name if "/" in value else value.strip()
    stem = re.sub(r"\.(mdx?|markdown|html?|xhtml|txt|text|rst|pdf|docx|epub)$", "", name, flags=re.IGNORECASE)
    stem = _PREFIX.sub("", _ROMAN_PREFIX.sub("", stem))
    return _NON_WORD.sub(" ", stem.casefold().replace("&", " and ")).strip()


def closest(values: Sequence[str], known: Sequence[str]) -> list[str]:
    """Stored values nearest to the requested ones (by their normalised forms), best first."""
    by_form: dict[str, str] = {}
    for item in known:
        by_form.setdefault(normalise(item), item)
    ranked: dict[str, float] = {}
    for value in values:
        form = normalise(value)
        for candidate_form, original in by_form.items():
            score = difflib.SequenceMatcher(None, form, candidate_form).ratio()
            if form and (form in candidate_form or candidate_form in form):
                score += 0.5
            ranked[original] = max(ranked.get(original, 0.0), score)
    ordered = sorted(ranked, key=lambda item: (-ranked[item], item))
    return ordered[:_SUGGESTIONS] if ordered else sorted(known)[:_SUGGESTIONS]


def match_source(value: str, known: Sequence[str]) -> list[str]:
    """The stored sources a requested source means: itself, else those ending with its path, else an EPUB's
    chapters, else by name."""
    wanted = value.strip().lstrip("./")
    if wanted in known:
        return [wanted]
    trailing = [s for s in known if s.endswith("/" + wanted)]
    if trailing:
        return trailing
    if wanted.lower().endswith(".epub"):  # an EPUB stands for its chapters (`book.epub/text/ch1.xhtml`)
        chapters = [s for s in known if s.startswith(wanted + "/") or f"/{wanted}/" in f"/{s}"]
        if chapters:
            return chapters
    form = normalise(wanted)
    return [s for s in known if form and normalise(s) == form]


def match_chapter(value: str, known: Sequence[str]) -> list[str]:
    """The stored chapter titles a requested chapter means: exact, else the same normalised title."""
    if value in known:
        return [value]
    form = normalise(value)
    return [c for c in known if form and normalise(c) == form]


@dataclass(frozen=True, slots=True)
class Catalogue:
    sources: tuple[str, ...]
    chapters: tuple[str, ...]

    def resolve(self, sources: Sequence[str] | None, chapter: str | None) -> tuple[list[str] | None, str | None]:
        """The stored values the filters mean (None where no filter was given)."""
        resolved_sources: list[str] | None = None
        if sources:
            resolved_sources, missing = [], []
            for value in sources:
                found = match_source(value, self.sources)
                if found:
                    resolved_sources.extend(found)
                else:
                    missing.append(value)
            if missing:
                raise FilterMatchesNothing("sources", missing, self.sources)
            resolved_sources = list(dict.fromkeys(resolved_sources))
        resolved_chapter: str | None = None
        if chapter:
            chapters = match_chapter(chapter, self.chapters)
            if not chapters:
                raise FilterMatchesNothing("chapter", [chapter], self.chapters)
            resolved_chapter = chapters[0]
        return resolved_sources, resolved_chapter


class BookCatalogue:
    """Lists the stored sources and chapters (Qdrant facets over the visible points), again whenever the stored
    book has changed (`book_version`)."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self._lock = threading.Lock()
        self._cached: tuple[BookVersion, Catalogue] | None = None

    def current(self, client: QdrantClient) -> Catalogue:
        version = book_version(client, self.collection)
        with self._lock:
            if self._cached is not None and self._cached[0] == version:
                return self._cached[1]
        catalogue = Catalogue(self._values(client, "source"), self._values(client, "chapter"))
        with self._lock:
            self._cached = (version, catalogue)
        return catalogue

    def forget(self) -> None:
        """List again on the next use: an ingest in this process has finished (a replaced chapter may leave the
        point count as it was)."""
        with self._lock:
            self._cached = None

    def _values(self, client: QdrantClient, field: str) -> tuple[str, ...]:
        response = client.facet(
            self.collection, key=f"{METADATA_KEY}.{field}", facet_filter=VISIBLE, limit=FACET_LIMIT, exact=True
        )
        return tuple(sorted(str(hit.value) for hit in response.hits))
