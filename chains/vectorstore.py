"""The Qdrant client, collection layout and LangChain vector store shared by ingest and the answer chain.

Points use langchain-qdrant's payload layout (`page_content` plus a `metadata` object) so that any LangChain code
can read the collection, with a named dense vector so that a sparse one can sit beside it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_qdrant import QdrantVectorStore
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from chains.embeddings import packaged_model
from chains.errors import CollectionMismatch, StoreDamaged
from chains.settings import Settings

logger = logging.getLogger(__name__)

DENSE_VECTOR = "dense"
SPARSE_VECTOR = "sparse"
CONTENT_KEY = "page_content"
METADATA_KEY = "metadata"
# How ingest replaces a file at once (ingest/indexer.py, docs/ingest.md): its new chunks are written carrying
# STAGED_KEY (hidden), then ONE set_payload gives SWAPPED_KEY to them and to the chunks they replace, which shows
# the first and hides the second together. A point is visible with both marks or with neither (`VISIBLE`); the
# replaced points are then deleted and the marks removed. Top-level keys, outside LangChain's metadata.
STAGED_KEY = "bookrag_staged"
SWAPPED_KEY = "bookrag_swapped"
# When a staged chunk was written (seconds since the epoch): on a server, where another ingest may be writing into
# the same collection, a run removes only staged chunks old enough to be a dead run's (ingest/indexer.py).
STAGED_AT_KEY = "bookrag_staged_at"
# The embedding model that made a chunk's dense vector (`embedding_identity`), written by ingest: questions
# embedded by another model would rank a store's chunks at random, so the service will not serve such a store
# (`check_store_embedding`). Chunks ingested before this key existed were embedded by LEGACY_EMBEDDING, the default
# then.
EMBEDDING_KEY = "bookrag_embedding"
LEGACY_EMBEDDING = "local:all-MiniLM-L6-v2"
LEGACY_DIMENSION = 384  # its vectors' size: unrecorded chunks of another size were embedded by another model
# Payload fields that filters use; indexed so that a filtered search or read stays fast.
INDEXED_FIELDS: dict[str, models.PayloadSchemaType] = {
    f"{METADATA_KEY}.source": models.PayloadSchemaType.KEYWORD,
    f"{METADATA_KEY}.chapter": models.PayloadSchemaType.KEYWORD,
    f"{METADATA_KEY}.content_hash": models.PayloadSchemaType.KEYWORD,
    # faceted by `book_version`
    f"{METADATA_KEY}.file_hash": models.PayloadSchemaType.KEYWORD,
    STAGED_KEY: models.PayloadSchemaType.KEYWORD,
    SWAPPED_KEY: models.PayloadSchemaType.KEYWORD,
    EMBEDDING_KEY: models.PayloadSchemaType.KEYWORD,
    # Neighbour passages (chains/neighbours.py) read a passage's chunks before and after it by position.
    f"{METADATA_KEY}.chunk_index": models.PayloadSchemaType.INTEGER,
}
# Ids that callers give (strings like "chapter-1") become UUIDs in this namespace; the original id is kept.
_ID_NAMESPACE = uuid.UUID("6f1c4f5e-6a44-4f59-9a57-5d1f1b7f2a10")
_INTERNAL_KEYS = ("_id", "_collection_name")
_SQLITE_MAGIC = b"SQLite format 3\x00"


def damaged_store_message(path: Path, file: Path | str, what: str) -> str:
    return (
        f"the embedded Qdrant store at {path} is damaged: {file} {what}. Nothing is served from it. Restore "
        f"{path} from a backup, or move it aside and ingest the book again (mv {path} {path}.damaged, then "
        "rag-ingest BOOK_FOLDER --base-dir BOOK_ROOT, or POST /admin/ingest)."
    )


def local_store_problem(path: Path, deep: bool = False) -> str | None:
    """What is wrong with the local-mode files at `path` (an embedded store from before the edge engine, not yet
    migrated), checked without opening them (None: nothing seen).

    Local mode keeps `meta.json` (the collections) and `collection/<name>/storage.sqlite` (their points). A
    collection listed with its storage file gone would open as an empty collection and be served as an empty
    book; a damaged file would stop the opening with sqlite's or pickle's traceback. `deep` also runs SQLite's
    `quick_check` on each storage file (reads every page: for start-up, not for every probe).
    """
    meta_path = path / "meta.json"
    if not meta_path.exists():
        return edge_store_problem(path, deep)
    try:
        collections = json.loads(meta_path.read_text(encoding="utf-8"))["collections"]
        names = list(collections)
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        return damaged_store_message(path, meta_path, f"cannot be read ({type(exc).__name__})")
    for name in names:
        storage = path / "collection" / str(name) / "storage.sqlite"
        try:
            with storage.open("rb") as handle:
                header = handle.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            return damaged_store_message(
                path, storage, f"is missing (collection {name!r} is listed in meta.json with its points there)"
            )
        except OSError as exc:
            return damaged_store_message(path, storage, f"cannot be read ({exc.strerror or exc})")
        if header != _SQLITE_MAGIC:
            return damaged_store_message(path, storage, "is not an SQLite database (truncated or overwritten)")
        if deep:
            try:
                with sqlite3.connect(f"file:{storage}?mode=ro", uri=True) as connection:
                    result = connection.execute("PRAGMA quick_check").fetchone()
                connection.close()
            except sqlite3.DatabaseError as exc:
                return damaged_store_message(path, storage, f"is damaged ({exc})")
            if not result or result[0] != "ok":
                return damaged_store_message(path, storage, f"is damaged ({result[0] if result else 'no answer'})")
    return None


def edge_store_problem(path: Path, deep: bool = False) -> str | None:
    """What is wrong with the engine's collections under `path/edge` (None: nothing seen): from their files
    (chains.edge_client `store_problem`), and with `deep` (start-up) by opening each as the engine would (a WAL
    or segment it cannot read, points lost), then closing it; a store held by another process is not judged."""
    edge = path / "edge"
    if not edge.is_dir():
        return None
    from chains.edge_client import EdgeClient, StoreLocked, store_problem

    names = sorted(p.name for p in edge.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in names:
        problem = store_problem(edge, name)
        if problem is not None:
            return problem
    if not deep:
        return None
    try:
        client = EdgeClient(edge)
    except StoreLocked:
        return None
    try:
        for name in names:
            if client.collection_exists(name):
                client.open(name)
    except StoreDamaged as exc:
        return str(exc)
    finally:
        client.close()
    return None


def build_qdrant_client(settings: Settings) -> QdrantClient:
    """A client for the configured server, or for the embedded on-disk store (one process at a time).

    The embedded store is Qdrant's own engine in this process (`chains.edge_client`); a store left by
    qdrant-client's local mode is moved into it on the first open (`chains.store_migration`). Raises
    `StoreDamaged` (naming the file and what to do) when such local-mode files are damaged, and
    `DependencyUnavailable` when another process holds the store.
    """
    if settings.qdrant_url is not None:
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantClient(url=str(settings.qdrant_url), api_key=api_key, timeout=int(settings.qdrant_timeout_s))
    from chains.edge_client import open_edge_client

    settings.qdrant_path.mkdir(parents=True, exist_ok=True)
    return open_edge_client(settings)


def field_empty(key: str) -> models.IsEmptyCondition:
    return models.IsEmptyCondition(is_empty=models.PayloadField(key=key))


def field_set(key: str) -> models.Filter:
    return models.Filter(must_not=[field_empty(key)])


# Visible: neither mark (any point but an ingest's in-flight ones: LangChain's too), or both (swapped in, the marks
# not yet removed). Hidden: staged and not yet swapped in (an ingest writing, or a dead one's leftovers), or swapped
# out (replaced, waiting to be deleted). This form measured cheaper than its must_not equivalent
# (bench/visible_filter_bench.py).
VISIBLE = models.Filter(
    should=[
        models.Filter(must=[field_empty(STAGED_KEY), field_empty(SWAPPED_KEY)]),
        models.Filter(must=[field_set(STAGED_KEY), field_set(SWAPPED_KEY)]),
    ]
)
# Any point an ingest has marked (what `Indexer.recover` looks for).
MARKED = models.Filter(should=[field_set(STAGED_KEY), field_set(SWAPPED_KEY)])


# Facets list at most this many values: more than any book has files or chapters.
FACET_LIMIT = 100_000


# (point count, digest of the stored files' hashes): `book_version`
BookVersion = tuple[int, int]


def book_version(client: QdrantClient, collection: str) -> BookVersion:
    """What changes whenever the stored book does, for what is read from all of it once and kept (the catalogue,
    the vocabulary): the point count, which moves while an ingest stages and deletes, and a digest of the stored
    files' hashes, which changes when a chapter is replaced by one of as many chunks, also by an ingest in another
    process (on a Qdrant server), which cannot tell this one to read again. The facet lists the values without
    counting them exactly or filtering (well under a millisecond at 5,000 chunks, against 7 ms exact and visible)."""
    count = client.count(collection, exact=True).count
    try:
        hits = client.facet(collection, key=f"{METADATA_KEY}.file_hash", limit=FACET_LIMIT, exact=False).hits
    except (ValueError, UnexpectedResponse) as exc:  # the index not there yet (a server building it): the count
        logger.debug("book version: no file hash facet (%s): the point count alone", exc)
        return count, 0
    return count, zlib.crc32("\n".join(sorted(str(hit.value) for hit in hits)).encode("utf-8"))


def visible(where: models.Filter | None = None) -> models.Filter:
    """`where` restricted to the points readers may see (`VISIBLE`): what every product query filters by."""
    return VISIBLE if where is None else models.Filter(must=[where, VISIBLE])


def point_id(key: str) -> str:
    """A stable UUID for any string key: the same key always gives the same point."""
    try:
        return str(uuid.UUID(key))
    except ValueError:
        return str(uuid.uuid5(_ID_NAMESPACE, key))


def embedding_identity(settings: Settings) -> str:
    """What embeds the chunks and questions, as EMBEDDING_KEY records it and a chunk's layout includes it: provider
    and model, a packaged model by its own name whatever organisation prefixes it (`sentence-transformers/`)."""
    model = settings.embedding_model
    if settings.embedding_provider == "local" and packaged_model(model) is not None and not Path(model).is_dir():
        model = model.rsplit("/", 1)[-1]
    return f"{settings.embedding_provider}:{model}"


@dataclass(frozen=True, slots=True)
class OtherEmbedding:
    """Visible chunks of a collection embedded by another model than the configured one."""

    chunks: int
    total: int
    model: str  # the other model, as EMBEDDING_MODEL would name it
    unrecorded: bool  # ingested before bookrag recorded the model (so by the default of then)


def other_embedding(client: QdrantClient, settings: Settings) -> OtherEmbedding | None:
    """Whether visible chunks of the collection were embedded by another model than the configured one. Points
    LangChain code added (no EMBEDDING_KEY, no content hash) were embedded by the store's own model and pass."""
    name = settings.qdrant_collection
    if not client.collection_exists(name):
        return None
    current = embedding_identity(settings)
    recorded_otherwise = models.Filter(
        must=[models.Filter(must_not=[field_empty(EMBEDDING_KEY)])],
        must_not=[models.FieldCondition(key=EMBEDDING_KEY, match=models.MatchValue(value=current))],
    )
    other = [recorded_otherwise]
    if current != LEGACY_EMBEDDING and _dense_size(client, name) == LEGACY_DIMENSION:
        # ingested before the key existed, with vectors of the old default's size: most likely by it. (Unrecorded
        # chunks of another size, from OpenAI embeddings say, passed the dimension check: the configured model's.)
        other.append(models.Filter(must=[field_empty(EMBEDDING_KEY), field_set(f"{METADATA_KEY}.content_hash")]))
    where = visible(models.Filter(should=other))
    count = client.count(name, count_filter=where, exact=True).count
    if not count:
        return None
    points, _ = client.scroll(name, scroll_filter=where, limit=1, with_payload=[EMBEDDING_KEY], with_vectors=False)
    found = (points[0].payload or {}).get(EMBEDDING_KEY) if points else None
    total = client.count(name, count_filter=VISIBLE, exact=True).count
    return OtherEmbedding(count, total, str(found or LEGACY_EMBEDDING).split(":", 1)[-1], not found)


def _dense_size(client: QdrantClient, name: str) -> int | None:
    vectors = client.get_collection(name).config.params.vectors
    params = vectors.get(DENSE_VECTOR) if isinstance(vectors, dict) else None
    return params.size if params is not None else None


def check_store_embedding(client: QdrantClient, settings: Settings) -> None:
    """Raise `CollectionMismatch` when visible chunks of the collection were embedded by another model than the
    configured one (`other_embedding`), naming both and the fix."""
    other = other_embedding(client, settings)
    if other is None:
        return
    note = " (ingested before bookrag recorded the model)" if other.unrecorded else ""
    raise CollectionMismatch(
        f"collection {settings.qdrant_collection!r}: {other.chunks} of {other.total} chunks were embedded with "
        f"{other.model}{note}, but EMBEDDING_MODEL is {settings.embedding_model}, so questions would be compared "
        f"with another model's vectors. Run rag-ingest on the book again (it re-embeds every chunk with "
        f"{settings.embedding_model}), or set EMBEDDING_MODEL={other.model} to serve the store as it is"
    )


def ensure_collection(client: QdrantClient, settings: Settings, dimension: int) -> None:
    """Create the collection (dense cosine vectors, payload indexes) if missing; if present, check it and add
    any payload index it lacks (a collection made by an older version or by hand)."""
    name = settings.qdrant_collection
    if client.collection_exists(name):
        info = check_collection(client, name, dimension)
        ensure_payload_indexes(client, name, info.payload_schema, wait=False)
        return
    logger.info(
        "creating collection %s (dimension %d, %d shard(s), replication %d, on_disk=%s, quantization=%s)",
        name,
        dimension,
        settings.qdrant_shard_number,
        settings.qdrant_replication_factor,
        settings.qdrant_on_disk,
        settings.qdrant_quantization,
    )
    client.create_collection(name, **collection_layout(settings, dimension))
    ensure_payload_indexes(client, name, {}, wait=True)


def prepare_collection(client: QdrantClient, settings: Settings, dimension: int) -> None:
    """What the service checks before serving a store: the collection made or checked (`ensure_collection`), and
    its chunks embedded by the configured model (`check_store_embedding`)."""
    ensure_collection(client, settings, dimension)
    check_store_embedding(client, settings)


def missing_payload_indexes(
    payload_schema: Mapping[str, models.PayloadIndexInfo],
) -> dict[str, models.PayloadSchemaType]:
    """The INDEXED_FIELDS that `payload_schema` (a collection's `payload_schema`) has no index for."""
    return {field: schema for field, schema in INDEXED_FIELDS.items() if field not in payload_schema}


def ensure_payload_indexes(
    client: QdrantClient, name: str, payload_schema: Mapping[str, models.PayloadIndexInfo], wait: bool
) -> None:
    """Create the payload indexes that `payload_schema` lacks. A refusal is logged, never raised: filtered
    search works without an index (only slower on a server), so it must not stop start-up or ingest.

    On purpose: an existing collection's indexes are built with `wait=False`, so that a large collection does not
    hold start-up while the server indexes it. A field indexed with another type (by hand) is left as it is.
    """
    for field, info in payload_schema.items():
        wanted = INDEXED_FIELDS.get(field)
        if wanted is not None and info.data_type != wanted:
            logger.warning(
                "collection %s indexes %s as %s, not %s: filters on it may not use the index",
                name,
                field,
                info.data_type,
                wanted.value,
            )
    for field, schema in missing_payload_indexes(payload_schema).items():
        try:
            client.create_payload_index(name, field_name=field, field_schema=schema, wait=wait)
        except (UnexpectedResponse, ResponseHandlingException) as exc:
            logger.warning(
                "could not create the payload index %s on collection %s (%s): filtered search by it runs "
                "unindexed; create it by hand or with an API key that may",
                field,
                name,
                exc,
            )


def collection_layout(settings: Settings, dimension: int) -> dict[str, Any]:
    """The `create_collection` arguments that the settings ask for (a pure function, so tests can read it).

    HNSW and quantization are set on the dense vector itself: the sparse vector takes neither. The indexing
    threshold keeps a book-sized collection exact (`optimizers_config`). `on_disk` and
    `on_disk_payload` are the deprecated spellings in qdrant-client 1.20, kept on purpose: servers before 1.20
    do not know their replacement (`memory`). The embedded store ignores shards, replication, write consistency
    and payload placement (it is one process with no cluster); a server applies them.
    """
    on_disk = settings.qdrant_on_disk or None
    hnsw = None
    if settings.qdrant_hnsw_m is not None or settings.qdrant_hnsw_ef_construct is not None:
        hnsw = models.HnswConfigDiff(m=settings.qdrant_hnsw_m, ef_construct=settings.qdrant_hnsw_ef_construct)
    dense = models.VectorParams(
        size=dimension,
        distance=models.Distance.COSINE,
        on_disk=on_disk,
        hnsw_config=hnsw,
        quantization_config=quantization_config(settings.qdrant_quantization),
    )
    return {
        "vectors_config": {DENSE_VECTOR: dense},
        "sparse_vectors_config": {SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        "optimizers_config": optimizers_config(settings, dimension),
        "shard_number": settings.qdrant_shard_number,
        "replication_factor": settings.qdrant_replication_factor,
        "write_consistency_factor": settings.qdrant_write_consistency_factor,
        "on_disk_payload": on_disk,
    }


def optimizers_config(settings: Settings, dimension: int) -> models.OptimizersConfigDiff | None:
    """Qdrant's indexing threshold (KB of vectors a segment must exceed to get an HNSW graph) for
    QDRANT_EXACT_UP_TO_CHUNKS float32 vectors of `dimension`, plus a tenth: a collection of that many chunks
    exactly was measured to get a graph at the bare size (bench.edge_bench --parts exact)."""
    if not settings.qdrant_exact_up_to_chunks:
        return None
    kilobytes = -(-settings.qdrant_exact_up_to_chunks * dimension * 4 * 11 // (10 * 1024))
    return models.OptimizersConfigDiff(indexing_threshold=kilobytes)


def quantization_config(kind: str) -> models.QuantizationConfig | None:
    """QDRANT_QUANTIZATION as Qdrant's config: compressed vectors kept in RAM, the originals (on disk) rescore."""
    if kind == "scalar":
        return models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
        )
    if kind == "binary":
        return models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))
    return None


def check_collection(client: QdrantClient, name: str, dimension: int) -> models.CollectionInfo:
    """The collection's info; `CollectionMismatch` when the stored vectors are not what the embedding model makes."""
    info = client.get_collection(name)
    vectors = info.config.params.vectors
    params = vectors.get(DENSE_VECTOR) if isinstance(vectors, dict) else None
    if params is None:
        raise CollectionMismatch(
            f"collection {name!r} has no dense vector named {DENSE_VECTOR!r}; it was not made by this project. "
            "Use another QDRANT_COLLECTION or delete it."
        )
    sparse = info.config.params.sparse_vectors or {}
    if SPARSE_VECTOR not in sparse:
        raise CollectionMismatch(
            f"collection {name!r} has no sparse vector named {SPARSE_VECTOR!r}, which hybrid retrieval and ingest "
            "need; it was not made by this project. Ingest into a fresh collection (another QDRANT_COLLECTION, "
            "or delete this one and run rag-ingest again)."
        )
    if params.size != dimension:
        raise CollectionMismatch(
            f"collection {name!r} stores {params.size}-dimensional vectors but the embedding model makes "
            f"{dimension}-dimensional ones. Use the model it was built with, another QDRANT_COLLECTION, "
            "or re-ingest into a fresh collection."
        )
    return info


def points_without_sparse(client: QdrantClient, name: str) -> int:
    """How many stored points lack the sparse vector (ingested before hybrid retrieval existed)."""
    lacking = models.Filter(must_not=[models.HasVectorCondition(has_vector=SPARSE_VECTOR)])
    return client.count(name, count_filter=lacking, exact=True).count


class BookVectorStore(QdrantVectorStore):
    """`QdrantVectorStore` with stable ids: any string id is accepted and returned as given, and documents
    come back with `Document.id` set and no internal keys in their metadata."""

    ORIGINAL_ID_KEY = "doc_id"

    def add_texts(  # type: ignore[override]
        self,
        texts: Any,
        metadatas: list[dict[str, Any]] | None = None,
        ids: Any = None,
        batch_size: int = 64,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        given = [str(i) for i in ids] if ids is not None else [str(uuid.uuid4()) for _ in texts]
        metadatas = [dict(m) for m in metadatas] if metadatas else [{} for _ in texts]
        for metadata, original in zip(metadatas, given, strict=True):
            metadata[self.ORIGINAL_ID_KEY] = original
        super().add_texts(texts, metadatas, [point_id(i) for i in given], batch_size, **kwargs)
        return given

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        if "ids" not in kwargs and any(doc.id for doc in documents):
            kwargs["ids"] = [doc.id or str(uuid.uuid4()) for doc in documents]
        return super().add_documents(documents, **kwargs)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:  # type: ignore[override]
        if ids is None:
            return None
        return super().delete([point_id(str(i)) for i in ids], **kwargs)

    def get_by_ids(self, ids: Any, /) -> list[Document]:
        return super().get_by_ids([point_id(str(i)) for i in ids])

    # LangChain's searches see what the product's do: not the chunks an ingest is still writing or has replaced.
    def similarity_search_with_score(  # type: ignore[override]
        self, query: str, k: int = 4, filter: models.Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return super().similarity_search_with_score(query, k, filter=visible(filter), **kwargs)

    def similarity_search_with_score_by_vector(  # type: ignore[override]
        self, embedding: list[float], k: int = 4, filter: models.Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return super().similarity_search_with_score_by_vector(embedding, k, filter=visible(filter), **kwargs)

    def max_marginal_relevance_search_with_score_by_vector(  # type: ignore[override]
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: models.Filter | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        return super().max_marginal_relevance_search_with_score_by_vector(
            embedding, k, fetch_k, lambda_mult, filter=visible(filter), **kwargs
        )

    @classmethod
    def _document_from_point(
        cls, scored_point: Any, collection_name: str, content_payload_key: str, metadata_payload_key: str
    ) -> Document:
        payload = scored_point.payload or {}
        metadata = dict(payload.get(metadata_payload_key) or {})
        for key in _INTERNAL_KEYS:
            metadata.pop(key, None)
        original = metadata.pop(cls.ORIGINAL_ID_KEY, None)
        return Document(
            id=str(original) if original is not None else str(scored_point.id),
            page_content=payload.get(content_payload_key, ""),
            metadata=metadata,
        )


def build_vector_store(client: QdrantClient, settings: Settings, embeddings: Embeddings) -> BookVectorStore:
    """The LangChain view of the collection (it must exist: `ensure_collection` first)."""
    return BookVectorStore(
        client=client,
        collection_name=settings.qdrant_collection,
        embedding=embeddings,
        vector_name=DENSE_VECTOR,
        sparse_vector_name=SPARSE_VECTOR,
        content_payload_key=CONTENT_KEY,
        metadata_payload_key=METADATA_KEY,
        validate_collection_config=False,
    )
