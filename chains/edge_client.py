"""The embedded store on Qdrant's own engine (qdrant-edge-py), behind the part of `QdrantClient` this project uses.

Without `QDRANT_URL`, each collection is one `EdgeShard` in `QDRANT_PATH/edge/<name>`, the engine the Qdrant
server runs (HNSW, payload indexes, prefetch with RRF/DBSF fusion, MMR, the IDF modifier) in this process. The
indexer, the retriever, the health route and langchain-qdrant's `QdrantVectorStore` keep calling `QdrantClient`
methods with `qdrant_client.models`; `EdgeClient` translates those calls and their answers, so the server path
(`QDRANT_URL`, qdrant-client) and this one send the same requests and store the same vectors. A store left by
qdrant-client's local mode (the embedded store before this engine) is moved in on the first open
(`chains.store_migration`).

On purpose:
- Only what the project calls is translated; anything else raises `NotImplementedError` naming it, rather than
  half-working.
- The engine searches, fuses, diversifies (MMR) and filters itself: nothing is held in memory here.
- The engine optimizes (merges segments, builds HNSW above the indexing threshold) only when asked: after writes,
  once no write has come for `optimize_after_s`, a background thread does it; queries are answered from the
  unoptimized segments meanwhile.
- One process at a time: `QDRANT_PATH/edge/.lock` is held by the process that opened the store, and a second one
  is refused with `store_locked_message` (which `rag-ingest` prints).
- A payload change or a delete is applied while no read runs (`_Gate`): the engine applies one operation segment by
  segment, so a query running beside it could see it done in one segment and not yet in another. Ingest's swap of
  a file's chunks (one `set_payload`, ingest/indexer.py) is therefore seen whole by every reader; an upsert (the
  long write, of points hidden while staged) runs beside reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import qdrant_edge as qe
from qdrant_client import QdrantClient, models
from qdrant_client.http.models import QueryResponse

from chains.errors import DependencyUnavailable, StoreDamaged
from chains.settings import Settings
from chains.store_migration import BACKUP, migrate_local_store

logger = logging.getLogger(__name__)

_META = "bookrag-collection.json"  # the collection's vector layout, as `create_collection` was given it
# In _META while the collection is closed: its files' sizes and its point count as `close` left them, checked by the
# next open (a file gone or cut short would otherwise open as a smaller or empty book, or fail searches later).
_CLOSED = "closed"
_DISTANCES = {
    models.Distance.COSINE: qe.Distance.Cosine,
    models.Distance.DOT: qe.Distance.Dot,
    models.Distance.EUCLID: qe.Distance.Euclid,
    models.Distance.MANHATTAN: qe.Distance.Manhattan,
}
_SCHEMAS = {
    models.PayloadSchemaType.KEYWORD: qe.PayloadSchemaType.Keyword,
    models.PayloadSchemaType.INTEGER: qe.PayloadSchemaType.Integer,
    models.PayloadSchemaType.FLOAT: qe.PayloadSchemaType.Float,
    models.PayloadSchemaType.BOOL: qe.PayloadSchemaType.Bool,
    models.PayloadSchemaType.TEXT: qe.PayloadSchemaType.Text,
    models.PayloadSchemaType.DATETIME: qe.PayloadSchemaType.Datetime,
    models.PayloadSchemaType.UUID: qe.PayloadSchemaType.Uuid,
}
_DONE = models.UpdateResult(operation_id=0, status=models.UpdateStatus.COMPLETED)
RRF_K = 2  # Qdrant's default RRF constant


# How the engine words a request it refuses (Qdrant's OperationError), which a healthy store fails too: a faceted
# field without an index, a vector of the wrong size or name. Anything else failing a read is the store's damage.
_REQUEST_ERRORS = ("Wrong input", "Validation error", "No appropriate index", "Bad request")


class _Gate:
    """Many readers or one changer (set_payload, delete), a waiting changer first: a reader never sees one
    operation half-applied across segments."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._changing = False
        self._waiting = 0

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._changing and not self._waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def changing(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._changing and not self._readers)
            self._waiting -= 1
            self._changing = True
        try:
            yield
        finally:
            with self._cond:
                self._changing = False
                self._cond.notify_all()


class StoreLocked(RuntimeError):
    """The shard is open in another process (its write-ahead log is locked)."""


def open_edge_client(settings: Settings) -> QdrantClient:
    """The edge client for QDRANT_PATH, with the configured collection opened now (so that a store held by another
    process is reported at start-up, as local mode does). Typed as `QdrantClient`: it answers the calls this project
    and langchain-qdrant make (see the module docstring)."""
    try:
        client = EdgeClient(settings.qdrant_path / "edge")
    except StoreLocked as exc:
        raise DependencyUnavailable("qdrant", store_locked_message(settings.qdrant_path)) from exc
    try:
        migrate_local_store(settings.qdrant_path, client, settings)
        if client.collection_exists(settings.qdrant_collection):
            client.open(settings.qdrant_collection)
    except StoreLocked as exc:
        client.close()
        raise DependencyUnavailable("qdrant", store_locked_message(settings.qdrant_path)) from exc
    except BaseException:
        client.close()
        raise
    return cast(QdrantClient, client)


def damaged_engine_message(root: Path, name: str, file: Path, what: str) -> str:
    """What a damaged collection of the engine is reported as: the store, the file, what looks wrong, the fix."""
    store, folder = root.parent, root / name
    fix = (
        f"Move the collection aside (mv {folder} {folder}.damaged) and ingest the book again (rag-ingest "
        f"BOOK_FOLDER), or restore {store} from a backup"
    )
    backup = store / BACKUP
    if backup.is_dir():
        fix += (
            f"; {backup} holds the store as it was before it moved to Qdrant's engine: with the collection moved "
            f"aside, move the files in {backup} back into {store} and the next start migrates them again (chapters "
            "ingested since then need ingesting again)"
        )
    return (
        f"the embedded Qdrant store at {store} is damaged: {file} {what}. Nothing is served from it and nothing "
        f"was changed or deleted. {fix}."
    )


def _files(folder: Path) -> dict[str, int]:
    """The engine's files in a collection's folder, by path inside it, with their sizes; not the layout file nor
    the payload journals, which the engine folds into their storage and removes as it opens a segment."""
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in folder.rglob("*")
        if path.is_file() and path.name not in (_META, _META + ".tmp", "tracker_journal.dat")
    }


def store_problem(root: Path, name: str) -> str | None:
    """What is wrong with collection `name`'s files under `root` (QDRANT_PATH/edge), checked without opening it
    (None: nothing seen): its layout file unreadable, or missing beside segments; a file that the last clean close
    recorded gone or of another size (the engine would open a segment without its `version.info` as no segment at
    all, an empty book, and one with its vectors cut short fails only the searches that reach them)."""
    folder = root / name
    meta = folder / _META
    try:
        layout = json.loads(meta.read_text(encoding="utf-8"))
        closed = layout.get(_CLOSED) or {}
        recorded = {str(k): int(v) for k, v in (closed.get("files") or {}).items()}
    except FileNotFoundError:
        if (folder / "segments").is_dir():
            return damaged_engine_message(root, name, meta, "is missing (the collection's vector layout)")
        return None
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        return damaged_engine_message(root, name, meta, f"cannot be read ({type(exc).__name__})")
    for relative, size in sorted(recorded.items()):
        path = folder / relative
        try:
            now = path.stat().st_size
        except FileNotFoundError:
            return damaged_engine_message(root, name, path, "is missing (the store was closed with it)")
        except OSError as exc:
            return damaged_engine_message(root, name, path, f"cannot be read ({exc.strerror or exc})")
        if now != size:
            return damaged_engine_message(
                root,
                name,
                path,
                f"is {now} bytes, but the store was closed with it at {size} (cut short or overwritten)",
            )
    return None


def store_locked_message(path: Path) -> str:
    """What a second process is told (ingest/cli.py and the API print it as the reason)."""
    return (
        f"the embedded Qdrant store at {path} is open in another process (the embedded store allows one process "
        "at a time). Stop that process (e.g. the API server), or run Qdrant as a server (docker compose up -d "
        "qdrant) and set QDRANT_URL."
    )


class EdgeClient:
    """`QdrantClient`'s methods that this project uses, over one `EdgeShard` per collection under `root`."""

    def __init__(self, root: Path, optimize_after_s: float = 2.0) -> None:
        self.root = root
        self.optimize_after_s = optimize_after_s
        self._shards: dict[str, qe.EdgeShard] = {}
        self._layouts: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()  # guards the maps and the timers, never a search or a write
        self._timers: dict[str, threading.Timer] = {}
        self._dirty: set[str] = set()  # written since their last optimization: optimized on close
        self._optimizing = threading.Lock()  # close() waits for a running optimization rather than cut it off
        self._gate = _Gate()  # reads beside each other, a payload change or delete alone (module docstring)
        root.mkdir(parents=True, exist_ok=True)
        # The whole store is this process's while the client is open, as local mode's `.lock` makes it (a shard's
        # own WAL lock would leave a collection not yet created to whichever process creates it first).
        self._lockfile = (root / ".lock").open("a+")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lockfile.close()
            raise StoreLocked(f"the embedded store at {root} is open in another process") from exc

    # -- collections ---------------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.root / name

    def collection_exists(self, collection_name: str) -> bool:
        """Whether the collection is there; `StoreDamaged` when its folder holds segments but no layout (creating
        it anew would fail on them, and it is not empty)."""
        path = self._path(collection_name)
        if (path / _META).is_file():
            return True
        if (path / "segments").is_dir():
            raise StoreDamaged(
                damaged_engine_message(self.root, collection_name, path / _META, "is missing (its vector layout)")
            )
        return False

    def _write_layout(self, name: str, layout: dict[str, Any]) -> None:
        """Replace the layout file whole (a temporary file renamed over it: never half a file)."""
        target = self._path(name) / _META
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_text(json.dumps(layout), encoding="utf-8")
        temporary.replace(target)
        self._layouts[name] = layout

    def open(self, name: str) -> None:
        """Open the collection's shard now rather than at the first call."""
        self._shard(name)

    def _shard(self, name: str) -> qe.EdgeShard:
        with self._lock:
            shard = self._shards.get(name)
            if shard is not None:
                return shard
            if self._lockfile.closed:  # as qdrant-client's closed client: the caller reports the store down
                raise RuntimeError(f"the embedded store at {self.root} is closed")
            if not self.collection_exists(name):
                raise ValueError(f"Collection {name} not found")
            problem = store_problem(self.root, name)
            if problem is not None:
                raise StoreDamaged(problem)
            try:
                shard = qe.EdgeShard.load(str(self._path(name)))
            except BaseException as exc:  # the engine's errors, and a Rust panic (a BaseException in PyO3)
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                if "WouldBlock" in str(exc):
                    raise StoreLocked(f"the embedded store at {self._path(name)} is open in another process") from exc
                reason = str(exc).splitlines()[0][:400] if str(exc) else type(exc).__name__
                raise StoreDamaged(
                    damaged_engine_message(self.root, name, self._path(name), f"cannot be opened ({reason})")
                ) from exc
            self._check_opened(name, shard)
            self._shards[name] = shard
        # A store left unoptimized (a process stopped before its writes were optimized) is optimized in the
        # background; an optimized one makes this a no-op.
        self._schedule(name)
        return shard

    @contextlib.contextmanager
    def _reading(self, name: str) -> Iterator[None]:
        """A read beside other reads (`_Gate`); an engine error becomes a `RuntimeError` naming the store and what
        to do (what callers report as the store failing: 503, never a traceback), since a healthy shard does not
        fail a read (a vector file cut short fails only the reads that reach past its end)."""
        with self._gate.reading():
            try:
                yield
            except (ValueError, NotImplementedError):
                raise
            except Exception as exc:
                reason = str(exc).splitlines()[0][:400] if str(exc) else type(exc).__name__
                if reason.startswith(_REQUEST_ERRORS):  # the request was wrong, not the store (a server's 400)
                    raise ValueError(f"the embedded Qdrant engine refused the request: {reason}") from exc
                raise RuntimeError(
                    damaged_engine_message(self.root, name, self._path(name), f"failed a read ({reason})")
                ) from exc

    def _check_opened(self, name: str, shard: qe.EdgeShard) -> None:
        """Compare the opened shard with what its last clean close recorded, then drop the record (a process
        killed from now on leaves none, and its writes may change the count)."""
        layout = dict(self._layout(name))
        closed = layout.pop(_CLOSED, None)
        if not closed:
            return
        try:
            count = shard.count(qe.CountRequest(exact=True))
        except Exception as exc:
            shard.close()
            reason = str(exc).splitlines()[0][:400] if str(exc) else type(exc).__name__
            raise StoreDamaged(
                damaged_engine_message(self.root, name, self._path(name), f"cannot be read ({reason})")
            ) from exc
        if count != closed.get("points"):
            shard.close()
            raise StoreDamaged(
                damaged_engine_message(
                    self.root,
                    name,
                    self._path(name) / "segments",
                    f"hold {count} points, but the store was closed with {closed.get('points')} (a segment file "
                    "is truncated or damaged)",
                )
            )
        self._write_layout(name, layout)

    def _layout(self, name: str) -> dict[str, Any]:
        if name not in self._layouts:
            self._layouts[name] = json.loads((self._path(name) / _META).read_text(encoding="utf-8"))
        return self._layouts[name]

    def create_collection(
        self,
        collection_name: str,
        vectors_config: models.VectorParams | dict[str, models.VectorParams] | None = None,
        sparse_vectors_config: dict[str, models.SparseVectorParams] | None = None,
        optimizers_config: models.OptimizersConfigDiff | None = None,
        **_: Any,  # shards, replication, consistency, payload placement: a cluster's settings, not a shard's
    ) -> bool:
        if self.collection_exists(collection_name):
            raise ValueError(f"Collection {collection_name} already exists")
        dense = {"": vectors_config} if isinstance(vectors_config, models.VectorParams) else dict(vectors_config or {})
        sparse = dict(sparse_vectors_config or {})
        layout = {
            "vectors": {name: p.model_dump(mode="json", exclude_none=True) for name, p in dense.items()},
            "sparse_vectors": {name: p.model_dump(mode="json", exclude_none=True) for name, p in sparse.items()},
        }
        config = qe.EdgeConfig(
            vectors={name: _dense_params(p) for name, p in dense.items()},
            sparse_vectors={
                name: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf if p.modifier == models.Modifier.IDF else None)
                for name, p in sparse.items()
            },
            optimizers=_optimizers(optimizers_config),
        )
        path = self._path(collection_name)
        shard = qe.EdgeShard.create(str(path), config)
        self._write_layout(collection_name, layout)
        with self._lock:
            self._shards[collection_name] = shard
            self._layouts[collection_name] = layout
        return True

    def delete_collection(self, collection_name: str, **_: Any) -> bool:
        with self._lock:
            timer = self._timers.pop(collection_name, None)
            shard = self._shards.pop(collection_name, None)
            self._layouts.pop(collection_name, None)
            self._dirty.discard(collection_name)
        if timer is not None:
            timer.cancel()
        if shard is not None:
            with self._optimizing:
                shard.close()
        if not self._path(collection_name).exists():
            return False
        shutil.rmtree(self._path(collection_name))
        return True

    def rename_collection(self, old: str, new: str) -> None:
        """Give a collection another name (its folder renamed; the migration's last step)."""
        with self._lock:
            timer = self._timers.pop(old, None)
            shard = self._shards.pop(old, None)
            self._layouts.pop(old, None)
            self._dirty.discard(old)
        if timer is not None:
            timer.cancel()
        if shard is not None:
            with self._optimizing:
                shard.flush()
                shard.close()
        if self._path(new).exists():
            raise ValueError(f"Collection {new} already exists")
        self._path(old).rename(self._path(new))

    def get_collection(self, collection_name: str) -> models.CollectionInfo:
        """What `check_collection` and langchain-qdrant read: the vector layout, point count, payload indexes."""
        layout = self._layout(collection_name)
        info = self._shard(collection_name).info()
        vectors = {name: models.VectorParams(**v) for name, v in layout["vectors"].items()}
        params = models.CollectionParams(
            vectors=vectors[""] if set(vectors) == {""} else vectors,  # one unnamed vector, as a server reports it
            sparse_vectors={name: models.SparseVectorParams(**v) for name, v in layout["sparse_vectors"].items()},
        )
        schema = {
            field: models.PayloadIndexInfo(data_type=_schema_name(index.data_type), points=index.points)
            for field, index in info.payload_schema.items()
        }
        return models.CollectionInfo.model_construct(
            status=models.CollectionStatus.GREEN,
            optimizer_status=models.OptimizersStatusOneOf.OK,
            points_count=info.points_count,
            indexed_vectors_count=info.indexed_vectors_count,
            segments_count=info.segments_count,
            config=models.CollectionConfig.model_construct(  # type: ignore[call-arg]
                params=params, metadata=layout.get("metadata")
            ),
            payload_schema=schema,
        )

    def update_collection(self, collection_name: str, metadata: dict[str, Any] | None = None, **_: Any) -> bool:
        """Collection metadata (kept beside the shard, merged as a server merges it); other changes are a
        server's (optimizer, HNSW and quantization updates are not translated)."""
        if metadata:
            layout = dict(self._layout(collection_name))
            layout["metadata"] = {**(layout.get("metadata") or {}), **metadata}
            self._write_layout(collection_name, layout)
        return True

    def create_payload_index(
        self,
        collection_name: str,
        field_name: str,
        field_schema: models.PayloadSchemaType | None = None,
        **_: Any,
    ) -> models.UpdateResult:
        if field_schema not in _SCHEMAS:
            raise NotImplementedError(f"the embedded engine indexes {sorted(_SCHEMAS)} here, not {field_schema}")
        self._shard(collection_name).update(qe.UpdateOperation.create_field_index(field_name, _SCHEMAS[field_schema]))
        return _DONE

    # -- writes --------------------------------------------------------------------------------------------

    def _wrote(self, name: str) -> None:
        """Optimize `name` once writes pause (a new write restarts the wait), and at the latest on `close`."""
        with self._lock:
            self._dirty.add(name)
        self._schedule(name)

    def _schedule(self, name: str) -> None:
        with self._lock:
            old = self._timers.pop(name, None)
            if old is not None:
                old.cancel()
            timer = threading.Timer(self.optimize_after_s, self._optimize, args=(name,))
            timer.daemon = True
            self._timers[name] = timer
            timer.start()

    def _optimize(self, name: str) -> None:
        with self._lock:
            shard = self._shards.get(name)
        if shard is None:
            return
        try:
            with self._optimizing:
                with self._lock:
                    if self._shards.get(name) is not shard:
                        return  # closed or deleted meanwhile
                    self._dirty.discard(name)  # a write during the optimization marks it again
                shard.optimize()
        except Exception as exc:  # the data is safe in the unoptimized segments; searches only run slower
            logger.warning("optimizing the embedded collection %s failed: %s", name, exc)

    def upsert(
        self, collection_name: str, points: Sequence[models.PointStruct] | models.Batch, **_: Any
    ) -> models.UpdateResult:
        if isinstance(points, models.Batch):
            raise NotImplementedError("the embedded engine takes a list of PointStruct, not a Batch")
        converted = [qe.Point(_id_in(p.id), _vectors_in(p.vector), p.payload) for p in points]
        if converted:
            self._shard(collection_name).update(qe.UpdateOperation.upsert_points(converted))
            self._wrote(collection_name)
        return _DONE

    def delete(self, collection_name: str, points_selector: Any, **_: Any) -> models.UpdateResult:
        ids, where = _selector(points_selector)
        shard = self._shard(collection_name)
        with self._gate.changing():
            if where is not None:
                shard.update(qe.UpdateOperation.delete_points_by_filter(where))
            elif ids:
                shard.update(qe.UpdateOperation.delete_points(ids))
        self._wrote(collection_name)
        return _DONE

    def set_payload(
        self, collection_name: str, payload: dict[str, Any], points: Any, key: str | None = None, **_: Any
    ) -> models.UpdateResult:
        ids, where = _selector(points)
        shard = self._shard(collection_name)
        with self._gate.changing():
            if where is not None:
                shard.update(qe.UpdateOperation.set_payload_by_filter(where, payload, key))
            elif ids:
                shard.update(qe.UpdateOperation.set_payload(ids, payload, key))
        return _DONE

    def delete_payload(self, collection_name: str, keys: Sequence[str], points: Any, **_: Any) -> models.UpdateResult:
        ids, where = _selector(points)
        shard = self._shard(collection_name)
        with self._gate.changing():
            if where is not None:
                shard.update(qe.UpdateOperation.delete_payload_by_filter(where, list(keys)))
            elif ids:
                shard.update(qe.UpdateOperation.delete_payload(ids, list(keys)))
        return _DONE

    # -- reads ---------------------------------------------------------------------------------------------

    def count(
        self, collection_name: str, count_filter: models.Filter | None = None, exact: bool = True, **_: Any
    ) -> models.CountResult:
        request = qe.CountRequest(exact=exact, filter=_filter(count_filter))
        shard = self._shard(collection_name)
        with self._reading(collection_name):
            return models.CountResult(count=shard.count(request))

    def scroll(
        self,
        collection_name: str,
        scroll_filter: models.Filter | None = None,
        limit: int = 10,
        offset: models.ExtendedPointId | None = None,
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool | Sequence[str] = False,
        **_: Any,
    ) -> tuple[list[models.Record], models.ExtendedPointId | None]:
        request = qe.ScrollRequest(
            offset=None if offset is None else _id_in(offset),
            limit=limit,
            filter=_filter(scroll_filter),
            with_payload=_with(with_payload),
            with_vector=_with(with_vectors),
        )
        shard = self._shard(collection_name)
        with self._reading(collection_name):
            records, next_offset = shard.scroll(request)
        return [_record(r) for r in records], None if next_offset is None else _id_out(next_offset)

    def retrieve(
        self,
        collection_name: str,
        ids: Sequence[models.ExtendedPointId],
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool | Sequence[str] = False,
        **_: Any,
    ) -> list[models.Record]:
        shard = self._shard(collection_name)
        with self._reading(collection_name):
            records = shard.retrieve(
                [_id_in(i) for i in ids], with_payload=_with(with_payload), with_vector=_with(with_vectors)
            )
        return [_record(r) for r in records]

    def query_points(
        self,
        collection_name: str,
        query: Any = None,
        using: str | None = None,
        prefetch: models.Prefetch | Sequence[models.Prefetch] | None = None,
        query_filter: models.Filter | None = None,
        search_params: models.SearchParams | None = None,
        limit: int = 10,
        offset: int | None = None,
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool | Sequence[str] = False,
        score_threshold: float | None = None,
        **_: Any,  # consistency, timeout, lookup_from: a cluster's options
    ) -> QueryResponse:
        request = qe.QueryRequest(
            limit=limit,
            offset=offset,
            query=_query(query, using),
            prefetches=_prefetches(prefetch),
            filter=_filter(query_filter),
            score_threshold=score_threshold,
            params=_params(search_params),
            with_payload=_with(with_payload),
            with_vector=_with(with_vectors),
        )
        shard = self._shard(collection_name)
        with self._reading(collection_name):
            points = shard.query(request)
        return QueryResponse(
            points=[
                models.ScoredPoint(
                    id=_id_out(p.id),
                    version=p.version,
                    score=p.score,
                    payload=p.payload,
                    vector=_vectors_out(p.vector),
                )
                for p in points
            ]
        )

    def facet(
        self,
        collection_name: str,
        key: str,
        facet_filter: models.Filter | None = None,
        limit: int = 10,
        exact: bool = False,
        **_: Any,
    ) -> models.FacetResponse:
        request = qe.FacetRequest(key=key, limit=limit, exact=exact, filter=_filter(facet_filter))
        shard = self._shard(collection_name)
        with self._reading(collection_name):
            response = shard.facet(request)
        return models.FacetResponse(hits=[models.FacetValueHit(value=hit.value, count=hit.count) for hit in response])

    def optimize(self, collection_name: str) -> None:
        """Optimize now (the migration, the bench and tests; the service lets the background timer do it)."""
        shard = self._shard(collection_name)
        with self._optimizing:
            with self._lock:
                self._dirty.discard(collection_name)
            shard.optimize()

    def close(self, **_: Any) -> None:
        """Optimize what was written and not yet optimized (so that the next process opens merged segments: at
        10,000 chunks an unoptimized store took 3.1 s to open, an optimized one 0.2 s), then close."""
        with self._lock:
            timers, self._timers = list(self._timers.values()), {}
            shards, self._shards = dict(self._shards), {}
            dirty, self._dirty = set(self._dirty), set()
        for timer in timers:
            timer.cancel()
        with self._optimizing:
            for name, shard in shards.items():
                if name in dirty:
                    try:
                        shard.optimize()
                    except Exception as exc:  # the data is safe unoptimized; the next open optimizes it
                        logger.warning("optimizing the embedded collection %s failed: %s", name, exc)
                shard.flush()
                self._record_close(name, shard)
                shard.close()
        if not self._lockfile.closed:
            fcntl.flock(self._lockfile, fcntl.LOCK_UN)
            self._lockfile.close()

    def _record_close(self, name: str, shard: qe.EdgeShard) -> None:
        """Note the files (with their sizes) and the point count in the layout file, for the next open to check
        (`store_problem`, `_check_opened`)."""
        try:
            count = shard.count(qe.CountRequest(exact=True))
            files = _files(self._path(name))
            self._write_layout(name, {**self._layout(name), _CLOSED: {"points": count, "files": files}})
        except Exception as exc:  # no record: the next open checks less, nothing else changes
            logger.warning("could not record the state of the embedded collection %s: %s", name, exc)

    def __getattr__(self, name: str) -> Any:
        raise NotImplementedError(
            f"QdrantClient.{name} is not available on the embedded store (Qdrant's engine in-process); "
            "use a Qdrant server (QDRANT_URL) for it"
        )


# -- translation -----------------------------------------------------------------------------------------------


def _dense_params(params: models.VectorParams) -> qe.EdgeVectorParams:
    """The engine's form of a dense vector's layout: distance, placement, HNSW and quantization."""
    hnsw = None
    if params.hnsw_config is not None:
        given = params.hnsw_config
        hnsw = qe.HnswIndexConfig(
            m=given.m if given.m is not None else 16,
            ef_construct=given.ef_construct if given.ef_construct is not None else 100,
            full_scan_threshold=given.full_scan_threshold if given.full_scan_threshold is not None else 10_000,
        )
    quantization: Any = None
    wanted = params.quantization_config
    if isinstance(wanted, models.ScalarQuantization):
        quantization = qe.ScalarQuantizationConfig(
            type=qe.ScalarType.Int8, quantile=wanted.scalar.quantile, always_ram=wanted.scalar.always_ram
        )
    elif isinstance(wanted, models.BinaryQuantization):
        quantization = qe.BinaryQuantizationConfig(always_ram=wanted.binary.always_ram)
    elif wanted is not None:
        raise NotImplementedError(f"the embedded engine here takes scalar or binary quantization, not {wanted}")
    return qe.EdgeVectorParams(
        size=params.size,
        distance=_DISTANCES[params.distance],
        on_disk=params.on_disk,
        quantization_config=quantization,
        hnsw_config=hnsw,
    )


def _optimizers(given: models.OptimizersConfigDiff | None) -> qe.EdgeOptimizersConfig | None:
    """The part of a server's optimizer settings a shard takes (the indexing threshold decides exact search)."""
    if given is None:
        return None
    return qe.EdgeOptimizersConfig(
        deleted_threshold=given.deleted_threshold,
        vacuum_min_vector_number=given.vacuum_min_vector_number,
        default_segment_number=given.default_segment_number,
        max_segment_size=given.max_segment_size,
        indexing_threshold=given.indexing_threshold,
    )


def _schema_name(kind: Any) -> models.PayloadSchemaType:
    for ours, theirs in _SCHEMAS.items():
        if theirs == kind:
            return ours
    return models.PayloadSchemaType.KEYWORD


def _id_in(point_id: Any) -> Any:
    if isinstance(point_id, int | uuid.UUID):
        return point_id
    return uuid.UUID(str(point_id))  # qdrant-client accepts only ints and UUIDs too


def _id_out(point_id: Any) -> models.ExtendedPointId:
    return point_id if isinstance(point_id, int) else str(point_id)


def _with(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else bool(value)


def _sparse_in(vector: models.SparseVector) -> qe.SparseVector:
    return qe.SparseVector(list(vector.indices), list(vector.values))


def _vectors_in(vector: Any) -> Any:
    if isinstance(vector, dict):
        out: dict[str, Any] = {}
        for name, value in vector.items():
            if isinstance(value, models.SparseVector):
                out[name] = _sparse_in(value)
            elif isinstance(value, list):
                out[name] = [float(x) for x in value]
            else:
                raise NotImplementedError(f"the embedded engine stores vectors and sparse vectors, not {type(value)}")
        return out
    if isinstance(vector, list):
        return {"": [float(x) for x in vector]}
    raise NotImplementedError(f"the embedded engine stores vectors and sparse vectors, not {type(vector)}")


def _vectors_out(vector: Any) -> Any:
    if not vector:
        return None
    if isinstance(vector, dict):
        out = {
            name: models.SparseVector(indices=list(v.indices), values=list(v.values))
            if isinstance(v, qe.SparseVector)
            else list(v)
            for name, v in vector.items()
        }
        return out[""] if set(out) == {""} else out
    return list(vector)


def _record(record: qe.Record) -> models.Record:
    return models.Record(id=_id_out(record.id), payload=record.payload, vector=_vectors_out(record.vector))


def _selector(selector: Any) -> tuple[list[Any], qe.Filter | None]:
    """Point ids or a filter, from any of qdrant-client's point selectors."""
    if isinstance(selector, models.PointIdsList):
        return [_id_in(i) for i in selector.points], None
    if isinstance(selector, models.FilterSelector):
        return [], _filter(selector.filter)
    if isinstance(selector, models.Filter):
        return [], _filter(selector)
    if isinstance(selector, list | tuple):
        return [_id_in(i) for i in selector], None
    raise NotImplementedError(f"the embedded engine selects points by ids or a filter, not {type(selector)}")


def _conditions(conditions: Any) -> list[Any] | None:
    if conditions is None:
        return None
    if not isinstance(conditions, list):
        conditions = [conditions]
    return [_condition(c) for c in conditions]


def _filter(where: models.Filter | None) -> qe.Filter | None:
    if where is None:
        return None
    if where.min_should is not None:
        raise NotImplementedError("the embedded engine's filters here take must / should / must_not, not min_should")
    return qe.Filter(
        must=_conditions(where.must), should=_conditions(where.should), must_not=_conditions(where.must_not)
    )


def _condition(condition: Any) -> Any:
    if isinstance(condition, models.Filter):
        return _filter(condition)
    if isinstance(condition, models.FieldCondition):
        return qe.FieldCondition(
            key=condition.key,
            match=_match(condition.match),
            range=_range(condition.range),
            is_empty=condition.is_empty,
            is_null=condition.is_null,
        )
    if isinstance(condition, models.HasIdCondition):
        return qe.HasIdCondition({_id_in(i) for i in condition.has_id})
    if isinstance(condition, models.HasVectorCondition):
        return qe.HasVectorCondition(condition.has_vector)
    if isinstance(condition, models.IsEmptyCondition):
        return qe.IsEmptyCondition(condition.is_empty.key)
    if isinstance(condition, models.IsNullCondition):
        return qe.IsNullCondition(condition.is_null.key)
    raise NotImplementedError(f"the embedded engine's filters here do not take {type(condition).__name__}")


def _match(match: Any) -> Any:
    if match is None:
        return None
    if isinstance(match, models.MatchValue):
        return qe.MatchValue(match.value)
    if isinstance(match, models.MatchAny):
        return qe.MatchAny(list(match.any))  # type: ignore[arg-type]
    if isinstance(match, models.MatchExcept):
        return qe.MatchExcept(list(match.except_))  # type: ignore[arg-type]
    if isinstance(match, models.MatchText):
        return qe.MatchText(match.text)
    raise NotImplementedError(f"the embedded engine's filters here do not take {type(match).__name__}")


def _range(bounds: Any) -> qe.RangeFloat | None:
    if bounds is None:
        return None
    if not isinstance(bounds, models.Range):
        raise NotImplementedError(f"the embedded engine's filters here take numeric ranges, not {type(bounds)}")
    return qe.RangeFloat(gte=bounds.gte, gt=bounds.gt, lte=bounds.lte, lt=bounds.lt)


def _params(params: models.SearchParams | None) -> qe.SearchParams | None:
    if params is None:
        return None
    return qe.SearchParams(hnsw_ef=params.hnsw_ef, exact=bool(params.exact))


def _nearest(vector: Any, using: str | None) -> qe.Query:
    if isinstance(vector, models.SparseVector):
        return qe.Query.Nearest(_sparse_in(vector), using=using)
    if isinstance(vector, list):
        return qe.Query.Nearest([float(x) for x in vector], using=using)
    raise NotImplementedError(f"the embedded engine searches by a vector or a sparse vector, not {type(vector)}")


def _query(query: Any, using: str | None) -> Any:
    if query is None:
        return None
    if isinstance(query, models.NearestQuery):
        if query.mmr is not None:
            diversity = 0.5 if query.mmr.diversity is None else query.mmr.diversity
            candidates = query.mmr.candidates_limit or 100
            # Qdrant's MMR weighs relevance by lambda = 1 - diversity (its server does this translation too).
            return qe.Mmr(_vector(query.nearest), 1.0 - diversity, candidates, using=using)
        return _nearest(query.nearest, using)
    if isinstance(query, models.FusionQuery):
        return qe.Fusion.Dbsf() if query.fusion == models.Fusion.DBSF else qe.Fusion.Rrf(k=RRF_K)
    if isinstance(query, models.RrfQuery):
        return qe.Fusion.Rrf(k=query.rrf.k or RRF_K, weights=query.rrf.weights)
    return _nearest(query, using)


def _vector(vector: Any) -> Any:
    return _sparse_in(vector) if isinstance(vector, models.SparseVector) else [float(x) for x in vector]


def _prefetches(prefetch: models.Prefetch | Sequence[models.Prefetch] | None) -> list[qe.Prefetch] | None:
    if prefetch is None:
        return None
    items: Iterable[models.Prefetch] = [prefetch] if isinstance(prefetch, models.Prefetch) else prefetch
    return [
        qe.Prefetch(
            limit=p.limit or 10,
            query=_query(p.query, p.using),
            prefetches=_prefetches(p.prefetch),
            params=_params(p.params),
            filter=_filter(p.filter),
            score_threshold=p.score_threshold,
        )
        for p in items
    ]
