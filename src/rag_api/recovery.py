"""Starting degraded and recovering without a restart when Qdrant comes back.

When the embedded store cannot be opened at start-up (another process holds it, e.g. `rag-ingest`), the
service starts with a *closed* client in its place: every call on it fails like an unreachable Qdrant (503
`qdrant_unavailable`), nothing pretends to work. When a Qdrant server is down at start-up, the collection
check is what failed. Either way `recheck_qdrant` (run by `/health`, `/ready` and a background watcher every
QDRANT_RECHECK_S while degraded) opens the store again and re-runs the collection check, and the routes, which
read the client through the shared state and retriever, use the new one at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from qdrant_client import QdrantClient

from chains.embeddings import embedding_dimension
from chains.errors import CollectionMismatch, DependencyUnavailable, RagError, StoreDamaged
from chains.settings import Settings
from chains.vectorstore import build_qdrant_client, build_vector_store, prepare_collection
from rag_api.state import AppState

logger = logging.getLogger(__name__)

# The watcher and a health probe may recheck at once: one at a time, or both would try to open the store.
_recheck_lock = threading.Lock()


def closed_client() -> QdrantClient:
    """A stand-in for a store that could not be opened: every call raises like an unreachable Qdrant."""
    client = QdrantClient(location=":memory:")
    client.close()
    return client


def open_qdrant(settings: Settings) -> tuple[QdrantClient, str | None]:
    """The configured client, or a closed stand-in and the reason when the store cannot be opened now."""
    try:
        return build_qdrant_client(settings), None
    except (DependencyUnavailable, StoreDamaged) as exc:  # damaged: /ready says so until the files are restored
        logger.error("starting degraded: %s", exc)
        return closed_client(), str(exc)


def recheck_qdrant(state: AppState) -> None:
    """Reopen the store if it never opened, and re-run the collection check; clear the error once both pass."""
    with _recheck_lock:
        _recheck(state)


def _recheck(state: AppState) -> None:
    if state.qdrant_needs_reopen:
        client, error = open_qdrant(state.settings)
        if error is not None:
            state.collection_error = error
            return
        previous, state.client = state.client, client
        state.retriever.vector_store = build_vector_store(client, state.settings, state.embeddings)
        state.qdrant_needs_reopen = False
        previous.close()
    try:
        prepare_collection(state.client, state.settings, embedding_dimension(state.embeddings))
    except CollectionMismatch as exc:
        state.collection_error, state.retriever.store_problem = str(exc), exc
        return
    except RagError as exc:
        state.collection_error = str(exc)
        return
    except Exception as exc:  # still unreachable
        state.collection_error = f"Qdrant unreachable ({type(exc).__name__})"
        return
    if state.collection_error:
        logger.info("Qdrant is reachable again: collection %s checked", state.settings.qdrant_collection)
    state.collection_error, state.retriever.store_problem = None, None


async def watch_qdrant(state: AppState, interval_s: float) -> None:
    """Run `recheck_qdrant` every `interval_s` while the service is degraded; for the lifespan's task group."""
    while True:
        await asyncio.sleep(interval_s)
        if state.collection_error is not None:
            try:
                await asyncio.to_thread(recheck_qdrant, state)
            except Exception:  # the watcher must outlive any one failed attempt
                logger.exception("Qdrant recheck failed")
