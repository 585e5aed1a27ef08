"""Move an embedded store left by qdrant-client's local mode (bookrag before the edge engine) into Qdrant's engine.

Until this version the embedded store was qdrant-client's local mode: `QDRANT_PATH/meta.json` lists the collections,
`QDRANT_PATH/collection/<name>/storage.sqlite` holds their points. The engine keeps its own files in
`QDRANT_PATH/edge`. On the first open of such a folder every local-mode collection is copied across through
qdrant-client's public API (scroll with vectors and payload, upsert into the engine), so no book has to be ingested
again.

Never a half-state: a collection is copied into `edge/<name>.migrating`, its point count checked against the source,
and only then renamed to `edge/<name>`; the local-mode files are moved aside (to `QDRANT_PATH/local-mode-backup`) only
once every collection is across. A failure leaves them where they were, removes the partial copy, and stops with a
message saying what to do (try again, or move the folder aside and ingest the book again).
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qdrant_client import QdrantClient, models

from chains.errors import DependencyUnavailable, StoreDamaged

if TYPE_CHECKING:
    from chains.edge_client import EdgeClient
    from chains.settings import Settings

logger = logging.getLogger(__name__)

BACKUP = "local-mode-backup"
_PAGE = 2_048
# What qdrant-client's local mode raises on files it cannot read: sqlite on a damaged database, pickle on a
# garbled point, json/pydantic on a garbled meta.json.
_DAMAGE_ERRORS = (sqlite3.DatabaseError, pickle.UnpicklingError, EOFError, json.JSONDecodeError, KeyError)


def local_collections(path: Path) -> list[str]:
    """The collections that a local-mode store at `path` lists (none when there is no such store)."""
    try:
        return [str(name) for name in json.loads((path / "meta.json").read_text(encoding="utf-8"))["collections"]]
    except FileNotFoundError:
        return []


def migrate_local_store(path: Path, engine: EdgeClient, settings: Settings) -> None:
    """Copy every collection of the local-mode store at `path` into `engine` (see the module docstring), laid
    out as the settings lay out a new collection (the indexing threshold that keeps a book's search exact).

    Raises `StoreDamaged` when the local-mode files cannot be read, `DependencyUnavailable` when another process
    (an older bookrag still running) holds them; in both cases nothing has been moved.
    """
    from chains.vectorstore import damaged_store_message, local_store_problem

    if not (path / "meta.json").exists():
        return
    problem = local_store_problem(path, deep=True)
    if problem is not None:
        raise StoreDamaged(f"{problem} (found while moving it to Qdrant's engine, which this version uses)")
    names = local_collections(path)
    started = time.perf_counter()
    try:
        source = QdrantClient(path=str(path))
    except RuntimeError as exc:
        if "already accessed by another instance" in str(exc):
            raise DependencyUnavailable(
                "qdrant",
                f"the embedded Qdrant store at {path} is open in another process (an older bookrag?), so it cannot be "
                "moved to this version's engine. Stop that process and start again.",
            ) from exc
        raise
    except _DAMAGE_ERRORS as exc:  # sound SQLite, but a stored point (or the collection list) does not load
        files = sorted(str(f) for f in path.glob("collection/*/storage.sqlite"))
        where = f"a stored point in {' or '.join(files)}" if files else str(path / "meta.json")
        raise StoreDamaged(damaged_store_message(path, where, f"cannot be read ({type(exc).__name__})")) from exc
    copied: dict[str, int] = {}
    try:
        for name in names:
            copied[name] = _copy(source, engine, name, path, settings)
    finally:
        source.close()
    backup = _move_aside(path)
    logger.warning(
        "moved the embedded store at %s from qdrant-client's local mode to Qdrant's engine (%s) in %.1f s: %s. "
        "The old files are kept in %s; delete that folder once the book answers as before.",
        path,
        engine.root,
        time.perf_counter() - started,
        ", ".join(f"collection {name!r} {count} points" for name, count in copied.items()) or "no collections",
        backup,
    )


def _copy(source: QdrantClient, engine: EdgeClient, name: str, path: Path, settings: Settings) -> int:
    """Copy one collection; returns its point count. An engine collection already there with the same count is a
    copy made by an earlier run (stopped before moving the old files aside): it is kept."""
    from chains.vectorstore import optimizers_config

    expected = source.count(name, exact=True).count
    if engine.collection_exists(name):
        have = engine.count(name, exact=True).count
        if have == expected:
            return have
        raise StoreDamaged(
            f"the embedded store at {path} holds collection {name!r} twice: {expected} points in qdrant-client's "
            f"local-mode files and {have} in Qdrant's engine ({engine.root / name}). Nothing was changed. Keep one: "
            f"move {engine.root / name} aside to have the local-mode copy moved across at the next start, or move "
            f"{path / 'meta.json'} and {path / 'collection'} aside to keep the engine's."
        )
    staging = f"{name}.migrating"  # not a valid collection name, so it never meets a real one
    engine.delete_collection(staging)  # a copy left by a run that stopped midway
    try:
        info = source.get_collection(name)
        vectors = info.config.params.vectors
        dense = vectors if isinstance(vectors, models.VectorParams) else next(iter((vectors or {}).values()), None)
        engine.create_collection(
            staging,
            vectors_config=vectors,
            sparse_vectors_config=info.config.params.sparse_vectors,
            optimizers_config=None if dense is None else optimizers_config(settings, dense.size),
        )
        offset: Any = None
        while True:
            records, offset = source.scroll(name, limit=_PAGE, offset=offset, with_payload=True, with_vectors=True)
            points = [models.PointStruct(id=r.id, vector=r.vector or {}, payload=r.payload) for r in records]
            engine.upsert(staging, points)
            if offset is None:
                break
        have = engine.count(staging, exact=True).count
        if have != expected:
            raise RuntimeError(f"{have} points copied of {expected}")
        engine.optimize(staging)  # merged segments (and HNSW above the threshold) before it is served
        engine.rename_collection(staging, name)
    except Exception as exc:
        engine.delete_collection(staging)
        if isinstance(exc, _DAMAGE_ERRORS):
            raise StoreDamaged(
                f"the embedded store at {path} could not be moved to Qdrant's engine, which this version uses: "
                f"a point of collection {name!r} cannot be read ({exc!r}). Nothing was changed. Move the folder aside "
                f"and ingest the book again (mv {path} {path}.old, then rag-ingest BOOK_FOLDER --base-dir BOOK_ROOT)."
            ) from exc
        raise RuntimeError(
            f"moving collection {name!r} of the embedded store at {path} to Qdrant's engine failed ({exc}); nothing "
            f"was changed. Start again to retry, or move the folder aside and ingest the book again "
            f"(mv {path} {path}.old, then rag-ingest BOOK_FOLDER --base-dir BOOK_ROOT)."
        ) from exc
    return have


def _move_aside(path: Path) -> Path:
    """Move local mode's files into `path/local-mode-backup` (a numbered one if that exists); returns it."""
    backup = path / BACKUP
    number = 1
    while backup.exists():
        number += 1
        backup = path / f"{BACKUP}-{number}"
    backup.mkdir()
    for name in ("meta.json", "collection", ".lock"):
        if (path / name).exists():
            shutil.move(str(path / name), str(backup / name))
    return backup
