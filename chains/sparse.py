"""A BM25-style sparse encoder, computed locally: words hashed to indices, saturated term frequencies as values.

Qdrant's IDF modifier on the collection's sparse vector multiplies in the inverse document frequency at query
time, so a passage's score for a query is BM25 without a vocabulary file or a model download. The encoder is
deterministic (CRC-32 of each term), so ingest and query agree in every process and across versions.

On purpose: compound tokens (`ROS_DOMAIN_ID`, `moisture-log`, `rclpy.init`, `16GB`) are kept whole *and* split
into their parts, so that an exact identifier matches strongly while "domain id" still matches its parts; the
stemmer is a handful of English suffix rules, light enough never to merge two identifiers.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass

from chains.attribution import without_attribution

# BM25's term-frequency saturation and length normalisation; the average passage length is a constant because
# chunks are made to a target size (CHUNK_SIZE tokens, about this many indexed terms at the default size).
K1 = 1.2
B = 0.75
AVERAGE_TERMS = 120.0

_COMPOUND = re.compile(r"[A-Za-z0-9_]+(?:[.\-:/+#][A-Za-z0-9_]+)*")
_PART = re.compile(r"[A-Za-z]+|[0-9]+(?:\.[0-9]+)?")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_STOPWORD_TEXT = """
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


@dataclass(frozen=True, slots=True)
class SparseEncoding:
    """Indices (sorted, unique) and their weights: the shape of Qdrant's `SparseVector`."""

    indices: list[int]
    values: list[float]

    def __bool__(self) -> bool:
        return bool(self.indices)


def stem(word: str) -> str:
    """A light English suffix stripper (plurals, -ing, -ed) for plain lowercase words of five letters or more."""
    if len(word) < 5 or not word.isalpha():
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    if word.endswith("ing") and len(word) >= 7:
        return word[:-3]
    if word.endswith("ed") and len(word) >= 6:
        return word[:-2]
    return word


def terms(text: str) -> list[str]:
    """The indexed terms of `text`, in order, repeated as often as they occur."""
    out: list[str] = []
    for match in _COMPOUND.finditer(text):
        token = match.group(0)
        lowered = token.lower()
        parts = [p.lower() for piece in _CAMEL.split(token) for p in _PART.findall(piece)]
        compound = len(parts) > 1 or not lowered.isalpha()
        if compound:
            out.append(lowered)  # the identifier as written: `ros_domain_id`, `16gb`, `moisture-log`
        for part in parts:
            if part in _STOPWORDS or (len(part) == 1 and part.isalpha()):
                continue
            if compound and part == lowered:
                continue  # a lone number: already counted whole
            out.append(stem(part))
    return out


def term_index(term: str) -> int:
    """A term's index in the sparse vector: a stable 32-bit hash (collisions are rare and only add noise)."""
    return zlib.crc32(term.encode("utf-8"))


def _encode(counts: Counter[str], document_terms: int | None) -> SparseEncoding:
    weights: dict[int, float] = {}
    for term, tf in counts.items():
        if document_terms is None:
            weight = 1.0
        else:
            norm = K1 * (1 - B + B * document_terms / AVERAGE_TERMS)
            weight = tf * (K1 + 1) / (tf + norm)
        index = term_index(term)
        weights[index] = weights.get(index, 0.0) + weight
    indices = sorted(weights)
    return SparseEncoding(indices, [round(weights[i], 6) for i in indices])


def encode_document(text: str) -> SparseEncoding:
    """BM25 document weights: term frequency saturated by K1 and normalised by the passage's length."""
    found = terms(text)
    return _encode(Counter(found), len(found))


def encode_query(text: str) -> SparseEncoding:
    """Query weights: each distinct term once (Qdrant applies IDF to these at search time), of the question
    without the name of whose view it asks (`without_attribution`)."""
    return _encode(Counter(set(terms(without_attribution(text)))), None)
