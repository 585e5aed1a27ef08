"""The book retriever: one query embedding, one Qdrant query, documents with their score and metadata.

It wraps langchain-qdrant's vector store as a LangChain `BaseRetriever`, so callbacks and tracing see it like
any retriever. Per-call options (`k`, `sources`, `chapter`) come as keyword arguments to `invoke`/`ainvoke`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict
from qdrant_client import models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from chains.errors import DependencyUnavailable
from chains.vectorstore import METADATA_KEY, BookVectorStore

logger = logging.getLogger(__name__)

_QDRANT_ERRORS = (ResponseHandlingException, UnexpectedResponse, ConnectionError, OSError, RuntimeError)


def build_filter(sources: Sequence[str] | None = None, chapter: str | None = None) -> models.Filter | None:
    """A payload filter restricting a search to some source files and/or one chapter."""
    conditions: list[models.Condition] = []
    if sources:
        conditions.append(models.FieldCondition(key=f"{METADATA_KEY}.source", match=models.MatchAny(any=list(sources))))
    if chapter:
        conditions.append(models.FieldCondition(key=f"{METADATA_KEY}.chapter", match=models.MatchValue(value=chapter)))
    return models.Filter(must=conditions) if conditions else None


class BookRetriever(BaseRetriever):
    """Top-k passages for a query; each document's metadata gains `score` (cosine similarity)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    vector_store: BookVectorStore
    k: int = 5
    # A failed query is tried again this many times, after backoff, 2 x backoff, 4 x backoff... seconds.
    max_retries: int = 0
    retry_backoff_s: float = 0.2

    def _search(self, vector: list[float], k: int, query_filter: models.Filter | None) -> list[Document]:
        attempt = 0
        while True:
            try:
                scored = self.vector_store.similarity_search_with_score_by_vector(vector, k=k, filter=query_filter)
                break
            except _QDRANT_ERRORS as exc:
                if attempt >= self.max_retries:
                    logger.warning("qdrant query failed after %d attempt(s): %s", attempt + 1, exc)
                    raise DependencyUnavailable("qdrant", "the vector store (Qdrant) is unreachable") from exc
                time.sleep(self.retry_backoff_s * 2**attempt)
                attempt += 1
        documents = []
        for document, score in scored:
            document.metadata["score"] = float(score)
            documents.append(document)
        return documents

    def _options(self, kwargs: dict[str, Any]) -> tuple[int, models.Filter | None]:
        k = int(kwargs.get("k") or self.k)
        return k, build_filter(kwargs.get("sources"), kwargs.get("chapter"))

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, query_filter = self._options(kwargs)
        embeddings = self.vector_store.embeddings
        assert embeddings is not None  # a dense store always has them
        return self._search(embeddings.embed_query(query), k, query_filter)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, query_filter = self._options(kwargs)
        embeddings = self.vector_store.embeddings
        assert embeddings is not None
        try:
            vector = await embeddings.aembed_query(query)
        except Exception as exc:  # any embedding failure (endpoint down, bad key) means "embeddings unavailable"
            logger.warning("query embedding failed: %s: %s", type(exc).__name__, exc)
            raise DependencyUnavailable("embeddings", "the embedding model is unavailable") from exc
        return await asyncio.to_thread(self._search, vector, k, query_filter)
