"""Whether a question's distinctive names occur in the book at all: a refusal signal beside the cosine threshold.

An in-domain question the book does not answer still finds passages on the same topic above any cosine
threshold ("How do I mock requests with XCTest?" in a Swift book that never names XCTest). A name or an
identifier the book never uses is a strong sign: such a question is refused, saying what the book lacks.

Distinctive terms are identifiers (`URLSession`, `ros2_control`, `16GB`) and capitalised words inside the
question (a run of them is one name: `Core Data`); English stop words and one- or two-letter words never are.
Plain uncommon words are not checked: a student's paraphrase ("hopelessness") is often absent from the book while
its answer is there. Measured with `python -m bench.eval_retrieval --prototypes` over five books (docs/retrieval.md):
no answerable question refused, in-domain unanswerable refusals up from 0-33 % to 83-92 % on four of them.

A term occurs when each of its indexed terms (`chains.sparse.terms`) is in the book's term set; a name of several
words must occur as that phrase. The vocabulary is read from the stored chunks in a background thread and read
again when the point count changes; until the first read is done the check is skipped.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from qdrant_client import QdrantClient

from chains.sparse import terms
from chains.vectorstore import CONTENT_KEY, VISIBLE

logger = logging.getLogger(__name__)

_STOP_TEXT = """a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
off on once only or other our ours ourselves out over own same she should so some such than that the their theirs
them themselves then there these they this those through to too under until up very was we were what when where
which while who whom why will with would you your yours yourself yourselves ok okay"""
STOP_WORDS = frozenset(_STOP_TEXT.split())  # shared with the term-check prototypes (bench/prototypes.py)
WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:[.\-+#'][A-Za-z0-9_]+)*")
_IDENTIFIER = re.compile(r"[a-z][A-Z]|[A-Z]{2,}[a-z]|[0-9_.]")
_ACRONYM = re.compile(r"^[A-Z]{3,}$")
_SCROLL_PAGE = 1000


@functools.cache
def english_words() -> frozenset[str]:
    """Whole words of the packaged embedding model's WordPiece vocabulary (about 20,000 common English words):
    an upper-case word that is one of them is emphasis ("the BEST time"), not an acronym."""
    from chains.embeddings import packaged_model_path

    try:
        vocab = packaged_model_path("all-MiniLM-L6-v2") / "vocab.txt"
        lines = vocab.read_text(encoding="utf-8").splitlines()
    except Exception:  # no packaged model here: every acronym counts
        return frozenset()
    return frozenset(line for line in lines if line.isalpha())


def is_identifier(word: str) -> bool:
    if _IDENTIFIER.search(word):
        return True
    return bool(_ACRONYM.match(word)) and word.lower() not in english_words()


def distinctive_terms(question: str) -> list[str]:
    """The question's identifiers and capitalised names, a run of capitalised words as one name."""
    found: list[str] = []
    name: list[str] = []
    words = [re.sub(r"'(s|t|re|ve|ll|d|m)$", "", m.group(0)) for m in WORD.finditer(question.replace("\u2019", "'"))]
    for position, word in enumerate(words):
        lowered = word.lower()
        capitalised = word[0].isupper() and position > 0 and lowered not in STOP_WORDS and len(word) > 1
        if capitalised and not is_identifier(word) and not _ACRONYM.match(word):
            name.append(word)
            continue
        if name:
            found.append(" ".join(name))
            name = []
        if lowered in STOP_WORDS or len(word) < 3:
            continue
        if is_identifier(word):
            found.append(word)
    if name:
        found.append(" ".join(name))
    return found


@dataclass(frozen=True)
class Vocabulary:
    """What the book's chunks say, for presence checks: its indexed terms and their running text."""

    terms: frozenset[str]
    text: str  # every chunk's indexed terms in order, space-separated: phrases are looked up in it

    @classmethod
    def of(cls, texts: Iterable[str]) -> Vocabulary:
        streams = [" ".join(terms(text)) for text in texts]
        return cls(frozenset(t for stream in streams for t in stream.split()), " \n ".join(streams))

    def has(self, term: str) -> bool:
        indexed = terms(term)
        if not indexed:
            return True  # nothing the book could be checked for
        if " " in term.strip():
            return f" {' '.join(indexed)} " in f" {self.text} "
        return all(t in self.terms for t in indexed)

    def missing(self, question: str) -> list[str]:
        """The question's distinctive terms the book never uses."""
        return [term for term in distinctive_terms(question) if not self.has(term)]


class BookVocabulary:
    """The collection's vocabulary, read in a background thread and again whenever its point count changes."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self._lock = threading.Lock()
        self._ready: tuple[int, Vocabulary] | None = None
        self._reading: int | None = None

    def current(self, client: QdrantClient) -> Vocabulary | None:
        """The vocabulary of the book as stored now, or None while it is being read (a read starts when the
        point count has changed)."""
        try:
            count = client.count(self.collection, exact=True).count
        except Exception as exc:  # the retrieval itself reports a store that is down
            logger.debug("book vocabulary: cannot count points: %s", exc)
            return self._ready[1] if self._ready else None
        with self._lock:
            ready = self._ready
            stale = ready is None or ready[0] != count
            if stale and self._reading != count:
                self._reading = count
                threading.Thread(target=self._read, args=(client, count), name="book-vocabulary", daemon=True).start()
        # A stale vocabulary may lack a chapter just added: no check until the new one is read.
        return None if ready is None or stale else ready[1]

    def read_now(self, client: QdrantClient) -> Vocabulary:
        """Read it in this thread (start-up warm-up, tests)."""
        count = client.count(self.collection, exact=True).count
        self._read(client, count)
        assert self._ready is not None
        return self._ready[1]

    def _read(self, client: QdrantClient, count: int) -> None:
        try:
            vocabulary = Vocabulary.of(stored_texts(client, self.collection))
        except Exception as exc:
            logger.warning("could not read the book's vocabulary (the term check is off until it can): %s", exc)
            with self._lock:
                self._reading = None
            return
        with self._lock:
            self._ready = (count, vocabulary)
            if self._reading == count:
                self._reading = None


def stored_texts(client: QdrantClient, collection: str) -> list[str]:
    texts: list[str] = []
    offset = None
    while True:
        records, offset = client.scroll(
            collection,
            scroll_filter=VISIBLE,
            limit=_SCROLL_PAGE,
            offset=offset,
            with_payload=[CONTENT_KEY],
            with_vectors=False,
        )
        texts.extend(str((r.payload or {}).get(CONTENT_KEY, "")) for r in records)
        if offset is None:
            return texts
