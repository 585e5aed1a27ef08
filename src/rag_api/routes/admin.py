"""`POST /admin/ingest`: ingest files from the server's disk through the running service.

This is the way through when the API server holds the embedded Qdrant store (one process at a time), so that
`rag-ingest` cannot open it. Paths are relative to INGEST_ROOT (unset: the endpoint answers 404) and may not
leave it; sources are stored relative to INGEST_ROOT (the book's root), as `rag-ingest --root INGEST_ROOT` would
store them, and the collection remembers it as its book root (ingest/book_root.py).
The indexer runs in a worker thread, one ingest at a time (a second one gets 409), so the event loop stays free.
Files met in a walk must lie under INGEST_ROOT once their links are followed (others are named as failed, never
read). SIGTERM or SIGINT stops a running ingest at its next file or batch (and kills the file being parsed), so
that the server's graceful shutdown does not wait for it: the request gets 503 and every file keeps its
previous complete version.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from chains.embeddings import embedding_dimension
from chains.errors import IngestStopped
from chains.settings import Settings
from chains.vectorstore import ensure_collection
from ingest.book_root import choose_root, remembered_root
from ingest.indexer import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EXCLUDES,
    Discovery,
    Indexer,
    IngestReport,
    discover,
    outside_outcomes,
    prune_scope_of,
)
from rag_api.auth import require_admin_key
from rag_api.deps import State
from rag_api.errors import ApiError
from rag_api.schemas import ErrorResponse
from rag_api.state import AppState

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin_key)])


class IngestRequest(BaseModel):
    paths: list[str] = Field(
        default_factory=list, max_length=1000, description="Files or folders, relative to the server's INGEST_ROOT"
    )
    include: list[str] = Field(default_factory=list, max_length=100, description="Globs of files to take")
    exclude: list[str] = Field(default_factory=list, max_length=100, description="Globs of files to skip")
    delete: list[str] = Field(
        default_factory=list, max_length=1000, description="Stored sources to delete (relative to INGEST_ROOT)"
    )
    prune: bool | Literal["all"] = Field(
        False,
        description="Delete stored sources under `paths` (the folders given) that are no longer there; "
        '`"all"`: every stored source that is not among `paths`',
    )
    dry_run: bool = Field(False, description="Report what would change; write nothing")


class FileResult(BaseModel):
    source: str
    added: int
    updated: int
    unchanged: int
    removed: int
    error: str | None


class IngestResponse(BaseModel):
    dry_run: bool
    files: list[FileResult]
    failed: int
    added: int
    updated: int
    unchanged: int
    removed: int
    pruned_sources: list[str]
    notes: list[str] = Field(default_factory=list, description="What to know and may act on (e.g. old keys to prune)")
    seconds: float
    summary: str


def ingest_lock(app: FastAPI) -> asyncio.Lock:
    """One ingest at a time in this server, whoever asks (this endpoint or rag-ingest's local channel)."""
    lock: asyncio.Lock | None = getattr(app.state, "ingest_lock", None)
    if lock is None:
        lock = app.state.ingest_lock = asyncio.Lock()
    return lock


def ingest_stop(app: FastAPI) -> threading.Event:
    """The event that stops a running admin ingest (set on shutdown)."""
    stop: threading.Event | None = getattr(app.state, "ingest_stop", None)
    if stop is None:
        stop = app.state.ingest_stop = threading.Event()
    return stop


def stop_ingest_on_signals(app: FastAPI) -> Callable[[], None]:
    """Chain SIGTERM and SIGINT to set `ingest_stop` before the server's own handler (uvicorn's graceful shutdown
    waits for running requests, and an ingest may run for minutes). Returns a function that sets the event and
    puts the previous handlers back, for the end of the lifespan. Outside the main thread (a test server in a
    thread) signals cannot be handled: only the lifespan's end stops the ingest."""
    stop = ingest_stop(app)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            handler = signal.getsignal(sig)

            def chained(number: int, frame: Any, handler: Any = handler) -> None:
                stop.set()
                if callable(handler):
                    handler(number, frame)
                elif handler == signal.SIG_DFL:  # no server handler: what the signal would have done
                    signal.signal(number, signal.SIG_DFL)
                    signal.raise_signal(number)

            previous[sig] = handler
            signal.signal(sig, chained)

    def restore() -> None:
        stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def resolve_under(root: Path, relative: str) -> Path:
    """`relative` inside `root`, or a 400 when it leaves the root or does not exist."""
    base = root.resolve()
    try:
        path = (base / relative).resolve()
        if not path.is_relative_to(base):
            raise HTTPException(400, f"path {relative!r} is outside INGEST_ROOT")
        exists = path.exists()
    except (ValueError, OSError) as exc:  # a NUL byte, a name too long, a link loop
        raise HTTPException(400, f"path {relative!r} is not a valid path ({exc})") from exc
    if not exists:
        raise HTTPException(400, f"path {relative!r} does not exist under INGEST_ROOT")
    return path


async def run_exclusive(
    app: FastAPI,
    state: AppState,
    work: Callable[[Indexer], _T],
    stop: threading.Event | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> _T:
    """Run `work` on an indexer over the server's own client and model, in a worker thread, while no other
    ingest runs (else 409 `ingest_in_progress`); `stop` (default: the shutdown event) stops it midway."""
    lock = ingest_lock(app)
    if lock.locked():
        raise ApiError(409, "ingest_in_progress", "another ingest is running; try again when it has finished")
    async with lock:
        indexer = Indexer(
            state.client, state.embeddings, state.settings, batch_size=batch_size, stop=stop or ingest_stop(app)
        )
        try:
            return await asyncio.to_thread(work, indexer)
        finally:  # what the book holds may have changed with the point count unchanged
            state.catalogue.forget()
            if state.vocabulary is not None:
                state.vocabulary.forget()


def run_ingest(
    state_settings: Settings, indexer: Indexer, body: IngestRequest, paths: list[Path], found: Discovery
) -> IngestReport:
    root = state_settings.ingest_root
    assert root is not None
    if not body.dry_run:
        ensure_collection(indexer.client, state_settings, embedding_dimension(indexer.embeddings))
    report = IngestReport(dry_run=body.dry_run)
    if body.delete:
        report = indexer.delete_sources(body.delete, body.dry_run)
    if found.files or found.outside or (paths and body.prune):  # an emptied folder still prunes
        root_note = choose_root([], root, remembered_root(indexer.client, indexer.collection)).note
        scope = None if body.prune == "all" else prune_scope_of(paths, root)
        ingested = indexer.ingest(found.files, root, bool(body.prune), body.dry_run, prune_scope=scope)
        ingested.notes[:0] = [root_note] if root_note else []
        ingested.files[:0] = report.files
        ingested.files.extend(outside_outcomes(found.outside, root.resolve(), "INGEST_ROOT"))
        ingested.seconds += report.seconds
        report = ingested
    return report


@router.post(
    "/ingest",
    response_model=IngestResponse,
    summary="Ingest files from the server's disk (admin)",
    responses={
        400: {"model": ErrorResponse, "description": "A path outside INGEST_ROOT, not valid, or that does not exist"},
        401: {"model": ErrorResponse, "description": "No API key"},
        403: {"model": ErrorResponse, "description": "Not an admin key, or ADMIN_API_KEYS unset"},
        404: {"model": ErrorResponse, "description": "INGEST_ROOT is not set: server-side ingest is off"},
        409: {"model": ErrorResponse, "description": "Another ingest is running"},
        503: {
            "model": ErrorResponse,
            "description": "Qdrant or the embedding model failed, or the server is shutting down; nothing half-written",
        },
    },
)
async def ingest(body: IngestRequest, state: State, request: Request) -> IngestResponse:
    """Ingest `paths` (relative to INGEST_ROOT) incrementally, like `rag-ingest`; failed files are listed."""
    root = state.settings.ingest_root
    if root is None:
        raise ApiError(404, "ingest_disabled", "server-side ingest is disabled: set INGEST_ROOT on the server")
    if not body.paths and not body.delete:
        raise HTTPException(400, "give `paths` to ingest or `delete` sources")
    paths = [resolve_under(root, p) for p in body.paths]
    found = discover(paths, body.include, (*DEFAULT_EXCLUDES, *body.exclude), root=root)
    try:
        report = await run_exclusive(
            request.app, state, lambda indexer: run_ingest(state.settings, indexer, body, paths, found)
        )
    except IngestStopped as exc:
        raise HTTPException(503, str(exc)) from exc
    logger.info("admin ingest: %s", report.summary())
    return IngestResponse.model_validate(report.as_dict())
