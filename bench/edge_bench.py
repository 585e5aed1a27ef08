"""Qdrant Edge (qdrant-edge-py, Qdrant's Rust engine in-process) against today's embedded path, on the same data.

    .venv/bin/python -m bench.edge_bench                          # every part, sizes 1k,10k,100k
    .venv/bin/python -m bench.edge_bench --parts quality,offline  # one or more of: quality, latency, startup,
                                                                  # concurrency, offline
    .venv/bin/python -m bench.edge_bench --parts latency --sizes 1000,10000 --local-sizes 1000,10000

"Today's" embedded path, as measured for docs/benchmarks.md (commit 974a0c2, before the switch): qdrant-client's
local mode holding the points, `chains/local_index.py` searching an in-memory copy of them, `chains/sparse.py`
(the project's BM25-style vectors), `chains/retrieval.py` fusing in Python. That index and fusion are gone since
the edge engine became the embedded store; run at 974a0c2 to reproduce those columns. Here, since, "today" is
qdrant-client's local mode answering the same `query_points` request itself (its own Python search and fusion:
slower than the removed index). The edge path: one `EdgeShard` with the same dense
vectors, payloads and ids, searched by one `query` with two prefetches fused by the engine (RRF or DBSF), with
two sparse vectors side by side: the project's (`sparse`, the server path's today) and Qdrant's BM25 embedder
(`bm25`, `qdrant_edge.Bm25` with its defaults, the server's `Qdrant/bm25` configuration), both with the IDF modifier.

Data. Quality: the development books ingested by the project's indexer (real chunks, real embeddings), the
question sets of `bench/questions/`, the hit rule of `bench/eval_retrieval.py` (gold file and `answer_contains`),
k = 5. Scale (1k/10k/100k chunks): the humanoid book's real chunks and embeddings, duplicated: copy c of chunk j
has the chunk's text and payload (its source under `copyNNN/`) and its dense vector plus Gaussian noise (sd
0.03 a dimension, cosine ~0.75 to the original, then unit length), so the store has the clusters of a real book,
not uniform random vectors (on which HNSW does worst). The book's chunks, the question embeddings and the stores
are cached under `.bench-cache/edge/` and reused: the first run embeds the books (a minute or two) and writes the
stores (today's 100k local-mode store: about 15 minutes).

Measured: quality (hit@1/5, MRR@5) per engine and configuration; per size, p50/p95 of a search given the query
vector (sparse query encoding, the search, documents with scores) hybrid DBSF (the default), RRF, with a
`sources` filter, dense only, and the edge HNSW's recall@5 against exact search; start-up (a fresh process opens
the persisted store and answers a first query); concurrent queries while another thread upserts, deletes and (edge)
optimizes, counting errors and checking the final count; whether the BM25 embedder works with no network.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe
from langchain_core.documents import Document
from qdrant_client import QdrantClient, models

from bench import common
from bench.book_store import DEFAULT_BOOK
from bench.eval_retrieval import DEFAULT_DATASETS, OUT_OF_BOOK, Question, is_hit, load_questions
from chains.retrieval import BookRetriever, cosine_similarities, limit_blas_threads
from chains.settings import Settings
from chains.sparse import encode_query
from chains.vectorstore import DENSE_VECTOR, SPARSE_VECTOR, build_vector_store, ensure_collection, point_id

CACHE = common.CACHE_DIR / "edge"
RESULTS = common.ROOT / "bench" / "results"
K = 5
BM25_VECTOR = "bm25"
COLLECTION = "edge_bench"
NOISE_SD = 0.03
SCALE_BOOK = "humanoid_book"
PARTS = ("offline", "quality", "latency", "startup", "concurrency", "hnsw", "exact")
# eval_retrieval's sets, with the humanoid book where it really is (BENCH_BOOK), also from a git worktree.
DATASETS = {**DEFAULT_DATASETS, SCALE_BOOK: (DEFAULT_BOOK, DEFAULT_DATASETS[SCALE_BOOK][1])}


# -- data ------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class BookPoint:
    id: str
    dense: list[float]
    sparse: models.SparseVector | None  # the project's (chains.sparse), as ingest stored it
    payload: dict[str, Any]

    @property
    def embed_text(self) -> str:
        """What ingest embedded (heading path, then the text): the BM25 embedder reads the same words."""
        metadata = self.payload.get("metadata") or {}
        path = metadata.get("heading_path") or []
        text = str(self.payload.get("page_content", ""))
        return f"{' > '.join(path)}\n\n{text}" if path else text


def embeddings_model() -> Any:
    from chains.embeddings import LocalEmbeddings, packaged_model_path

    onnx_dir = Settings(_env_file=None).embedding_onnx_dir  # type: ignore[call-arg]
    return LocalEmbeddings(packaged_model_path("all-MiniLM-L6-v2"), cache_size=0, onnx_dir=onnx_dir)


def book_points(name: str, book: Path, embeddings: Callable[[], Any]) -> list[BookPoint]:
    """The book as the project's indexer stores it (cached: ingested once into a temporary local-mode store)."""
    cache = CACHE / f"{name}-points.pkl"
    if cache.exists():
        points: list[BookPoint] = pickle.loads(cache.read_bytes())
        return points
    from bench.eval_retrieval import ingest_project

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as folder:
        client = QdrantClient(path=folder)
        try:
            ingest_project(client, embeddings(), book, COLLECTION)
            records, _ = client.scroll(COLLECTION, limit=1_000_000, with_payload=True, with_vectors=True)
        finally:
            client.close()
    points = []
    for record in records:
        vectors = record.vector if isinstance(record.vector, dict) else {}
        sparse = vectors.get(SPARSE_VECTOR)
        points.append(
            BookPoint(
                str(record.id),
                [float(x) for x in vectors[DENSE_VECTOR]],  # type: ignore[union-attr]
                sparse if isinstance(sparse, models.SparseVector) else None,
                dict(record.payload or {}),
            )
        )
    points.sort(key=lambda p: (p.payload["metadata"]["source"], p.payload["metadata"].get("chunk_index", 0)))
    CACHE.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(points))
    print(f"{name}: {len(points)} chunks ingested and cached in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return points


def question_vectors(questions: Sequence[str], embeddings: Callable[[], Any]) -> dict[str, list[float]]:
    cache = CACHE / "questions.pkl"
    known: dict[str, list[float]] = pickle.loads(cache.read_bytes()) if cache.exists() else {}
    missing = [q for q in dict.fromkeys(questions) if q not in known]
    if missing:
        model = embeddings()
        for question, vector in zip(missing, model.embed_documents(missing), strict=True):
            known[question] = [float(x) for x in vector]
        CACHE.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps(known))
    return known


def scaled_points(base: Sequence[BookPoint], size: int) -> list[BookPoint]:
    """`size` points: the book's chunks, then noisy copies of them (see the module docstring)."""
    rng = np.random.default_rng(size)
    dense = np.asarray([p.dense for p in base], dtype=np.float32)
    out: list[BookPoint] = []
    for number in range(size):
        copy, j = divmod(number, len(base))
        original = base[j]
        if copy == 0:
            vector = dense[j]
            payload = original.payload
        else:
            noisy = dense[j] + rng.normal(0, NOISE_SD, dense.shape[1]).astype(np.float32)
            vector = noisy / np.linalg.norm(noisy)
            metadata = dict(original.payload["metadata"])
            metadata["source"] = f"copy{copy:03d}/{metadata['source']}"
            metadata["doc_id"] = f"{metadata.get('doc_id')}-copy{copy}"
            payload = {"page_content": original.payload["page_content"], "metadata": metadata}
        out.append(BookPoint(point_id(f"edge-bench-{number}"), vector.tolist(), original.sparse, payload))
    return out


# -- the two engines -------------------------------------------------------------------------------------------


def edge_config(dimension: int) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors={DENSE_VECTOR: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
        sparse_vectors={
            SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf),
            BM25_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf),
        },
    )


def edge_points(points: Sequence[BookPoint], bm25: qe.Bm25, cache: dict[str, qe.SparseVector]) -> list[qe.Point]:
    out = []
    for point in points:
        text = point.embed_text
        if text not in cache:
            cache[text] = bm25.embed_document(text)
        vector: dict[str, Any] = {DENSE_VECTOR: point.dense, BM25_VECTOR: cache[text]}
        if point.sparse is not None:
            vector[SPARSE_VECTOR] = qe.SparseVector(point.sparse.indices, point.sparse.values)
        out.append(qe.Point(point.id, vector, point.payload))
    return out


def write_edge(path: Path, points: Sequence[BookPoint], batch: int = 1000) -> qe.EdgeShard:
    """A new shard at `path` holding `points`, optimized (HNSW built where the segment is large enough)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    shard = qe.EdgeShard.create(str(path), edge_config(len(points[0].dense)))
    for field in ("metadata.source", "metadata.chapter"):
        shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
    bm25, cache = qe.Bm25(), {}
    for start in range(0, len(points), batch):
        shard.update(qe.UpdateOperation.upsert_points(edge_points(points[start : start + batch], bm25, cache)))
    shard.optimize()
    shard.flush()
    return shard


def local_points(points: Sequence[BookPoint]) -> list[models.PointStruct]:
    out = []
    for point in points:
        vector: dict[str, Any] = {DENSE_VECTOR: point.dense}
        if point.sparse is not None:
            vector[SPARSE_VECTOR] = point.sparse
        out.append(models.PointStruct(id=point.id, vector=vector, payload=point.payload))
    return out


def write_local(client: QdrantClient, points: Sequence[BookPoint], batch: int = 2000) -> None:
    settings = Settings(_env_file=None, qdrant_path=Path("unused"), qdrant_collection=COLLECTION)  # type: ignore[call-arg]
    ensure_collection(client, settings, len(points[0].dense))
    for start in range(0, len(points), batch):
        client.upsert(COLLECTION, local_points(points[start : start + batch]), wait=True)


def today_retriever(client: QdrantClient, **options: Any) -> BookRetriever:
    """The service's retriever on qdrant-client's local mode (the previous embedded store), which answers the
    query API itself."""
    settings = Settings(_env_file=None, qdrant_path=Path("unused"), qdrant_collection=COLLECTION)  # type: ignore[call-arg]
    store = build_vector_store(client, settings, _NoEmbeddings())
    return BookRetriever(vector_store=store, k=K, **options)


class _NoEmbeddings:
    """The bench gives every search its query vector; nothing here embeds."""

    def embed_query(self, text: str) -> list[float]:
        raise AssertionError("the bench passes query vectors")

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise AssertionError("the bench passes query vectors")


def today_search(retriever: BookRetriever) -> Callable[[list[float], str, dict[str, Any]], list[Document]]:
    def search(vector: list[float], text: str, call: dict[str, Any]) -> list[Document]:
        _, options = retriever._options(call)
        return retriever._search(vector, text, K, options)

    return search


def edge_filter(sources: Sequence[str] | None, chapter: str | None) -> qe.Filter | None:
    must: list[Any] = []
    if sources:
        must.append(qe.FieldCondition(key="metadata.source", match=qe.MatchAny(any=list(sources))))
    if chapter:
        must.append(qe.FieldCondition(key="metadata.chapter", match=qe.MatchValue(value=chapter)))
    return qe.Filter(must=must) if must else None


@dataclass(slots=True)
class EdgeSearch:
    """What `BookRetriever._search` does, with the engine doing the search and the fusion."""

    shard: qe.EdgeShard
    mode: str = "hybrid"
    fusion: str = "dbsf"
    sparse: str = BM25_VECTOR  # or SPARSE_VECTOR: the project's vectors
    bm25: qe.Bm25 | None = None
    exact: bool = False
    hnsw_ef: int | None = None  # the HNSW beam width (Qdrant's default: ef_construct, 100)

    def query_sparse(self, text: str) -> qe.SparseVector | None:
        if self.sparse == BM25_VECTOR:
            assert self.bm25 is not None
            encoded = self.bm25.embed_query(text)
            return encoded if encoded.indices else None
        own = encode_query(text)
        return qe.SparseVector(own.indices, own.values) if own else None

    def request(self, vector: list[float], text: str, call: dict[str, Any]) -> qe.QueryRequest:
        where = edge_filter(call.get("sources"), call.get("chapter"))
        params = qe.SearchParams(exact=self.exact, hnsw_ef=self.hnsw_ef) if self.exact or self.hnsw_ef else None
        sparse = self.query_sparse(text) if self.mode == "hybrid" else None
        if sparse is None:
            return qe.QueryRequest(
                limit=K,
                query=qe.Query.Nearest(vector, using=DENSE_VECTOR),
                filter=where,
                params=params,
                with_payload=True,
                with_vector=[DENSE_VECTOR],
            )
        candidates = max(4 * K, 20)
        fusion: Any = qe.Fusion.Dbsf() if self.fusion == "dbsf" else qe.Fusion.Rrf(k=2)
        return qe.QueryRequest(
            limit=K,
            prefetches=[
                qe.Prefetch(
                    limit=candidates,
                    query=qe.Query.Nearest(vector, using=DENSE_VECTOR),
                    filter=where,
                    params=params,
                ),
                qe.Prefetch(limit=candidates, query=qe.Query.Nearest(sparse, using=self.sparse), filter=where),
            ],
            query=fusion,
            with_payload=True,
            with_vector=[DENSE_VECTOR],
        )

    def __call__(self, vector: list[float], text: str, call: dict[str, Any]) -> list[Document]:
        points = self.shard.query(self.request(vector, text, call))
        stored = [list((p.vector or {})[DENSE_VECTOR]) for p in points]  # type: ignore[call-overload]
        documents = []
        for rank, (point, similarity) in enumerate(
            zip(points, cosine_similarities(vector, stored), strict=True), start=1
        ):
            payload = point.payload or {}
            metadata = dict(payload.get("metadata") or {})
            metadata.update(score=similarity, rank=rank, fusion_score=float(point.score))
            documents.append(
                Document(id=str(point.id), page_content=payload.get("page_content", ""), metadata=metadata)
            )
        return documents


# -- quality ---------------------------------------------------------------------------------------------------


def quality_of(
    search: Callable[[list[float], str, dict[str, Any]], list[Document]],
    questions: Sequence[Question],
    vectors: dict[str, list[float]],
) -> dict[str, Any]:
    ranks: list[int | None] = []
    top_scores = []
    for question in questions:
        documents = search(vectors[question.question], question.question, {})
        ranks.append(next((i for i, d in enumerate(documents, start=1) if is_hit(d, question)), None))
        top_scores.append(float(documents[0].metadata["score"]) if documents else 0.0)
    n = len(ranks)
    return {
        "questions": n,
        "hit@1": round(sum(1 for r in ranks if r == 1) / n, 3),
        "hit@5": round(sum(1 for r in ranks if r is not None) / n, 3),
        "mrr@5": round(sum(1 / r for r in ranks if r is not None) / n, 3),
        "ranks": ranks,
        "top_scores": [round(s, 4) for s in top_scores],
    }


TODAY_CONFIGS: dict[str, dict[str, Any]] = {
    "dense": {"mode": "dense"},
    "hybrid DBSF (the default)": {"mode": "hybrid", "fusion": "dbsf"},
    "hybrid RRF": {"mode": "hybrid", "fusion": "rrf"},
}
EDGE_CONFIGS: dict[str, dict[str, Any]] = {
    "dense": {"mode": "dense"},
    "hybrid DBSF, project sparse": {"fusion": "dbsf", "sparse": SPARSE_VECTOR},
    "hybrid RRF, project sparse": {"fusion": "rrf", "sparse": SPARSE_VECTOR},
    "hybrid DBSF, Qdrant BM25": {"fusion": "dbsf", "sparse": BM25_VECTOR},
    "hybrid RRF, Qdrant BM25": {"fusion": "rrf", "sparse": BM25_VECTOR},
}


def run_quality(embeddings: Callable[[], Any]) -> dict[str, Any]:
    out_of_book = load_questions(OUT_OF_BOOK)
    report: dict[str, Any] = {}
    for name, (book, questions_path) in DATASETS.items():
        questions = load_questions(questions_path)
        points = book_points(name, book, embeddings)
        vectors = question_vectors([q.question for q in [*questions, *out_of_book]], embeddings)
        rows: dict[str, Any] = {"chunks": len(points), "today": {}, "edge": {}}
        with tempfile.TemporaryDirectory(prefix="edge-quality-") as folder:
            client = QdrantClient(path=str(Path(folder) / "local"))
            shard = write_edge(Path(folder) / "edge", points)
            try:
                write_local(client, points)
                for label, options in TODAY_CONFIGS.items():
                    rows["today"][label] = quality_of(
                        today_search(today_retriever(client, **options)), questions, vectors
                    )
                bm25 = qe.Bm25()
                for label, options in EDGE_CONFIGS.items():
                    rows["edge"][label] = quality_of(EdgeSearch(shard, bm25=bm25, **options), questions, vectors)
                for engine, search in (
                    ("today", today_search(today_retriever(client))),
                    ("edge", EdgeSearch(shard, bm25=bm25)),
                ):
                    rows[f"{engine}_out_of_book_top_scores"] = quality_of(search, out_of_book, vectors)["top_scores"]
            finally:
                client.close()
                shard.close()
        report[name] = rows
    return report


# -- latency at scale ------------------------------------------------------------------------------------------


def scale_questions(embeddings: Callable[[], Any], count: int) -> tuple[list[str], dict[str, list[float]]]:
    questions = [q.question for path in (p for _, p in DATASETS.values()) for q in load_questions(path)]
    questions = (questions * (count // max(1, len(questions)) + 1))[:count]
    return questions, question_vectors(questions, embeddings)


def edge_store(size: int, base: Sequence[BookPoint]) -> tuple[Path, float | None]:
    path = CACHE / f"edge-{size}" / "shard"
    done = path.parent / "complete"
    if done.exists():
        return path, None
    started = time.perf_counter()
    write_edge(path, scaled_points(base, size)).close()
    done.touch()
    return path, time.perf_counter() - started


def local_store(size: int, base: Sequence[BookPoint]) -> tuple[Path, float | None]:
    path = CACHE / f"local-{size}" / "qdrant"
    done = path.parent / "complete"
    if done.exists():
        return path, None
    started = time.perf_counter()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    client = QdrantClient(path=str(path))
    try:
        write_local(client, scaled_points(base, size))
    finally:
        client.close()
    done.touch()
    return path, time.perf_counter() - started


def timed(
    search: Callable[[list[float], str, dict[str, Any]], Any],
    questions: Sequence[str],
    vectors: dict[str, list[float]],
    call: dict[str, Any],
) -> dict[str, float]:
    for question in questions[:3]:  # warm-up
        search(vectors[question], question, call)
    times = []
    for question in questions:
        started = time.perf_counter()
        search(vectors[question], question, call)
        times.append(time.perf_counter() - started)
    return {
        "p50_ms": round(common.percentile(times, 50) * 1000, 2),
        "p95_ms": round(common.percentile(times, 95) * 1000, 2),
    }


def recall_at_k(
    shard: qe.EdgeShard, questions: Sequence[str], vectors: dict[str, list[float]], hnsw_ef: int | None = None
) -> dict[str, float]:
    """The HNSW dense search's top 5 against exact search's over the questions: the share of the same points, and
    how much lower the approximate 5th-best cosine is (near-duplicate copies make the first alone misleading)."""
    approximate = EdgeSearch(shard, mode="dense", hnsw_ef=hnsw_ef)
    exact = EdgeSearch(shard, mode="dense", exact=True)
    found, gaps = 0, []
    for question in questions:
        got = approximate(vectors[question], question, {})
        wanted = exact(vectors[question], question, {})
        found += len({d.id for d in got} & {d.id for d in wanted})
        gaps.append(wanted[-1].metadata["score"] - got[-1].metadata["score"])
    return {
        "recall@5": round(found / (K * len(questions)), 3),
        "mean_5th_cosine_gap": round(float(np.mean(gaps)), 4),
        "max_5th_cosine_gap": round(float(np.max(gaps)), 4),
    }


def run_latency(
    sizes: Sequence[int], local_sizes: Sequence[int], queries: int, embeddings: Callable[[], Any]
) -> list[dict[str, Any]]:
    base = book_points(SCALE_BOOK, DATASETS[SCALE_BOOK][0], embeddings)
    questions, vectors = scale_questions(embeddings, queries)
    source_filter = {"sources": [base[0].payload["metadata"]["source"]]}
    rows = []
    for size in sizes:
        row: dict[str, Any] = {"chunks": size}
        path, written = edge_store(size, base)
        shard = qe.EdgeShard.load(str(path))
        try:
            info = shard.info()
            row["edge"] = {
                "written_s": None if written is None else round(written, 1),
                "segments": info.segments_count,
                "indexed_vectors": info.indexed_vectors_count,
                "dense_vs_exact": recall_at_k(shard, questions, vectors),
                "dense_vs_exact_ef256": recall_at_k(shard, questions, vectors, 256),
            }
            bm25 = qe.Bm25()
            for label, search, call in (
                ("hybrid DBSF, Qdrant BM25", EdgeSearch(shard, bm25=bm25), {}),
                ("hybrid RRF, Qdrant BM25", EdgeSearch(shard, fusion="rrf", bm25=bm25), {}),
                ("hybrid DBSF, project sparse", EdgeSearch(shard, sparse=SPARSE_VECTOR), {}),
                ("hybrid DBSF + sources filter", EdgeSearch(shard, bm25=bm25), source_filter),
                ("dense", EdgeSearch(shard, mode="dense"), {}),
                ("hybrid DBSF, Qdrant BM25, hnsw_ef 256", EdgeSearch(shard, bm25=bm25, hnsw_ef=256), {}),
                ("hybrid DBSF, Qdrant BM25, exact dense", EdgeSearch(shard, bm25=bm25, exact=True), {}),
                ("dense, exact (no HNSW)", EdgeSearch(shard, mode="dense", exact=True), {}),
            ):
                row["edge"][label] = timed(search, questions, vectors, call)
        finally:
            shard.close()
        if size in local_sizes:
            path, written = local_store(size, base)
            started = time.perf_counter()
            client = QdrantClient(path=str(path))
            row["today"] = {"written_s": None if written is None else round(written, 1)}
            row["today"]["open_s"] = round(time.perf_counter() - started, 2)
            try:
                hybrid = today_retriever(client)
                for label, search, call in (
                    ("hybrid DBSF (the default)", today_search(hybrid), {}),
                    ("hybrid RRF", today_search(today_retriever(client, fusion="rrf")), {}),
                    ("hybrid DBSF + sources filter", today_search(hybrid), source_filter),
                    ("dense", today_search(today_retriever(client, mode="dense")), {}),
                ):
                    row["today"][label] = timed(search, questions, vectors, call)
            finally:
                client.close()
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


def mixed_points(base: Sequence[BookPoint], size: int) -> list[BookPoint]:
    """`size` points whose dense vectors mix two of the book's chunks (weights 0.5-1 and the rest) plus a little
    noise: a diverse collection in the book's region of the space, with none of the near-duplicate clusters of
    `scaled_points` (a collection of many copies is the hard case for HNSW)."""
    rng = np.random.default_rng(1)
    dense = np.asarray([p.dense for p in base], dtype=np.float32)
    out = []
    for number in range(size):
        if number < len(base):
            vector = dense[number]
        else:
            i, j = rng.integers(len(base), size=2)
            weight = rng.uniform(0.5, 1.0)
            vector = (
                weight * dense[i] + (1 - weight) * dense[j] + rng.normal(0, 0.02, dense.shape[1]).astype(np.float32)
            )
            vector /= np.linalg.norm(vector)
        original = base[number % len(base)]
        out.append(BookPoint(point_id(f"edge-mix-{number}"), vector.tolist(), original.sparse, original.payload))
    return out


def run_hnsw(sizes: Sequence[int], embeddings: Callable[[], Any]) -> list[dict[str, Any]]:
    """The HNSW's dense top 5 against exact search, for the humanoid book's questions, on both kinds of data."""
    base = book_points(SCALE_BOOK, DATASETS[SCALE_BOOK][0], embeddings)
    questions = [q.question for q in load_questions(DATASETS[SCALE_BOOK][1])]
    vectors = question_vectors(questions, embeddings)
    rows = []
    for size in sizes:
        row: dict[str, Any] = {"chunks": size}
        shard = qe.EdgeShard.load(str(edge_store(size, base)[0]))
        try:
            row["noisy copies"] = recall_at_k(shard, questions, vectors)
            row["noisy copies, hnsw_ef 256"] = recall_at_k(shard, questions, vectors, 256)
        finally:
            shard.close()
        with tempfile.TemporaryDirectory(prefix="edge-hnsw-") as folder:
            shard = write_edge(Path(folder) / "shard", mixed_points(base, size))
            try:
                row["mixed chunks"] = recall_at_k(shard, questions, vectors)
                row["mixed chunks, hnsw_ef 256"] = recall_at_k(shard, questions, vectors, 256)
            finally:
                shard.close()
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


def run_exact(sizes: Sequence[int], efs: Sequence[int], embeddings: Callable[[], Any]) -> list[dict[str, Any]]:
    """The product's store and retriever (`build_qdrant_client`, `collection_layout`, `BookRetriever`) at each size,
    with Qdrant's own indexing threshold (HNSW above ~6,600 chunks) and with QDRANT_EXACT_UP_TO_CHUNKS (the
    default, 20,000): dense recall@5 against exact search over both question sets, and hybrid/dense p50/p95 of
    `_search` given the vector.
    Data: `mixed_points` (the book's region of the space, no near-duplicate clusters) and, to 20,000, the noisy
    copies of `scaled_points` as well (HNSW's hard case)."""
    from chains.edge_client import EdgeClient
    from chains.vectorstore import build_qdrant_client

    base = book_points(SCALE_BOOK, DATASETS[SCALE_BOOK][0], embeddings)
    # Both question sets: the sample book's questions land in sparse regions of this data, HNSW's hard case.
    questions = [q.question for path in (p for _, p in DATASETS.values()) for q in load_questions(path)]
    vectors = question_vectors(questions, embeddings)
    rows = []
    for size in sizes:
        kinds = {"mixed chunks": mixed_points}
        if size <= 20_000:
            kinds["noisy copies"] = scaled_points
        for kind, make in kinds.items():
            points = local_points(make(base, size))
            for threshold in (0, 20_000):
                with tempfile.TemporaryDirectory(prefix="edge-exact-") as folder:
                    settings = Settings(  # type: ignore[call-arg]
                        _env_file=None,
                        qdrant_path=Path(folder),
                        qdrant_collection=COLLECTION,
                        qdrant_exact_up_to_chunks=threshold,
                    )
                    client = build_qdrant_client(settings)
                    try:
                        assert isinstance(client, EdgeClient)
                        ensure_collection(client, settings, len(points[0].vector[DENSE_VECTOR]))  # type: ignore[index]
                        started = time.perf_counter()
                        for start in range(0, len(points), 1000):
                            client.upsert(COLLECTION, points[start : start + 1000])
                        client.optimize(COLLECTION)
                        row: dict[str, Any] = {
                            "chunks": size,
                            "data": kind,
                            "exact_up_to_chunks": threshold or "Qdrant's default",
                            "written_s": round(time.perf_counter() - started, 1),
                        }
                        store = build_vector_store(client, settings, _NoEmbeddings())
                        for ef in [None, *efs] if threshold == 0 else [None]:
                            dense = BookRetriever(vector_store=store, k=K, mode="dense", hnsw_ef=ef)
                            hybrid = BookRetriever(vector_store=store, k=K, hnsw_ef=ef)
                            label = "" if ef is None else f", hnsw_ef {ef}"
                            row[f"recall@5{label}"] = product_recall(client, dense, questions, vectors)
                            row[f"hybrid{label}"] = timed(today_search(hybrid), questions, vectors, {})
                            row[f"dense{label}"] = timed(today_search(dense), questions, vectors, {})
                    finally:
                        client.close()
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    return rows


def product_recall(
    client: QdrantClient, dense: BookRetriever, questions: Sequence[str], vectors: dict[str, list[float]]
) -> float:
    """The retriever's dense top 5 against Qdrant's exact search (`SearchParams(exact=True)`)."""
    found = 0
    for question in questions:
        got = dense._search(vectors[question], question, K, dense._options({})[1])
        wanted = client.query_points(
            COLLECTION,
            query=vectors[question],
            using=DENSE_VECTOR,
            limit=K,
            search_params=models.SearchParams(exact=True),
            with_payload=["metadata"],
        ).points
        got_ids = {d.id for d in got}
        found += sum(1 for p in wanted if str((p.payload or {})["metadata"].get("doc_id", p.id)) in got_ids)
    return round(found / (K * len(questions)), 3)


# -- start-up --------------------------------------------------------------------------------------------------

_EDGE_STARTUP = """
import json, sys, time
started = time.perf_counter()
import qdrant_edge as qe
imported = time.perf_counter()
shard = qe.EdgeShard.load(sys.argv[1])
opened = time.perf_counter()
bm25 = qe.Bm25()
vector = json.loads(sys.argv[2])
request = qe.QueryRequest(limit=5, prefetches=[
    qe.Prefetch(limit=20, query=qe.Query.Nearest(vector, using="dense")),
    qe.Prefetch(limit=20, query=qe.Query.Nearest(bm25.embed_query(sys.argv[3]), using="bm25")),
], query=qe.Fusion.Dbsf(), with_payload=True, with_vector=["dense"])
points = shard.query(request)
answered = time.perf_counter()
print(json.dumps({"import_s": imported - started, "load_s": opened - imported, "first_query_s": answered - opened,
                  "total_s": answered - started, "points": len(points)}))
"""

_TODAY_STARTUP = """
import json, sys, time
started = time.perf_counter()
from pathlib import Path
from qdrant_client import QdrantClient
from bench.edge_bench import today_search, today_retriever
imported = time.perf_counter()
client = QdrantClient(path=sys.argv[1])
opened = time.perf_counter()
retriever = today_retriever(client)
documents = today_search(retriever)(json.loads(sys.argv[2]), sys.argv[3], {})
answered = time.perf_counter()
print(json.dumps({"import_s": imported - started, "load_s": opened - imported, "first_query_s": answered - opened,
                  "total_s": answered - started, "points": len(documents)}))
"""


def run_startup(
    sizes: Sequence[int], local_sizes: Sequence[int], embeddings: Callable[[], Any]
) -> list[dict[str, Any]]:
    """A fresh Python process opens the persisted store and answers one hybrid query (the files may be in the OS
    page cache: the bench wrote or read them shortly before, as a restarted server would find them)."""
    base = book_points(SCALE_BOOK, DATASETS[SCALE_BOOK][0], embeddings)
    questions, vectors = scale_questions(embeddings, 1)
    rows = []
    for size in sizes:
        row: dict[str, Any] = {"chunks": size}
        targets = [("edge", edge_store(size, base)[0], _EDGE_STARTUP)]
        if size in local_sizes:
            targets.append(("today", local_store(size, base)[0], _TODAY_STARTUP))
        for engine, path, script in targets:
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", script, str(path), json.dumps(vectors[questions[0]]), questions[0]],
                capture_output=True,
                text=True,
                check=True,
                cwd=common.ROOT,
            )
            measured = {k: round(v, 3) if isinstance(v, float) else v for k, v in json.loads(done.stdout).items()}
            measured["process_s"] = round(time.perf_counter() - started, 3)
            row[engine] = measured
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


# -- concurrency -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Load:
    queries: int = 0
    empty: int = 0
    errors: int = 0
    first_error: str = ""

    def failed(self, exc: Exception) -> None:
        self.errors += 1
        self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"[:300]


def hammer(
    search: Callable[[list[float], str, dict[str, Any]], list[Document]],
    write: Callable[[Sequence[BookPoint]], None],
    delete: Callable[[Sequence[str]], None],
    count: Callable[[], int],
    initial: Sequence[BookPoint],
    new: Sequence[BookPoint],
    questions: Sequence[str],
    vectors: dict[str, list[float]],
    readers: int,
    after_writes: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """`readers` threads query until one writer has upserted `new` in batches, deleted a third of `initial` and
    (edge) optimized; then the count must be exactly what was written minus what was deleted."""
    stop = threading.Event()
    loads = [Load() for _ in range(readers)]
    writer = Load()

    def read(load: Load, offset: int) -> None:
        i = offset
        while not stop.is_set():
            question = questions[i % len(questions)]
            i += 1
            try:
                if not search(vectors[question], question, {}):
                    load.empty += 1
                load.queries += 1
            except Exception as exc:
                load.failed(exc)

    gone = [p.id for p in initial[: len(initial) // 3]]

    def writes() -> None:
        try:
            for start in range(0, len(new), 100):
                write(new[start : start + 100])
                writer.queries += 1
            for start in range(0, len(gone), 100):
                delete(gone[start : start + 100])
                writer.queries += 1
            if after_writes is not None:
                after_writes()
        except Exception as exc:
            writer.failed(exc)
        finally:
            stop.set()

    started = time.perf_counter()
    threads = [threading.Thread(target=read, args=(load, n * 7)) for n, load in enumerate(loads)]
    threads.append(threading.Thread(target=writes))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    expected = len(initial) + len(new) - len(gone)
    try:
        final: int | str = count()
    except Exception as exc:
        final = f"{type(exc).__name__}: {exc}"
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "readers": readers,
        "queries": sum(load.queries for load in loads),
        "query_errors": sum(load.errors for load in loads),
        "empty_results": sum(load.empty for load in loads),
        "first_query_error": next((load.first_error for load in loads if load.first_error), ""),
        "write_batches": writer.queries,
        "write_errors": writer.errors,
        "first_write_error": writer.first_error,
        "expected_count": expected,
        "final_count": final,
    }


def run_concurrency(size: int, readers: int, embeddings: Callable[[], Any], today: bool = True) -> dict[str, Any]:
    base = book_points(SCALE_BOOK, DATASETS[SCALE_BOOK][0], embeddings)
    questions, vectors = scale_questions(embeddings, 60)
    everything = scaled_points(base, size + 2000)
    initial, new = everything[:size], everything[size:]
    report: dict[str, Any] = {"initial_points": size, "upserted": len(new), "deleted": size // 3}
    with tempfile.TemporaryDirectory(prefix="edge-concurrency-") as folder:
        shard = write_edge(Path(folder) / "edge", initial)
        bm25, cache = qe.Bm25(), {}
        try:
            report["edge"] = hammer(
                EdgeSearch(shard, bm25=bm25),
                lambda batch: shard.update(qe.UpdateOperation.upsert_points(edge_points(batch, bm25, cache))),
                lambda ids: shard.update(qe.UpdateOperation.delete_points(list(ids))),
                lambda: shard.count(qe.CountRequest(exact=True)),
                initial,
                new,
                questions,
                vectors,
                readers,
                after_writes=lambda: shard.optimize() and None,
            )
        finally:
            shard.close()
        if not today:
            return report
        client = QdrantClient(path=str(Path(folder) / "local"))
        try:
            write_local(client, initial)
            retriever = today_retriever(client)

            def write_today(batch: Sequence[BookPoint]) -> None:
                client.upsert(COLLECTION, local_points(batch), wait=True)

            def delete_today(ids: Sequence[str]) -> None:
                client.delete(COLLECTION, models.PointIdsList(points=list(ids)), wait=True)

            report["today"] = hammer(
                today_search(retriever),
                write_today,
                delete_today,
                lambda: client.count(COLLECTION, exact=True).count,
                initial,
                new,
                questions,
                vectors,
                readers,
            )
        finally:
            client.close()
    return report


# -- no network ------------------------------------------------------------------------------------------------

_OFFLINE = """
import json, os, qdrant_edge as qe
bm25 = qe.Bm25()
document = bm25.embed_document("The ROS_DOMAIN_ID variable isolates ROS 2 networks; robots walking on two legs.")
query = bm25.embed_query("ROS domain id")
print(json.dumps({"document_terms": len(document.indices), "query_terms": len(query.indices)}))
"""


def run_offline() -> dict[str, Any]:
    """The BM25 embedder in a process with no network at all (a fresh network namespace: only a down loopback),
    HOME in an empty folder; then whether anything appeared in that folder."""
    with tempfile.TemporaryDirectory(prefix="edge-offline-") as home:
        env = {**os.environ, "HOME": home, "XDG_CACHE_HOME": str(Path(home) / ".cache")}
        done = subprocess.run(
            ["unshare", "-rn", sys.executable, "-c", _OFFLINE], capture_output=True, text=True, env=env, check=False
        )
        written = [str(p.relative_to(home)) for p in Path(home).rglob("*")]
    return {
        "command": "unshare -rn (no network namespace), HOME in an empty temporary folder",
        "exit_code": done.returncode,
        "output": done.stdout.strip() or done.stderr.strip()[-300:],
        "files_written_under_home": written,
    }


# -- report ----------------------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    lines = [common.machine_markdown(report["machine"]), ""]
    if "quality" in report:
        lines += ["| book | engine | configuration | hit@1 | hit@5 | MRR@5 |", "|---|---|---|---:|---:|---:|"]
        for book, rows in report["quality"].items():
            for engine in ("today", "edge"):
                for label, q in rows[engine].items():
                    lines.append(
                        f"| {book} ({q['questions']} q, {rows['chunks']} chunks) | {engine} | {label} | "
                        f"{q['hit@1']:.2f} | {q['hit@5']:.2f} | {q['mrr@5']:.3f} |"
                    )
        lines.append("")
    if "latency" in report:
        lines += ["| chunks | engine | configuration | p50 / p95 ms |", "|---:|---|---|---|"]
        for row in report["latency"]:
            for engine in ("today", "edge"):
                for label, value in row.get(engine, {}).items():
                    if isinstance(value, dict) and "p50_ms" in value:
                        lines.append(
                            f"| {row['chunks']:,} | {engine} | {label} | {value['p50_ms']} / {value['p95_ms']} |"
                        )
            notes = {k: v for k, v in row["edge"].items() if not (isinstance(v, dict) and "p50_ms" in v)}
            lines.append(f"| {row['chunks']:,} | edge notes | | {json.dumps(notes)} |")
        lines.append("")
    for part in ("hnsw_recall", "startup", "concurrency", "offline"):
        if part in report:
            lines += [f"{part}: `{json.dumps(report[part])}`", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--parts", type=lambda s: s.split(","), default=list(PARTS))
    parser.add_argument("--sizes", type=ints, default=[1000, 10_000, 100_000])
    parser.add_argument("--local-sizes", type=ints, default=[1000, 10_000, 100_000], help="today's path at these")
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--hnsw-efs", type=ints, default=[128, 256], help="part exact: HNSW beam widths to try")
    parser.add_argument("--concurrency-size", type=int, default=5000)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument(
        "--edge-only-concurrency",
        action="store_true",
        help="concurrency on edge only: today's path re-reads its in-memory index after every write (minutes)",
    )
    parser.add_argument("--json", type=Path, default=RESULTS / f"edge-{time.strftime('%Y-%m-%d')}.json")
    args = parser.parse_args(argv)
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    limit_blas_threads()  # as `rag-api` does at start-up
    model: list[Any] = []

    def embeddings() -> Any:
        if not model:
            model.append(embeddings_model())
        return model[0]

    report: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
    report["machine"] = common.machine()
    report["qdrant_edge_py"] = common.version_of("qdrant-edge-py")
    report["qdrant_client"] = common.version_of("qdrant-client")
    report["data"] = {"noise_sd": NOISE_SD, "scale_book": SCALE_BOOK, "k": K}
    if "offline" in args.parts:
        report["offline"] = run_offline()
    if "quality" in args.parts:
        report["quality"] = run_quality(embeddings)
    if "latency" in args.parts:
        report["latency"] = run_latency(args.sizes, args.local_sizes, args.queries, embeddings)
    if "hnsw" in args.parts:
        report["hnsw_recall"] = run_hnsw([s for s in args.sizes if s > 1000], embeddings)
    if "exact" in args.parts:
        report["exact"] = run_exact(args.sizes, args.hnsw_efs, embeddings)
    if "startup" in args.parts:
        report["startup"] = run_startup(args.sizes, args.local_sizes, embeddings)
    if "concurrency" in args.parts:
        report["concurrency"] = run_concurrency(
            args.concurrency_size, args.readers, embeddings, today=not args.edge_only_concurrency
        )
    report["load_average_end"] = common.load_average()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
