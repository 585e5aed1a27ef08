"""The app factory and its lifespan: clients, models and the answer chain are built once and injected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from qdrant_client import QdrantClient

from chains.answer import build_answer_chain
from chains.book_terms import BookVocabulary
from chains.catalogue import BookCatalogue
from chains.embeddings import build_embeddings, embedding_dimension
from chains.errors import CollectionMismatch, RagError
from chains.guard import ModelGate
from chains.models import build_chat_model
from chains.rerank import build_reranker
from chains.retrieval import BookRetriever, limit_blas_threads
from chains.settings import Settings
from chains.vectorstore import build_vector_store, points_without_sparse, prepare_collection
from rag_api.auth import document_optional_keys, require_api_key
from rag_api.book_site import build_site
from rag_api.errors import install_error_handlers
from rag_api.ingest_channel import IngestChannel
from rag_api.metrics import build_metrics
from rag_api.middleware import RefusedOriginLog, RequestContextMiddleware
from rag_api.ratelimit import TokenBuckets, rate_limit
from rag_api.records import AnswerRecorder, RecordStore
from rag_api.recovery import open_qdrant, watch_qdrant
from rag_api.routes import admin, ask, chat, feedback, health, metrics, openai_api, pages, search
from rag_api.state import AppState, Overrides

logger = logging.getLogger(__name__)

DESCRIPTION = """Ask questions about a book and get answers grounded in its text, with sources.

`POST /ask` answers as JSON or streams server-sent events (see its description for the event protocol);
`POST /api/chat` streams the same answer as the AI SDK's UI message stream, for `useChat` frontends;
`POST /v1/chat/completions` and `GET /v1/models` answer OpenAI clients; `POST /search` returns passages only;
`GET /health` and `GET /ready` report on the dependencies."""


def warn_if_sparse_missing(client: QdrantClient, settings: Settings) -> None:
    """Hybrid retrieval over points ingested before it existed works as dense-only for them: say so."""
    if settings.retrieval_mode != "hybrid":
        return
    try:
        lacking = points_without_sparse(client, settings.qdrant_collection)
    except Exception as exc:  # informative only: never a reason to refuse to start
        logger.debug("could not count points without a sparse vector: %s", exc)
        return
    if lacking:
        logger.warning(
            "%d points in collection %s have no sparse vector (ingested before hybrid retrieval): lexical matching "
            "skips them; run rag-ingest again to rewrite them, or set RETRIEVAL_MODE=dense",
            lacking,
            settings.qdrant_collection,
        )


def build_state(settings: Settings, overrides: Overrides) -> AppState:
    embeddings = overrides.embeddings or build_embeddings(settings)
    client, collection_error = (overrides.client, None) if overrides.client else open_qdrant(settings)
    needs_reopen = collection_error is not None
    store_problem: CollectionMismatch | None = None
    if not needs_reopen:
        try:
            prepare_collection(client, settings, embedding_dimension(embeddings))
        except CollectionMismatch as exc:  # searching it would rank at random: /ready and every search say why
            store_problem, collection_error = exc, str(exc)
            logger.error("collection problem: %s", exc)
        except RagError as exc:
            collection_error = str(exc)
            logger.error("collection problem: %s", exc)
        except Exception as exc:  # Qdrant down at start-up: serve degraded, /ready says why
            collection_error = f"Qdrant unreachable at start-up ({type(exc).__name__})"
            logger.error("%s", collection_error)
        else:
            warn_if_sparse_missing(client, settings)
    store = build_vector_store(client, settings, embeddings)
    retriever = BookRetriever.from_settings(store, settings, overrides.reranker or build_reranker(settings))
    retriever.store_problem = store_problem
    chat_model = overrides.chat_model or build_chat_model(settings)
    gate = ModelGate.from_settings(settings)
    vocabulary = BookVocabulary(settings.qdrant_collection)
    if collection_error is None:
        vocabulary.current(client)  # read in the background: the term check starts once it is done
    chain = build_answer_chain(retriever, chat_model, settings, gate, vocabulary)
    rate_limiter = TokenBuckets(settings.rate_limit_per_minute, settings.rate_limit_burst)
    state = AppState(
        settings, client, embeddings, retriever, chat_model, chain, gate, rate_limiter, collection_error, needs_reopen
    )
    state.catalogue = BookCatalogue(settings.qdrant_collection)
    state.vocabulary = vocabulary
    state.records, state.records_error = open_records(settings)
    state.recorder = AnswerRecorder(state.records) if state.records is not None else None
    return state


def open_records(settings: Settings) -> tuple[RecordStore | None, str | None]:
    """The answer records, or why there are none. A database that cannot be opened never stops the service."""
    if not settings.record_questions:
        return None, None
    try:
        return RecordStore.open(settings.database_url), None
    except Exception as exc:
        message = f"cannot open the records database (DATABASE_URL): {type(exc).__name__}: {exc}"
        logger.error("%s; answers are not recorded", message)
        return None, message


async def prune_records(state: AppState, every_s: float = 24 * 3600) -> None:
    """Delete records older than RECORDS_RETENTION_DAYS now and then every day (0 keeps them forever)."""
    days = state.settings.records_retention_days
    if state.records is None or days <= 0:
        return
    while True:
        try:
            removed = await asyncio.to_thread(state.records.prune, days)
            if removed:
                logger.info("pruned %d answer records older than %d days", removed, days)
        except Exception:
            logger.exception("could not prune answer records")
        await asyncio.sleep(every_s)


def create_app(settings: Settings, overrides: Overrides | None = None) -> FastAPI:
    """The FastAPI app for `settings`; `overrides` hands in ready-made parts (tests, benchmarks)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limit_blas_threads()
        state = build_state(settings, overrides or Overrides())
        app.state.rag = state
        logger.info(
            "ready: collection=%s store=%s chat_model=%s",
            settings.qdrant_collection,
            settings.qdrant_url or settings.qdrant_path,
            settings.chat_model or "(none: extractive answers)",
        )
        watcher = asyncio.create_task(watch_qdrant(state, settings.qdrant_recheck_s))
        pruner = asyncio.create_task(prune_records(state))
        stop_ingest = admin.stop_ingest_on_signals(app)
        # rag-ingest hands its work to the process holding the embedded store (not to a test's injected client).
        holds_store = not settings.uses_qdrant_server and (overrides is None or overrides.client is None)
        channel = await IngestChannel.open(app, settings) if holds_store else None
        try:
            yield
        finally:
            stop_ingest()
            if channel is not None:
                await channel.close()
            for task in (watcher, pruner):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if state.recorder is not None:
                await state.recorder.drain()
            if state.records is not None:
                state.records.close()
            if overrides is None or overrides.client is None:
                state.client.close()

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from the fastapi-offline package, not a CDN.
    app: FastAPI = FastAPIOffline(title="bookrag", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.book_site = (
        build_site(settings.book_site_dir, settings.book_site_style) if settings.book_site_dir else None
    )
    app.state.metrics = build_metrics()
    install_error_handlers(app)

    # The last added is the outermost: CORS wraps the request-context middleware, so that its own answers (413,
    # 408, a last-resort 500) and every error from auth and the rate limiter carry CORS headers for an allowed
    # origin; a browser then sees the error, not a CORS failure. Preflights are answered by CORS alone.
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        metrics=app.state.metrics,
        body_timeout_s=settings.body_timeout_s,
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials="*" not in settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Content-Type", "Authorization", "X-API-Key", "X-Request-ID", "Accept"],
        expose_headers=["X-Request-ID"],
    )
    app.add_middleware(RefusedOriginLog, allowed=settings.cors_origins)
    # Public endpoints: an API key when API_KEYS is set, then the per-client rate limit (keyed by that key).
    guarded = [Depends(require_api_key), Depends(rate_limit)]
    for module in (ask, chat, search, openai_api, feedback):
        app.include_router(module.router, dependencies=guarded)
    for module in (health, metrics, pages):
        app.include_router(module.router)
    app.include_router(admin.router)  # guarded by an admin key in the router itself
    public_paths = {"/ask", "/api/chat", "/search", "/feedback", "/v1/chat/completions", "/v1/models"}
    document_optional_keys(app, settings, public_paths=public_paths)
    return app
