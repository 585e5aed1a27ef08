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
import hashlib
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np

from chains.book_terms import distinctive_terms, is_identifier
from chains.highlights import split_sentences

SENTENCE_KEY = "sentence_vectors"
_FORMAT = "int8-v1"


def sentences_of(text: str) -> list[str]:
    """The passage's sentences, as `chains.highlights` splits them (same order, same cap)."""
    return [sentence.text for sentence in split_sentences(text)]


def quantise(vectors: Sequence[Sequence[float]] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row made unit length and scaled to int8: the rows (int8) and one float32 scale a row. Row by row, so a
    sentence's row is the same whichever chunk, batch or run it is quantised in."""
    matrix = np.asarray(vectors, dtype=np.float32)
    matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    scales = (np.maximum(np.abs(matrix).max(axis=1), 1e-12) / 127.0).astype(np.float32)
    return np.round(matrix / scales[:, None]).astype(np.int8), scales


def pack(quantised: np.ndarray, scales: np.ndarray) -> dict[str, Any]:
    """Quantised rows and their scales as a compact payload value (base64)."""
    if quantised.ndim != 2 or not len(quantised):
        return {"format": _FORMAT, "dim": 0, "rows": 0, "data": "", "scales": ""}
    return {
        "format": _FORMAT,
        "dim": int(quantised.shape[1]),
        "rows": int(quantised.shape[0]),
        "data": base64.b64encode(np.ascontiguousarray(quantised, dtype=np.int8).tobytes()).decode("ascii"),
        "scales": base64.b64encode(np.asarray(scales, dtype=np.float32).tobytes()).decode("ascii"),
    }


def encode(vectors: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Sentence vectors as a compact payload value: each row scaled to int8 (one float32 scale a row), base64."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or not len(matrix):
        return pack(np.empty((0, 0), dtype=np.int8), np.empty(0, dtype=np.float32))
    return pack(*quantise(matrix))


def unpack(value: object) -> tuple[np.ndarray, np.ndarray] | None:
    """The int8 rows and scales of a payload value; None when absent, empty or not readable."""
    if not isinstance(value, Mapping) or value.get("format") != _FORMAT:
        return None
    try:
        rows, dim = int(value["rows"]), int(value["dim"])
        if not rows:
            return None
        quantised = np.frombuffer(base64.b64decode(value["data"]), dtype=np.int8).reshape(rows, dim)
        scales = np.frombuffer(base64.b64decode(value["scales"]), dtype=np.float32)
        if scales.shape != (rows,):
            return None
        return quantised, scales
    except (KeyError, TypeError, ValueError):
        return None


def decode(value: object) -> np.ndarray | None:
    """The unit sentence vectors of a payload value (rows x dim, float32); None when absent or not readable."""
    unpacked = unpack(value)
    if unpacked is None:
        return None
    quantised, scales = unpacked
    matrix: np.ndarray = quantised.astype(np.float32) * scales[:, None]
    return matrix


# A sentence's stored form: its int8 row and scale (what `pack` writes for it).
Row = tuple[np.ndarray, np.float32]


def sentences_digest(sentences: Sequence[str]) -> str:
    """A short hash of a chunk's sentence texts, stored beside their rows: it proves which text each row is for."""
    return hashlib.sha256("\x00".join(sentences).encode("utf-8")).hexdigest()[:16]


def stored_rows(text: str, value: object) -> dict[str, Row]:
    """A stored chunk's sentence rows by sentence text, for a later ingest to reuse; {} unless the payload's digest
    says the rows were computed for exactly the sentences `sentences_of(text)` gives today (a changed split, or a
    payload from before the digest, gives nothing)."""
    unpacked = unpack(value)
    if unpacked is None or not isinstance(value, Mapping):
        return {}
    sentences = sentences_of(text)
    quantised, scales = unpacked
    if value.get("sentences") != sentences_digest(sentences) or len(quantised) != len(sentences):
        return {}
    return {sentence: (quantised[i], scales[i]) for i, sentence in enumerate(sentences)}


def sentence_payloads(
    texts: Sequence[str],
    embed: Callable[[list[str]], list[list[float]]],
    known: MutableMapping[str, Row] | None = None,
) -> list[dict[str, Any] | None]:
    """For each chunk text, its sentences' vectors as a payload value (None for a text with no sentence).

    Each distinct sentence is embedded once, all in one call: overlapping chunks share sentences (8-9 % of a
    book's, docs/benchmarks.md). `known` maps sentence texts to rows already quantised (earlier groups of the same
    run, a changed file's stored chunks: `stored_rows`): those are not embedded again, and the new ones are added
    to it. The rows are the same either way, since each is quantised on its own. Each value also carries the digest
    of its chunk's sentences (`sentences_digest`), so that a later run can tell which row is which sentence's."""
    split = [sentences_of(text) for text in texts]
    distinct = dict.fromkeys(s for sentences in split for s in sentences)
    rows: dict[str, Row] = {}
    if known is not None:
        rows = {s: row for s in distinct if (row := known.get(s)) is not None}
    missing = [s for s in distinct if s not in rows]
    if missing:
        quantised, scales = quantise(embed(missing))
        fresh = dict(zip(missing, zip(quantised, scales, strict=True), strict=True))
        rows.update(fresh)
        if known is not None:
            known.update(fresh)
    out: list[dict[str, Any] | None] = []
    for sentences in split:
        if not sentences:
            out.append(None)
            continue
        own = [rows[s] for s in sentences]
        value = pack(np.stack([q for q, _ in own]), np.array([scale for _, scale in own], dtype=np.float32))
        out.append({**value, "sentences": sentences_digest(sentences)})
    return out


def dbsf_normalised(scores: np.ndarray) -> np.ndarray:
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
    total = dbsf_normalised(np.asarray(fused, dtype=np.float64)) + dbsf_normalised(
        np.asarray(best_sentence, dtype=np.float64)
    )
    return sorted(range(len(fused)), key=lambda i: (-total[i], i))
