"""The book retriever: one query embedding, one Qdrant query (dense, or dense + sparse fused), scored documents.

Hybrid mode sends one `query_points` request with two prefetches, dense cosine and the local BM25-style sparse
vector (`chains.sparse`), each fetching several times `k` candidates, fused by reciprocal rank (RRF). It goes to
the Qdrant client directly rather than through langchain-qdrant's hybrid mode, which prefetches only `k` per
vector and needs a FastEmbed model download; it still is a LangChain `BaseRetriever` returning `Document`s.

Each document's metadata gains `score`, its dense cosine similarity to the query whatever the mode (what the
answer's relevance threshold compares), `rank` (1-based), and in hybrid mode `fusion_score` (RRF). Optional
steps after fusion: a cross-encoder reranker (`chains.rerank`) and MMR for diversity. Per-call options (`k`,
`sources`, `chapter`) come as keyword arguments to `invoke`/`ainvoke`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict
from qdrant_client import models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from chains.errors import DependencyUnavailable
from chains.local_index import LocalIndex
from chains.rerank import Reranker
from chains.sentence_rescore import applies_to, best_sentence_scores, rescored_order
from chains.settings import Settings
from chains.sparse import SparseEncoding, encode_query
from chains.vectorstore import DENSE_VECTOR, METADATA_KEY, SPARSE_VECTOR, BookVectorStore

logger = logging.getLogger(__name__)

_QDRANT_ERRORS = (ResponseHandlingException, UnexpectedResponse, ConnectionError, OSError, RuntimeError)
RetrievalMode = Literal["dense", "hybrid"]
FusionMethod = Literal["rrf", "dbsf"]


def build_filter(sources: Sequence[str] | None = None, chapter: str | None = None) -> models.Filter | None:
    """A payload filter restricting a search to some source files and/or one chapter."""
    conditions: list[models.Condition] = []
    if sources:
        conditions.append(models.FieldCondition(key=f"{METADATA_KEY}.source", match=models.MatchAny(any=list(sources))))
    if chapter:
        conditions.append(models.FieldCondition(key=f"{METADATA_KEY}.chapter", match=models.MatchValue(value=chapter)))
    return models.Filter(must=conditions) if conditions else None


def cosine_similarities(query: Sequence[float], vectors: Sequence[Sequence[float]]) -> list[float]:
    """Cosine similarity of `query` to each of `vectors` (0 for an empty or zero vector)."""
    if not vectors:
        return []
    matrix = np.asarray(vectors, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1) * float(np.linalg.norm(q))
    dots = matrix @ q
    return [float(d / n) if n else 0.0 for d, n in zip(dots, norms, strict=True)]


def mmr_order(relevance: Sequence[float], vectors: Sequence[Sequence[float]], k: int, lambda_mult: float) -> list[int]:
    """Maximal marginal relevance: pick, one at a time, the candidate most relevant and least like those picked."""
    matrix = np.asarray(vectors, dtype=np.float32)
    matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    similarity = matrix @ matrix.T
    gains = np.asarray(relevance, dtype=np.float32)
    picked: list[int] = []
    redundancy = np.zeros(len(relevance), dtype=np.float32)
    available = np.ones(len(relevance), dtype=bool)
    while available.any() and len(picked) < k:
        score = lambda_mult * gains - (1 - lambda_mult) * redundancy
        score[~available] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        available[best] = False
        redundancy = np.maximum(redundancy, similarity[best])
    return picked


@dataclass(frozen=True, slots=True)
class _Options:
    filter: models.Filter | None
    sources: Sequence[str] | None
    chapter: str | None


def distribution_based_fusion(lists: Sequence[Sequence[tuple[str, float]]]) -> list[tuple[str, float]]:
    """Qdrant's DBSF: each list's scores mapped from [mean - 3 sd, mean + 3 sd] onto [0, 1], then added."""
    fused: dict[str, float] = {}
    for ranked in lists:
        if not ranked:
            continue
        scores = [score for _, score in ranked]
        if len(scores) == 1:
            normalised = [0.5]
        else:
            mean = sum(scores) / len(scores)
            sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1))
            normalised = [0.5] * len(scores) if sd == 0 else [(s - mean + 3 * sd) / (6 * sd) for s in scores]
        for (point_id, _), value in zip(ranked, normalised, strict=True):
            fused[point_id] = fused.get(point_id, 0.0) + value
    return sorted(fused.items(), key=lambda item: -item[1])


def reciprocal_rank_fusion(
    lists: Sequence[Sequence[tuple[str, float]]], weights: Sequence[float], constant: int = 2
) -> list[tuple[str, float]]:
    """Qdrant's weighted RRF: a point at 0-based position p of a list with weight w gains 1 / ((p + 1) / w + k - 1)."""
    fused: dict[str, float] = {}
    for ranked, weight in zip(lists, weights, strict=True):
        for position, (point_id, _) in enumerate(ranked):
            fused[point_id] = fused.get(point_id, 0.0) + 1 / ((position + 1) / weight + constant - 1)
    return sorted(fused.items(), key=lambda item: -item[1])


class BookRetriever(BaseRetriever):
    """Top-k passages for a query; see the module docstring for what each document's metadata holds."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    vector_store: BookVectorStore
    k: int = 5
    mode: RetrievalMode = "hybrid"
    # How the two candidate lists merge: reciprocal rank (weights per list: dense 1, sparse `sparse_weight`)
    # or distribution-based score fusion (scores normalised by their spread, then added).
    fusion: FusionMethod = "dbsf"
    sparse_weight: float = 1.0
    # Candidates per prefetch (and for reranking / MMR): max(candidates_per_k x k, min_candidates).
    candidates_per_k: int = 4
    min_candidates: int = 20
    reranker: Reranker | None = None
    # Local mode only (QDRANT_ENGINE=local): search an in-memory copy of the vectors (chains.local_index), not
    # local mode's loops. A server and the edge engine search, fuse and filter themselves (`query_points`).
    local_index: LocalIndex | None = None
    mmr: bool = False
    mmr_lambda: float = 0.7
    # Hybrid mode: the first N fused candidates re-ordered with their best sentence (chains.sentence_rescore); 0: off.
    sentence_rescore: int = 0
    # A failed query is tried again this many times, after backoff, 2 x backoff, 4 x backoff... seconds.
    max_retries: int = 0
    retry_backoff_s: float = 0.2

    @classmethod
    def from_settings(
        cls, vector_store: BookVectorStore, settings: Settings, reranker: Reranker | None = None
    ) -> BookRetriever:
        return cls(
            vector_store=vector_store,
            k=settings.retrieval_k,
            mode=settings.retrieval_mode,
            fusion=settings.retrieval_fusion,
            sparse_weight=settings.retrieval_sparse_weight,
            candidates_per_k=settings.retrieval_candidates_per_k,
            min_candidates=settings.retrieval_min_candidates,
            reranker=reranker,
            local_index=LocalIndex(settings.qdrant_collection) if settings.searches_in_memory else None,
            mmr=settings.retrieval_mmr,
            mmr_lambda=settings.retrieval_mmr_lambda,
            sentence_rescore=settings.retrieval_sentence_rescore,
            max_retries=settings.qdrant_max_retries,
            retry_backoff_s=settings.qdrant_retry_backoff_s,
        )

    def candidate_count(self, k: int) -> int:
        return max(self.candidates_per_k * k, self.min_candidates, k)

    def _query_points(
        self, vector: list[float], text: str, limit: int, options: _Options, depth: int | None = None
    ) -> list[models.ScoredPoint]:
        """`limit` fused points from prefetches of `depth` candidates each (default: `candidate_count(limit)`)."""
        sparse = encode_query(text) if self.mode == "hybrid" else None
        depth = depth or self.candidate_count(limit)
        if self.local_index is not None:
            return self._query_in_memory(vector, sparse, limit, options, depth)
        client = self.vector_store.client
        collection = self.vector_store.collection_name
        if not sparse:  # dense mode, or a query with no indexable words
            return client.query_points(
                collection,
                query=vector,
                using=DENSE_VECTOR,
                query_filter=options.filter,
                limit=limit,
                with_payload=True,
                with_vectors=[DENSE_VECTOR],
            ).points
        prefetch_limit = depth
        prefetch = [
            models.Prefetch(query=vector, using=DENSE_VECTOR, filter=options.filter, limit=prefetch_limit),
            models.Prefetch(
                query=models.SparseVector(indices=sparse.indices, values=sparse.values),
                using=SPARSE_VECTOR,
                filter=options.filter,
                limit=prefetch_limit,
            ),
        ]
        return client.query_points(
            collection,
            prefetch=prefetch,
            query=self._fusion_query(),
            query_filter=options.filter,
            limit=limit,
            with_payload=True,
            with_vectors=[DENSE_VECTOR],
        ).points

    def _query_in_memory(
        self, vector: list[float], sparse: SparseEncoding | None, limit: int, options: _Options, depth: int
    ) -> list[models.ScoredPoint]:
        """What `query_points` would answer, searched in the embedded store's in-memory index (same fusion)."""
        assert self.local_index is not None
        client = self.vector_store.client
        collection = self.vector_store.collection_name
        if not sparse:
            chosen = self.local_index.dense(client, vector, limit, options.sources, options.chapter)
        else:
            candidates = depth
            lists = [
                self.local_index.dense(client, vector, candidates, options.sources, options.chapter),
                self.local_index.sparse(client, sparse, candidates, options.sources, options.chapter),
            ]
            if self.fusion == "dbsf":
                fused = distribution_based_fusion(lists)
            else:
                fused = reciprocal_rank_fusion(lists, [1.0, self.sparse_weight])
            chosen = fused[:limit]
        if not chosen:
            return []
        records = {
            str(r.id): r
            for r in client.retrieve(
                collection, [point_id for point_id, _ in chosen], with_payload=True, with_vectors=[DENSE_VECTOR]
            )
        }
        return [
            models.ScoredPoint(id=record.id, version=0, score=score, payload=record.payload, vector=record.vector)
            for point_id, score in chosen
            if (record := records.get(point_id)) is not None
        ]

    def _fusion_query(self) -> models.Query:
        if self.fusion == "dbsf":
            return models.FusionQuery(fusion=models.Fusion.DBSF)
        if self.sparse_weight == 1.0:  # plain RRF: understood by every Qdrant server with the query API
            return models.FusionQuery(fusion=models.Fusion.RRF)
        return models.RrfQuery(rrf=models.Rrf(weights=[1.0, self.sparse_weight]))

    def _search(self, vector: list[float], text: str, k: int, options: _Options) -> list[Document]:
        rearranging = self.reranker is not None or self.mmr
        limit = self.candidate_count(k) if rearranging else k
        depth = None
        if self.mode == "hybrid" and self.sentence_rescore and not rearranging:
            # More fused points to re-score, from the same prefetch depth as without re-scoring (a deeper
            # prefetch changes the fusion's normalisation, which measured worse: docs/retrieval.md).
            depth, limit = self.candidate_count(k), max(k, self.sentence_rescore)
        attempt = 0
        while True:
            try:
                started = time.perf_counter()
                points = self._query_points(vector, text, limit, options, depth)
                logger.debug(
                    "qdrant %s query (%s): %d points in %.1f ms",
                    self.mode,
                    "in-memory index" if self.local_index is not None else "server",
                    len(points),
                    (time.perf_counter() - started) * 1000,
                )
                break
            except _QDRANT_ERRORS as exc:
                if attempt >= self.max_retries:
                    logger.warning("qdrant query failed after %d attempt(s): %s", attempt + 1, exc)
                    raise DependencyUnavailable("qdrant", "the vector store (Qdrant) is unreachable") from exc
                time.sleep(self.retry_backoff_s * 2**attempt)
                attempt += 1
        return self._documents(points, vector, text, k)

    def _documents(self, points: list[models.ScoredPoint], vector: list[float], text: str, k: int) -> list[Document]:
        documents: list[Document] = []
        vectors: list[list[float]] = []
        for point in points:
            stored = point.vector.get(DENSE_VECTOR) if isinstance(point.vector, dict) else None
            vectors.append([float(x) for x in stored] if isinstance(stored, list) else [])  # type: ignore[arg-type]
            document = BookVectorStore._document_from_point(
                point, self.vector_store.collection_name, self.vector_store.content_payload_key, METADATA_KEY
            )
            if self.mode == "hybrid":
                document.metadata["fusion_score"] = float(point.score)
            documents.append(document)
        if all(vectors):
            for document, similarity in zip(documents, cosine_similarities(vector, vectors), strict=True):
                document.metadata["score"] = similarity
        else:  # a point without a dense vector: only possible in dense mode, where the score is the cosine
            for document, point in zip(documents, points, strict=True):
                document.metadata["score"] = float(point.score)
        order = list(range(len(documents)))
        if self.mode == "hybrid" and self.sentence_rescore and len(documents) > 1 and applies_to(text):
            order = self._sentence_order(points, documents, vector)
        if self.reranker is not None and documents:
            scores = self.reranker.score(text, [d.page_content for d in documents])
            for document, score in zip(documents, scores, strict=True):
                document.metadata["rerank_score"] = score
            order.sort(key=lambda i: -scores[i])
        if self.mmr and documents and all(vectors):
            # Relevance is the dense cosine, as in LangChain's MMR; the candidates are what fusion/reranking kept.
            relevance = [float(documents[i].metadata["score"]) for i in order]
            picked = mmr_order(relevance, [vectors[i] for i in order], k, self.mmr_lambda)
            order = [order[i] for i in picked]
        ranked = [documents[i] for i in order[:k]]
        for rank, document in enumerate(ranked, start=1):
            document.metadata["rank"] = rank
        return ranked

    def _sentence_order(
        self, points: list[models.ScoredPoint], documents: list[Document], vector: list[float]
    ) -> list[int]:
        """The first `sentence_rescore` candidates re-ordered with their best sentence (chains.sentence_rescore),
        the rest after them; the fused order when a candidate has no sentence vectors."""
        head = min(self.sentence_rescore, len(documents))
        best = best_sentence_scores(vector, [p.payload for p in points[:head]])
        if best is None:
            return list(range(len(documents)))
        for document, score in zip(documents, best, strict=False):
            document.metadata["sentence_score"] = score
        fused = [float(d.metadata.get("fusion_score", 0.0)) for d in documents[:head]]
        return rescored_order(fused, best) + list(range(head, len(documents)))

    def _options(self, kwargs: dict[str, Any]) -> tuple[int, _Options]:
        k = int(kwargs.get("k") or self.k)
        sources, chapter = kwargs.get("sources"), kwargs.get("chapter")
        return k, _Options(build_filter(sources, chapter), sources, chapter)

    def warm(self) -> None:
        """Read the embedded store's vectors into the in-memory index now (start-up), not at the first question:
        at 100,000 chunks that read takes tens of seconds. A failure is left for the first question to report."""
        if self.local_index is None:
            return
        started = time.perf_counter()
        try:
            self.local_index.load(self.vector_store.client)
        except Exception as exc:  # Qdrant trouble shows in /ready and at the first question, with its own error
            logger.warning("could not read the embedded store into memory at start-up: %s", exc)
            return
        logger.info("in-memory index of the embedded store read in %.1f s", time.perf_counter() - started)

    def forget_local_index(self) -> None:
        """Make the next query re-read the embedded store's vectors (after an ingest in this process)."""
        if self.local_index is not None:
            self.local_index.invalidate()

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, options = self._options(kwargs)
        embeddings = self.vector_store.embeddings
        assert embeddings is not None  # a dense store always has them
        return self._search(embeddings.embed_query(query), query, k, options)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, options = self._options(kwargs)
        embeddings = self.vector_store.embeddings
        assert embeddings is not None
        try:
            vector = await embeddings.aembed_query(query)
        except Exception as exc:  # any embedding failure (endpoint down, bad key) means "embeddings unavailable"
            logger.warning("query embedding failed: %s: %s", type(exc).__name__, exc)
            raise DependencyUnavailable("embeddings", "the embedding model is unavailable") from exc
        return await asyncio.to_thread(self._search, vector, query, k, options)
