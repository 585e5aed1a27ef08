"""An in-memory copy of the collection's vectors that searches as Qdrant does, for the embedded store only.

On purpose: qdrant-client's local mode (the embedded store) searches in Python. At 5,000 chunks on this 2-core
machine it re-normalises every dense vector per query (~40 ms), evaluates a payload filter point by point
(~300 ms) and scores a sparse query in a per-point loop (~1 s); a Qdrant server does each in its own indexes in
about a millisecond. This index reads the stored vectors and the filterable fields once, then answers with numpy:
dense cosine top-n, and sparse top-n with Qdrant's own IDF formula over the same points, filters as masks. The
store still holds the data and returns the chosen points' payloads. The copy is read again when the collection's
point count changes or after `invalidate()` (the admin ingest calls it); the embedded store is open in one
process at a time, so no other writer can go unseen.

Each chapter is served all or nothing: a point carrying its file's hash and chunk count is searched only when
all the chunks of that version are stored. A write that failed midway (a full disk, a kill; the embedded store
persists point by point) can leave 9 of a new version's 11 chunks: they are not served, the previous complete
version is, until the next ingest completes the new one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from qdrant_client import QdrantClient, models
from threadpoolctl import threadpool_limits

from chains.sparse import SparseEncoding
from chains.vectorstore import DENSE_VECTOR, METADATA_KEY, SPARSE_VECTOR

# Few large pages: the embedded store sorts every point id on each scroll call.
_PAGE = 16_384


def limit_blas_threads() -> None:
    """One BLAS thread for this process: call once at start-up of a server.

    Requests are a server's parallelism. A multi-threaded BLAS on the small per-question numpy work of this index
    only makes its threads wait on each other: measured with 5,000 chunks on 2 busy cores, a search took 8 ms with
    2 BLAS threads and 3.4 ms with one. (PyTorch's own thread pool, used to embed documents, is not affected.)
    """
    threadpool_limits(limits=1, user_api="blas")


@dataclass(slots=True)
class _Postings:
    ids: list[str]
    # Filter fields as small integer codes per point (comparing ints, not strings, per query).
    source_code: dict[str, int]
    sources: np.ndarray
    chapter_code: dict[str, int]
    chapters: np.ndarray
    dense: np.ndarray  # unit rows (cosine = dot product); a point without a dense vector has a zero row
    sparse_rows: np.ndarray  # which points have a sparse vector: Qdrant's IDF counts only those
    rows: dict[int, np.ndarray]
    weights: dict[int, np.ndarray]
    point_count: int
    complete: np.ndarray  # the point belongs to a complete version of its file (or carries no file fields)

    def mask(self, sources: Sequence[str] | None, chapter: str | None) -> np.ndarray:
        keep = self.complete.copy()
        if sources:
            keep &= np.isin(self.sources, [self.source_code.get(s, -1) for s in sources])
        if chapter:
            keep &= self.chapters == self.chapter_code.get(chapter, -1)
        return keep


class LocalIndex:
    """Dense and sparse search over one collection's stored vectors, held in memory."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self._postings: _Postings | None = None
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        """Forget the index; the next search reads the collection again (call after writing to it)."""
        with self._lock:
            self._postings = None

    def load(self, client: QdrantClient) -> None:
        """Read the collection now if it changed since the last read (start-up warms the index with this)."""
        self._current(client)

    def _current(self, client: QdrantClient) -> _Postings:
        count = client.count(self.collection, exact=True).count
        with self._lock:
            if self._postings is None or self._postings.point_count != count:
                self._postings = _read(client, self.collection, count)
            return self._postings

    def dense(
        self,
        client: QdrantClient,
        vector: Sequence[float],
        limit: int,
        sources: Sequence[str] | None = None,
        chapter: str | None = None,
    ) -> list[tuple[str, float]]:
        """The best `limit` (point id, cosine) pairs, filtered."""
        postings = self._current(client)
        if not postings.ids:
            return []
        query = np.asarray(vector, dtype=np.float32)
        query /= max(float(np.linalg.norm(query)), 1e-12)
        scores = postings.dense @ query
        return _top(postings, scores, postings.mask(sources, chapter), limit)

    def sparse(
        self,
        client: QdrantClient,
        query: SparseEncoding,
        limit: int,
        sources: Sequence[str] | None = None,
        chapter: str | None = None,
    ) -> list[tuple[str, float]]:
        """The best `limit` (point id, score) pairs among points sharing a term with `query`, filtered."""
        postings = self._current(client)
        corpus = int(postings.sparse_rows.sum())
        if not corpus:
            return []
        scores = np.zeros(len(postings.ids), dtype=np.float32)
        touched = np.zeros(len(postings.ids), dtype=bool)
        for index, value in zip(query.indices, query.values, strict=True):
            rows = postings.rows.get(index)
            if rows is None:
                continue
            frequency = len(rows)
            idf = math.log((corpus - frequency + 0.5) / (frequency + 0.5) + 1)  # Qdrant's IDF modifier
            scores[rows] += np.float32(value * idf) * postings.weights[index]
            touched[rows] = True
        return _top(postings, scores, touched & postings.mask(sources, chapter), limit)


def _top(postings: _Postings, scores: np.ndarray, keep: np.ndarray, limit: int) -> list[tuple[str, float]]:
    candidates = np.flatnonzero(keep)
    if not len(candidates):
        return []
    if len(candidates) > limit:
        # The best `limit` without sorting them all (linear): every candidate above the limit-th score, then those
        # tied with it in the store's order, as a stable sort of every candidate would choose them.
        values = scores[candidates]
        boundary = -np.partition(-values, limit - 1)[limit - 1]
        above = candidates[values > boundary]
        tied = candidates[values == boundary][: limit - len(above)]
        candidates = np.concatenate([above, tied])
    best = candidates[np.argsort(-scores[candidates], kind="stable")]
    return [(postings.ids[i], float(scores[i])) for i in best]


def _read(client: QdrantClient, collection: str, point_count: int) -> _Postings:
    ids: list[str] = []
    sources: list[str] = []
    chapters: list[str] = []
    dense: list[Sequence[float] | None] = []
    has_sparse: list[bool] = []
    rows: dict[int, list[int]] = {}
    weights: dict[int, list[float]] = {}
    offset: models.ExtendedPointId | None = None
    fields = [f"{METADATA_KEY}.{name}" for name in ("source", "chapter", "file_hash", "chunk_count")]
    versions: dict[tuple[str, str], list[int]] = {}  # (source, file hash) -> rows
    expected: dict[tuple[str, str], object] = {}
    while True:
        points, offset = client.scroll(
            collection, limit=_PAGE, offset=offset, with_payload=fields, with_vectors=[DENSE_VECTOR, SPARSE_VECTOR]
        )
        for point in points:
            vectors = point.vector if isinstance(point.vector, dict) else {}
            row = len(ids)
            metadata = (point.payload or {}).get(METADATA_KEY) or {}
            ids.append(str(point.id))
            sources.append(str(metadata.get("source", "")))
            if metadata.get("file_hash") is not None:
                version = (sources[-1], str(metadata["file_hash"]))
                versions.setdefault(version, []).append(row)
                expected.setdefault(version, metadata.get("chunk_count"))
            chapters.append(str(metadata.get("chapter", "")))
            stored = vectors.get(DENSE_VECTOR)
            dense.append(stored if isinstance(stored, list) else None)  # type: ignore[arg-type]
            sparse = vectors.get(SPARSE_VECTOR)
            has_sparse.append(isinstance(sparse, models.SparseVector))
            if isinstance(sparse, models.SparseVector):
                for index, value in zip(sparse.indices, sparse.values, strict=True):
                    rows.setdefault(index, []).append(row)
                    weights.setdefault(index, []).append(value)
        if offset is None:
            break
    width = next((len(v) for v in dense if v), 1)
    matrix = np.zeros((len(ids), width), dtype=np.float32)
    for row, values in enumerate(dense):
        if values:
            matrix[row] = values  # numpy converts the list in C
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    complete = np.ones(len(ids), dtype=bool)
    for version, version_rows in versions.items():
        if expected[version] != len(version_rows):
            complete[version_rows] = False
    source_names, source_codes = np.unique(np.asarray(sources, dtype=object), return_inverse=True)
    chapter_names, chapter_codes = np.unique(np.asarray(chapters, dtype=object), return_inverse=True)
    return _Postings(
        ids,
        {str(name): code for code, name in enumerate(source_names)},
        source_codes.astype(np.int32),
        {str(name): code for code, name in enumerate(chapter_names)},
        chapter_codes.astype(np.int32),
        matrix,
        np.asarray(has_sparse, dtype=bool),
        {index: np.asarray(r, dtype=np.int64) for index, r in rows.items()},
        {index: np.asarray(w, dtype=np.float32) for index, w in weights.items()},
        point_count,
        complete,
    )
