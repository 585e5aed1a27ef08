"""What the lifespan builds once and every request shares."""

from __future__ import annotations

from dataclasses import dataclass, field

from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from qdrant_client import QdrantClient

from chains.answer import Answerer
from chains.catalogue import BookCatalogue
from chains.rerank import Reranker
from chains.retrieval import BookRetriever
from chains.settings import Settings
from rag_api.ratelimit import TokenBuckets
from rag_api.records import AnswerRecorder, RecordStore


@dataclass(slots=True)
class AppState:
    settings: Settings
    client: QdrantClient
    embeddings: Embeddings
    retriever: BookRetriever
    chat_model: BaseChatModel | None
    answerer: Answerer
    rate_limiter: TokenBuckets
    collection_error: str | None = None
    # True while the store could not be opened (the client is a closed stand-in): see rag_api.recovery.
    qdrant_needs_reopen: bool = False
    # The record of answers (None when RECORD_QUESTIONS=false or the database could not be opened).
    records: RecordStore | None = None
    recorder: AnswerRecorder | None = None
    records_error: str | None = None
    catalogue: BookCatalogue = field(default_factory=lambda: BookCatalogue(""))


@dataclass(frozen=True, slots=True)
class Overrides:
    """Ready-made parts for `create_app`, used by tests and benchmarks instead of building them from settings."""

    chat_model: BaseChatModel | None = None
    embeddings: Embeddings | None = None
    client: QdrantClient | None = None
    reranker: Reranker | None = None
