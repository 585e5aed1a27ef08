"""Bench-only prototypes for issue 19, measured by `python -m bench.eval_retrieval --prototypes` beside the
product's configurations; nothing here changes a product default.

- **Term check** (a refusal signal): a question whose *distinctive* terms do not occur in the book at all is
  refused, whatever the passages' cosine ("How do I mock requests with XCTest?" in a book that never names
  XCTest). A term is distinctive when it is an identifier (`URLSession`, `ros2_control`, `16GB`), a capitalised
  word inside the question (`Emerson`; a run of them is one name: `Core Data`, `John Brown`), or a word the
  embedding model's own WordPiece vocabulary does not hold whole (`kubernetes`, `cocoapods`): a rare word.
  English stop words and one- or two-letter words never are. A second variant counts only identifiers and
  names (no rare-word rule), since a paraphrase in plain but uncommon words ("leaky", "hopelessness") is not in
  the book either. A term occurs in the book when each of its indexed
  terms (`chains.sparse.terms`: lower-cased, lightly stemmed) is in the book's term set; a name of several words
  must occur as that phrase.
- **Candidate depth**: the default hybrid DBSF with 50 and 100 candidates per list instead of 20.
- **Heading match** (the heading path as its own signal, at query time only): the default's top 20, re-ordered
  by reciprocal rank fusion (constant 60, no weight to tune) of its own order and the order by how many of the
  question's indexed terms the passage's heading path holds (passages whose headings hold none are not in that
  second list); top 5 of that.
- **Sentence re-scoring** (with the embedding model already loaded): the default's top 10, each passage scored by
  its best sentence's cosine to the question, re-ordered by reciprocal rank fusion (constant 60) of the
  default's order and that score's order; top 5. Sentence vectors are cached across questions. Not in
  `PROTOTYPES`: it embeds every sentence of 10 passages per question. The product's re-scoring
  (chains/sentence_rescore.py, vectors stored at ingest, a normalised sum instead of RRF) measured better.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from qdrant_client import QdrantClient

from chains.book_terms import STOP_WORDS, WORD, Vocabulary, stored_texts
from chains.embeddings import packaged_model_path
from chains.retrieval import BookRetriever
from chains.sparse import terms

_IDENTIFIER = re.compile(r"[a-z][A-Z]|[A-Z]{2,}[a-z]|[0-9_.]|^[A-Z]{3,}$")


@cache
def wordpiece_words() -> frozenset[str]:
    """The whole words of the packaged embedding model's vocabulary (no `##` pieces, no [unused] slots)."""
    vocab = Path(packaged_model_path("all-MiniLM-L6-v2")) / "vocab.txt"
    return frozenset(
        line for line in vocab.read_text(encoding="utf-8").splitlines() if line.isalpha() and not line.startswith("#")
    )


def is_common(word: str, common: frozenset[str]) -> bool:
    """A lower-case word the vocabulary holds, itself or (for an inflected form or a compound) its base or parts."""
    if "-" in word:
        return all(is_common(part, common) for part in word.split("-") if part)
    candidates = {word}
    for suffix, replacement in (
        ("ies", "y"),
        ("es", ""),
        ("s", ""),
        ("ed", ""),
        ("ed", "e"),
        ("ing", ""),
        ("ing", "e"),
    ):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            candidates.add(word[: -len(suffix)] + replacement)
    if len(word) > 4 and word[-1] == word[-2]:  # "stopped" -> "stopp" -> "stop"
        candidates.add(word[:-1])
    return any(c in common for c in candidates) or any(c[:-1] in common for c in candidates if c[-2:-1] == c[-1:])


def distinctive_terms(question: str, common: frozenset[str] | None = None, rare_words: bool = True) -> list[str]:
    """The question's distinctive terms (see the module docstring), names of several words as one; without
    `rare_words`, only identifiers and capitalised names."""
    common = wordpiece_words() if common is None else common
    found: list[str] = []
    name: list[str] = []
    words = [re.sub(r"'(s|t|re|ve|ll|d|m)$", "", m.group(0)) for m in WORD.finditer(question.replace("\u2019", "'"))]
    for position, word in enumerate(words):
        lowered = word.lower()
        capitalised = word[0].isupper() and position > 0 and lowered not in STOP_WORDS and len(word) > 1
        if capitalised and not _IDENTIFIER.search(word):
            name.append(word)
            continue
        if name:
            found.append(" ".join(name))
            name = []
        if lowered in STOP_WORDS or len(word) < 3:
            continue
        if _IDENTIFIER.search(word) or (rare_words and not is_common(lowered, common)):
            found.append(word)
    if name:
        found.append(" ".join(name))
    return found


@dataclass(frozen=True)
class BookVocabulary(Vocabulary):
    """The product's presence checks (chains.book_terms), with this module's wider notion of a distinctive term."""

    def missing(self, question: str, rare_words: bool = True) -> list[str]:  # type: ignore[override]
        return [term for term in distinctive_terms(question, rare_words=rare_words) if not self.has(term)]


Search = Callable[[str], list[Document]]


def term_check(
    client: QdrantClient, settings: Any, embeddings: Any, configs: dict[str, BookRetriever]
) -> dict[str, tuple[Search, Callable[[str], bool] | None]]:
    vocabulary = BookVocabulary.of(stored_texts(client, settings.qdrant_collection))
    default = configs["hybrid DBSF"]
    return {
        "hybrid DBSF + term check": (default.invoke, lambda q: bool(vocabulary.missing(q))),
        "hybrid DBSF + term check, names only": (
            default.invoke,
            lambda q: bool(vocabulary.missing(q, rare_words=False)),
        ),
    }


def candidate_depth(
    client: QdrantClient, settings: Any, embeddings: Any, configs: dict[str, BookRetriever]
) -> dict[str, tuple[Search, Callable[[str], bool] | None]]:
    default = configs["hybrid DBSF"]
    out: dict[str, tuple[Search, Callable[[str], bool] | None]] = {}
    for depth in (50, 100):
        retriever = default.model_copy(update={"min_candidates": depth})
        out[f"hybrid DBSF, {depth} candidates"] = (retriever.invoke, None)
    return out


def heading_match(
    client: QdrantClient, settings: Any, embeddings: Any, configs: dict[str, BookRetriever]
) -> dict[str, tuple[Search, Callable[[str], bool] | None]]:
    wide = configs["hybrid DBSF"].model_copy(update={"k": 20})
    k = configs["hybrid DBSF"].k

    def search(question: str) -> list[Document]:
        documents = wide.invoke(question)
        asked = set(terms(question))
        overlap = [len(asked & set(terms(" ".join(d.metadata.get("heading_path") or [])))) for d in documents]
        by_heading = sorted((i for i, n in enumerate(overlap) if n), key=lambda i: (-overlap[i], i))
        fused = {i: 1 / (60 + i + 1) for i in range(len(documents))}
        for position, i in enumerate(by_heading):
            fused[i] += 1 / (60 + position + 1)
        return [documents[i] for i in sorted(fused, key=lambda i: -fused[i])[:k]]

    return {"hybrid DBSF + heading match": (search, None)}


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def sentence_rescoring(
    client: QdrantClient, settings: Any, embeddings: Any, configs: dict[str, BookRetriever]
) -> dict[str, tuple[Search, Callable[[str], bool] | None]]:
    import numpy as np

    wide = configs["hybrid DBSF"].model_copy(update={"k": 10})
    k = configs["hybrid DBSF"].k
    cached: dict[str, Any] = {}

    def vectors(sentences: list[str]) -> Any:
        new = [x for x in dict.fromkeys(sentences) if x not in cached]
        if new:
            for sentence, vector in zip(new, embeddings.embed_documents(new), strict=True):
                cached[sentence] = np.asarray(vector, dtype=np.float32)
        return np.stack([cached[x] for x in sentences])

    def search(question: str) -> list[Document]:
        documents = wide.invoke(question)
        if not documents:
            return documents
        asked = np.asarray(embeddings.embed_query(question), dtype=np.float32)
        best = []
        for document in documents:
            sentences = [x.strip() for x in _SENTENCE.split(document.page_content) if len(x.strip()) > 20]
            best.append(float((vectors(sentences) @ asked).max()) if sentences else -1.0)
        by_sentence = sorted(range(len(documents)), key=lambda i: -best[i])
        fused = {i: 1 / (60 + i + 1) for i in range(len(documents))}
        for position, i in enumerate(by_sentence):
            fused[i] += 1 / (60 + position + 1)
        return [documents[i] for i in sorted(fused, key=lambda i: -fused[i])[:k]]

    return {"hybrid DBSF + sentence re-scoring": (search, None)}


PROTOTYPES = (term_check, candidate_depth, heading_match)
