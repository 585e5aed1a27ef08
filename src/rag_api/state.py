"""What the lifespan builds once and every request shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable
from qdrant_client import QdrantClient

from chains.answer import AnswerChunk
from chains.book_terms import BookVocabulary
from chains.catalogue import BookCatalogue
from chains.guard import ModelGate
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
    # The answer chain (chains.answer.build_answer_chain) and the gate on its model calls, built once.
    chain: Runnable[Any, AnswerChunk]
    gate: ModelGate
    rate_limiter: TokenBuckets
    collection_error: str | None = None
    # True while the store could not be opened (the client is a closed stand-in): see rag_api.recovery.
    qdrant_needs_reopen: bool = False
    # The record of answers (None when RECORD_QUESTIONS=false or the database could not be opened).
    records: RecordStore | None = None
    recorder: AnswerRecorder | None = None
    records_error: str | None = None
    catalogue: BookCatalogue = field(default_factory=lambda: BookCatalogue(""))
    vocabulary: BookVocabulary | None = None  # the book's words, for the term check of the answer chain


@dataclass(frozen=True, slots=True)
class Overrides:
    """Ready-made parts for `create_app`, used by tests and benchmarks instead of building them from settings."""

    chat_model: BaseChatModel | None = None
    embeddings: Embeddings | None = None
    client: QdrantClient | None = None
    reranker: Reranker | None = None
