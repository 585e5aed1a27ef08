"""The book retriever: one query embedding, one Qdrant query (dense, or dense + sparse fused), scored documents.

Hybrid mode sends one `query_points` request with two prefetches, dense cosine and the local BM25-style sparse
vector (`chains.sparse`), each fetching several times `k` candidates, fused by Qdrant (DBSF, or RRF with weights).
With MMR on, that fused list is itself a prefetch and Qdrant's MMR query picks `k` of it. The same request goes to
a Qdrant server (QDRANT_URL) and to the embedded engine (`chains.edge_client`): the engine searches, fuses and
diversifies, never this module. It goes to the Qdrant client directly rather than through langchain-qdrant's
hybrid mode, which prefetches only `k` per vector and needs a FastEmbed model download; it still is a LangChain
`BaseRetriever` returning `Document`s.

Each document's metadata gains `score`, its dense cosine similarity to the query whatever the mode (what the
answer's relevance threshold compares), `rank` (1-based), and in hybrid mode `fusion_score` (Qdrant's score of
the last step: the fusion's, or MMR's). An optional cross-encoder reranker (`chains.rerank`) orders what Qdrant
returned. Per-call options (`k`, `sources`, `chapter`) come as keyword arguments to `invoke`/`ainvoke`.
"""

from __future__ import annotations

import asyncio
import logging
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
from threadpoolctl import threadpool_limits

from chains.errors import CollectionMismatch, DependencyUnavailable
from chains.neighbours import chunks_filter, join_neighbours, neighbour_chunks
from chains.rerank import Reranker
from chains.sentence_rescore import applies_to, best_sentence_scores, rescored_order
from chains.settings import Settings
from chains.sparse import encode_query
from chains.vectorstore import DENSE_VECTOR, METADATA_KEY, SPARSE_VECTOR, BookVectorStore, visible

logger = logging.getLogger(__name__)

_QDRANT_ERRORS = (ResponseHandlingException, UnexpectedResponse, ConnectionError, OSError, RuntimeError)
RetrievalMode = Literal["dense", "hybrid"]
FusionMethod = Literal["rrf", "dbsf"]


def build_filter(sources: Sequence[str] | None = None, chapter: str | None = None) -> models.Filter:
    """A payload filter restricting a search to the visible points (not an ingest's staged or replaced ones,
    chains.vectorstore.VISIBLE) of some source files and/or one chapter."""
    conditions: list[models.Condition] = []
    if sources:
        conditions.append(models.FieldCondition(key=f"{METADATA_KEY}.source", match=models.MatchAny(any=list(sources))))
    if chapter:
        conditions.append(models.FieldCondition(key=f"{METADATA_KEY}.chapter", match=models.MatchValue(value=chapter)))
    return visible(models.Filter(must=conditions) if conditions else None)


def cosine_similarities(query: Sequence[float], vectors: Sequence[Sequence[float]]) -> list[float]:
    """Cosine similarity of `query` to each of `vectors` (0 for an empty or zero vector)."""
    if not vectors:
        return []
    matrix = np.asarray(vectors, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1) * float(np.linalg.norm(q))
    dots = matrix @ q
    return [float(d / n) if n else 0.0 for d, n in zip(dots, norms, strict=True)]


def limit_blas_threads() -> None:
    """One BLAS thread for this process: call once at start-up of a server.

    Requests are a server's parallelism. A multi-threaded BLAS on small per-request numpy work (the cosine of k
    passages, the highlights' sentence scores) only makes its threads wait on each other: measured with 5,000
    chunks on 2 busy cores, a numpy search took 8 ms with 2 BLAS threads and 3.4 ms with one.
    """
    threadpool_limits(limits=1, user_api="blas")


@dataclass(frozen=True, slots=True)
class _Options:
    filter: models.Filter
    sources: Sequence[str] | None
    chapter: str | None


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
    # Qdrant's MMR over the fused candidates: relevance (the dense cosine) weighted by lambda, likeness to the
    # passages already picked by 1 - lambda (Qdrant's `diversity`).
    mmr: bool = False
    mmr_lambda: float = 0.7
    # HNSW beam width of the dense search (None: Qdrant's default, ef_construct); only a collection larger than
    # QDRANT_EXACT_UP_TO_CHUNKS has a graph to search, smaller ones are searched exactly.
    hnsw_ef: int | None = None
    # Hybrid mode: the first N fused candidates re-ordered with their best sentence (chains.sentence_rescore); 0: off.
    sentence_rescore: int = 0
    # Join a passage's same-section neighbour chunks (chains.neighbours): always for the first `neighbours_whole`
    # passages, for the others when the neighbour has a sentence closer to the question.
    join_neighbours: bool = False
    neighbours_whole: int = 2
    # The first passage takes its whole section when that has at most this many chunks (0: its neighbours only).
    section_whole_up_to: int = 0
    # Two passages of one chapter at most this many chunks apart are one passage, with the chunks between (0: off).
    join_nearby: int = 0
    # A failed query is tried again this many times, after backoff, 2 x backoff, 4 x backoff... seconds.
    max_retries: int = 0
    retry_backoff_s: float = 0.2
    # Why the store must not be searched as it is (its chunks embedded by another model): every query raises it.
    store_problem: CollectionMismatch | None = None

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
            mmr=settings.retrieval_mmr,
            mmr_lambda=settings.retrieval_mmr_lambda,
            hnsw_ef=settings.qdrant_hnsw_ef,
            sentence_rescore=settings.retrieval_sentence_rescore,
            join_neighbours=settings.retrieval_join_neighbours,
            neighbours_whole=settings.retrieval_neighbours_whole,
            section_whole_up_to=settings.retrieval_section_whole_up_to,
            join_nearby=settings.retrieval_join_nearby,
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
        candidates = depth or self.candidate_count(limit)
        params = None if self.hnsw_ef is None else models.SearchParams(hnsw_ef=self.hnsw_ef)
        prefetch: list[models.Prefetch] | models.Prefetch | None = None
        query: Any = vector
        using: str | None = DENSE_VECTOR
        if sparse:  # hybrid mode with a query that has indexable words
            prefetch = [
                models.Prefetch(
                    query=vector, using=DENSE_VECTOR, filter=options.filter, limit=candidates, params=params
                ),
                models.Prefetch(
                    query=models.SparseVector(indices=sparse.indices, values=sparse.values),
                    using=SPARSE_VECTOR,
                    filter=options.filter,
                    limit=candidates,
                ),
            ]
            query, using = self._fusion_query(), None
        if self.mmr:
            if prefetch is not None:  # MMR picks among the fused candidates
                prefetch = models.Prefetch(prefetch=prefetch, query=query, filter=options.filter, limit=candidates)
            mmr = models.Mmr(diversity=1.0 - self.mmr_lambda, candidates_limit=candidates)
            query, using = models.NearestQuery(nearest=vector, mmr=mmr), DENSE_VECTOR
        return self.vector_store.client.query_points(
            self.vector_store.collection_name,
            search_params=params if prefetch is None else None,
            prefetch=prefetch,
            query=query,
            using=using,
            query_filter=options.filter,
            limit=limit,
            with_payload=True,
            with_vectors=[DENSE_VECTOR],
        ).points

    def _fusion_query(self) -> models.Query:
        if self.fusion == "dbsf":
            return models.FusionQuery(fusion=models.Fusion.DBSF)
        if self.sparse_weight == 1.0:  # plain RRF: understood by every Qdrant server with the query API
            return models.FusionQuery(fusion=models.Fusion.RRF)
        return models.RrfQuery(rrf=models.Rrf(weights=[1.0, self.sparse_weight]))

    def _search(self, vector: list[float], text: str, k: int, options: _Options) -> list[Document]:
        # The reranker orders more candidates than it keeps; MMR (in Qdrant) already picked k.
        rearranging = self.reranker is not None or self.mmr
        limit = self.plain_limit(k)
        depth = None
        if self.mode == "hybrid" and self.sentence_rescore and not rearranging:
            # More fused points to re-score, from the same prefetch depth as without re-scoring (a deeper
            # prefetch changes the fusion's normalisation, which measured worse: docs/retrieval.md).
            depth, limit = self.candidate_count(k), max(limit, self.sentence_rescore)
        attempt = 0
        while True:
            try:
                started = time.perf_counter()
                points = self._query_points(vector, text, limit, options, depth)
                logger.debug(
                    "qdrant %s query (%s%s): %d points in %.1f ms",
                    self.mode,
                    self.fusion if self.mode == "hybrid" else "cosine",
                    " + MMR" if self.mmr else "",
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
            # A store ingested before the sentence vectors: the candidates plain retrieval fetches, as before.
            order = self._sentence_order(points, documents, vector) or order[: self.plain_limit(k)]
        if self.reranker is not None and documents:
            scores = self.reranker.score(text, [d.page_content for d in documents])
            for document, score in zip(documents, scores, strict=True):
                document.metadata["rerank_score"] = score
            order.sort(key=lambda i: -scores[i])
        if self.join_neighbours and documents:
            ranked = self._join_neighbours([documents[i] for i in order], [points[i].payload for i in order], vector, k)
        else:
            ranked = [documents[i] for i in order[:k]]
        for rank, document in enumerate(ranked, start=1):
            document.metadata["rank"] = rank
        return ranked

    def _join_neighbours(
        self, ordered: list[Document], payloads: list[dict[str, Any] | None], vector: list[float], k: int
    ) -> list[Document]:
        """The first k passages joined with their same-section neighbour chunks (chains.neighbours)."""
        # Read only the chunks that are not candidates already (those come with the search).
        span = self.section_whole_up_to
        wanted = neighbour_chunks(ordered[:k], ordered, first_span=span, nearby=self.join_nearby)
        records: list[models.Record] = []
        if wanted:
            try:
                records, _ = self.vector_store.client.scroll(
                    self.vector_store.collection_name,
                    scroll_filter=visible(chunks_filter(wanted, METADATA_KEY)),
                    limit=len(wanted),
                    with_payload=True,
                )
            except _QDRANT_ERRORS as exc:  # the passages found stand on their own: serve them unjoined
                logger.warning("reading the passages' neighbours failed, not joining them: %s", exc)
                return ordered[:k]
        neighbours = [
            (
                dict((r.payload or {}).get(METADATA_KEY) or {}),
                str((r.payload or {}).get(self.vector_store.content_payload_key, "")),
                r.payload,
            )
            for r in records
        ]
        return join_neighbours(ordered, payloads, neighbours, vector, k, self.neighbours_whole, span, self.join_nearby)

    def plain_limit(self, k: int) -> int:
        """How many candidates a search fetches without sentence re-scoring: k, the reranker's pool, and with
        joined neighbours 2 k (spare candidates: to move up when one is joined above, or to join a passage)."""
        limit = self.candidate_count(k) if self.reranker is not None and not self.mmr else k
        return max(limit, 2 * k) if self.join_neighbours else limit

    def _sentence_order(
        self, points: list[models.ScoredPoint], documents: list[Document], vector: list[float]
    ) -> list[int]:
        """The first `sentence_rescore` candidates re-ordered with their best sentence (chains.sentence_rescore),
        the rest after them; [] when a candidate has no sentence vectors."""
        head = min(self.sentence_rescore, len(documents))
        best = best_sentence_scores(vector, [p.payload for p in points[:head]])
        if best is None:
            return []
        for document, score in zip(documents, best, strict=False):
            document.metadata["sentence_score"] = score
        fused = [float(d.metadata.get("fusion_score", 0.0)) for d in documents[:head]]
        return rescored_order(fused, best) + list(range(head, len(documents)))

    def _options(self, kwargs: dict[str, Any]) -> tuple[int, _Options]:
        if self.store_problem is not None:  # ranking would be at random: say why instead
            raise CollectionMismatch(str(self.store_problem))
        k = int(kwargs.get("k") or self.k)
        sources, chapter = kwargs.get("sources"), kwargs.get("chapter")
        return k, _Options(build_filter(sources, chapter), sources, chapter)

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
