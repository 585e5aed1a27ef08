"""Sentence-level re-scoring of the fused candidates: a passage is also judged by its best sentence.

A student's paraphrase often matches one sentence of the answering passage well and the passage as a whole only
moderately (its other sentences, and the heading path embedded with it, dilute its vector). So the first
RETRIEVAL_SENTENCE_RESCORE fused candidates are re-ordered by the sum of two scores, each mapped onto [0, 1] by
distribution-based normalisation over those candidates (Qdrant's DBSF rule, as the fusion itself does): the fused
score, and the cosine between the question and the passage's best sentence. No weight to tune. A question naming
an identifier is left to the fused order: the sentence score mostly repeats the dense one, and doubling the dense
side undoes the sparse list's exact match (`ZX-4471` among near-identical error-code passages).

The sentence vectors come from the embedding model already loaded, computed **at ingest** (embedding them per
question costs seconds on two cores) and stored in the chunk's own payload under `sentence_vectors`, int8
quantised (about 3 KB a chunk): no new vector in the collection's layout, so it works on the embedded store, the
edge engine and a server alike, and the vectors go when the chunk goes. Re-scoring is skipped for a query whose
candidates do not all carry them, so a store ingested before this ranks as before. Sentences are split as
`chains.highlights` splits them (`split_sentences`), in the same order.

Measured over five books (docs/retrieval.md, "Sentence re-scoring"): MRR up on four books, the humanoid book level.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from chains.book_terms import distinctive_terms, is_identifier
from chains.highlights import split_sentences

SENTENCE_KEY = "sentence_vectors"
_FORMAT = "int8-v1"


def sentences_of(text: str) -> list[str]:
    """The passage's sentences, as `chains.highlights` splits them (same order, same cap)."""
    return [sentence.text for sentence in split_sentences(text)]


def encode(vectors: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Sentence vectors as a compact payload value: each row scaled to int8 (one float32 scale a row), base64."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or not len(matrix):
        return {"format": _FORMAT, "dim": 0, "rows": 0, "data": "", "scales": ""}
    matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    scales = np.maximum(np.abs(matrix).max(axis=1), 1e-12) / 127.0
    quantised = np.round(matrix / scales[:, None]).astype(np.int8)
    return {
        "format": _FORMAT,
        "dim": int(matrix.shape[1]),
        "rows": int(matrix.shape[0]),
        "data": base64.b64encode(quantised.tobytes()).decode("ascii"),
        "scales": base64.b64encode(scales.astype(np.float32).tobytes()).decode("ascii"),
    }


def decode(value: object) -> np.ndarray | None:
    """The unit sentence vectors of a payload value (rows x dim, float32); None when absent or not readable."""
    if not isinstance(value, Mapping) or value.get("format") != _FORMAT:
        return None
    try:
        rows, dim = int(value["rows"]), int(value["dim"])
        if not rows:
            return None
        quantised = np.frombuffer(base64.b64decode(value["data"]), dtype=np.int8).reshape(rows, dim)
        scales = np.frombuffer(base64.b64decode(value["scales"]), dtype=np.float32)
        return quantised.astype(np.float32) * scales[:, None]
    except (KeyError, TypeError, ValueError):
        return None


def sentence_payloads(
    texts: Sequence[str], embed: Callable[[list[str]], list[list[float]]]
) -> list[dict[str, Any] | None]:
    """For each chunk text, its sentences' vectors as a payload value (None for a text with no sentence); all
    sentences of all texts embedded in one call."""
    split = [sentences_of(text) for text in texts]
    flat = [sentence for sentences in split for sentence in sentences]
    vectors = embed(flat) if flat else []
    out: list[dict[str, Any] | None] = []
    offset = 0
    for sentences in split:
        own = vectors[offset : offset + len(sentences)]
        offset += len(sentences)
        out.append(encode(own) if own else None)
    return out


def _normalised(scores: np.ndarray) -> np.ndarray:
    """Qdrant's DBSF normalisation: [mean - 3 sd, mean + 3 sd] mapped onto [0, 1]."""
    if len(scores) < 2:
        return np.full(len(scores), 0.5)
    sd = float(scores.std(ddof=1))
    if sd == 0:
        return np.full(len(scores), 0.5)
    return np.asarray((scores - scores.mean() + 3 * sd) / (6 * sd))


def best_sentence_scores(query: Sequence[float], payloads: Sequence[Mapping[str, Any] | None]) -> list[float] | None:
    """Each candidate's best sentence cosine to the query; None if some candidate has no sentence vectors."""
    q = np.asarray(query, dtype=np.float32)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    best = []
    for payload in payloads:
        matrix = decode((payload or {}).get(SENTENCE_KEY))
        if matrix is None or matrix.shape[1] != len(q):
            return None
        best.append(float((matrix @ q).max()))
    return best


def applies_to(question: str) -> bool:
    """Whether to re-score for this question: not when it names an identifier (`ZX-4471`, `URLSession`), which
    the sparse list matches exactly and a sentence's vector barely tells apart from its neighbours'."""
    return not any(is_identifier(term) for term in distinctive_terms(question))


def rescored_order(fused: Sequence[float], best_sentence: Sequence[float]) -> list[int]:
    """The candidates' indices by normalised fused score plus normalised best-sentence score (ties: fused order)."""
    total = _normalised(np.asarray(fused, dtype=np.float64)) + _normalised(np.asarray(best_sentence, dtype=np.float64))
    return sorted(range(len(fused)), key=lambda i: (-total[i], i))
