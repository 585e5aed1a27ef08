"""Write a book's chunks to Qdrant incrementally: stable ids, embed only what is new, then drop what is stale.

A chunk's point id derives from (source, position, content), so an unchanged chunk keeps its id and is neither
embedded nor written again. Every point also carries its file's hash (the file's bytes plus the split settings)
and the file's chunk count: a file whose stored points all carry its current hash, and as many as it had, is
skipped without even being parsed. An EPUB is one file of several sources, one a chapter (`plan_book`): each
chapter is hashed alone and the whole EPUB's hash rides along, so an unchanged EPUB is skipped unopened and a
changed one re-embeds only its changed chapters.

Throughput (docs/ingest.md): the embedding model gets large groups of chunks (it sorts them by length so that a
batch pads little), one group is embedded in a worker thread while the next files are parsed and split and the
previous group is written, and points are upserted in large batches. When the model is idle (at the start), half
a group goes rather than the model waiting for the parser; one child process parses all of a run's files.

Never a half-state, for any reader, even when the process is killed (docs/ingest.md, "What a reader sees"): a
group's new chunks are written as soon as they are embedded, staged (STAGED_KEY: hidden by the filter every
product read applies, chains.vectorstore.VISIBLE). Once all of a file's new chunks are stored, ONE set_payload
marks them and the chunks they replace with SWAPPED_KEY, which shows the first and hides the second at once (one
operation is the unit Qdrant applies whole; a batch of several is not atomic, qdrant/qdrant#9371). Then the
replaced chunks are deleted and the marks removed, neither of which changes what a reader sees. A run that stops
withdraws its staged chunks; one that was killed leaves hidden points that the next run deletes (`recover`)
before it reads the store.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from langchain_core.embeddings import Embeddings
from qdrant_client import QdrantClient, models

from chains.embeddings import packaged_model
from chains.errors import DependencyUnavailable, DocumentError, IngestStopped, RagError
from chains.sentence_rescore import SENTENCE_KEY, Row, sentence_payloads, stored_rows
from chains.settings import Settings
from chains.site_urls import page_path
from chains.sparse import encode_document
from chains.vectorstore import (
    CONTENT_KEY,
    DENSE_VECTOR,
    EMBEDDING_KEY,
    LEGACY_EMBEDDING,
    MARKED,
    METADATA_KEY,
    SPARSE_VECTOR,
    STAGED_AT_KEY,
    STAGED_KEY,
    SWAPPED_KEY,
    VISIBLE,
    embedding_identity,
    field_empty,
    field_set,
    point_id,
    visible,
)
from ingest.book_root import remember_root, remembered_root
from ingest.epub import LoadedBook, is_book, is_part_of, load_epub, part_source
from ingest.loaders import SUPPORTED_SUFFIXES, IngestLimits
from ingest.parse_worker import ParseWorker, load_isolated, run_isolated
from ingest.splitter import Chunk, SplitOptions, TokenCounter, approximate_tokens, split_document

logger = logging.getLogger(__name__)

DEFAULT_EXCLUDES = ("**/node_modules/**", "**/.*/**", "**/.*")
# Bump when loading or splitting changes what a file turns into, so that stored files are split again.
SPLIT_VERSION = "7"  # 3: page_path and anchor (links to the book's site); 4: a cut part keeps its full stop;
# 5: a small last section folded into the one before keeps its heading in the text; 6: a fence with attributes
# (```rust,ignore) stays code, mdBook's {{#include}} directives are dropped, and an HTML heading takes its <hgroup>
# lines ("I: Variation Under Domestication") and its section's id as its anchor; 7: an HTML figure's caption is
# text of its chapter
# What vectors a point carries; part of a chunk's identity and of every file's hash, so that after a change (the
# sparse vector for hybrid retrieval; then the sentence vectors for re-scoring, chains/sentence_rescore.py)
# ingesting again rewrites every chunk instead of keeping points without it.
VECTOR_LAYOUT = "dense+sparse-bm25-1+sentences-1"
# On a Qdrant server, staged chunks younger than this are taken for another running ingest's, not a dead run's
# (`Indexer.recover`): a run's staged chunks wait for their swap a few minutes at most (a file is parsed within
# INGEST_MAX_SECONDS_PER_FILE, 300 s by default).
STALE_STAGED_S = 3600
_MARKS = (STAGED_KEY, SWAPPED_KEY, STAGED_AT_KEY)
# Per-file fields on every chunk; they are not part of a chunk's identity. A chapter of an EPUB (one source of
# several in one file) also carries the hash of the whole EPUB, so that an unchanged EPUB is skipped unread.
FILE_FIELDS = ("file_hash", "chunk_count", "book_hash")
_SCROLL_PAGE = 1024
# Chunks given to the embedding model at once (it batches them by length), and points upserted in one request.
DEFAULT_BATCH_SIZE = 256
# Fewer chunks than this embedded: no rate is shown (one short batch and a thread start are not a throughput).
RATE_MIN_CHUNKS = 64
_T = TypeVar("_T")


@dataclass(slots=True)
class FileOutcome:
    """What ingest did (or, in a dry run, would do) to one file's chunks."""

    source: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    error: str | None = None
    parsed: bool = True  # False when the file hash matched and the file was not even read past its bytes

    @property
    def changed(self) -> bool:
        return self.error is None and bool(self.added or self.updated or self.removed)


@dataclass(frozen=True, slots=True)
class Recovered:
    """What `Indexer.recover` found: hidden chunks of dead runs it deleted, and young staged ones it left alone."""

    deleted: int = 0
    kept: int = 0


@dataclass(slots=True)
class IngestReport:
    files: list[FileOutcome] = field(default_factory=list)
    pruned_sources: list[str] = field(default_factory=list)
    pruned_chunks: int = 0
    embedded: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0  # loading the embedding model, within `seconds`; not counted in the rate
    embed_seconds: float = 0.0  # from the model ready to the last vectors back (parsing meanwhile included)
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)  # what the user should know and may act on

    @property
    def failed(self) -> list[FileOutcome]:
        return [f for f in self.files if f.error is not None]

    @property
    def added(self) -> int:
        return sum(f.added for f in self.files)

    @property
    def updated(self) -> int:
        return sum(f.updated for f in self.files)

    @property
    def unchanged(self) -> int:
        return sum(f.unchanged for f in self.files)

    @property
    def removed(self) -> int:
        return sum(f.removed for f in self.files) + self.pruned_chunks

    @property
    def updated_files(self) -> int:
        return sum(1 for f in self.files if f.changed)

    def summary(self) -> str:
        prefix = "dry run: would have " if self.dry_run else ""
        pruned = f" ({len(self.pruned_sources)} files pruned)" if self.pruned_sources else ""
        rate = ""
        if self.embedded >= RATE_MIN_CHUNKS and self.embed_seconds > 0:
            rate = f", {self.embedded / self.embed_seconds:.1f} chunks/s embedded"
        elif self.embedded:
            rate = f", {self.embedded} embedded in {self.embed_seconds:.2f}s"
        load = f" (model load {self.load_seconds:.1f}s)" if self.load_seconds >= 0.05 else ""
        return (
            f"{prefix}{len(self.files)} files ({len(self.failed)} failed, {self.updated_files} changed); chunks: "
            f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, {self.removed} removed"
            f"{pruned}; {self.seconds:.1f}s{load}{rate}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "files": [
                {
                    "source": f.source,
                    "added": f.added,
                    "updated": f.updated,
                    "unchanged": f.unchanged,
                    "removed": f.removed,
                    "error": f.error,
                }
                for f in self.files
            ],
            "failed": len(self.failed),
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "pruned_sources": self.pruned_sources,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
            "load_seconds": round(self.load_seconds, 3),
            "embed_seconds": round(self.embed_seconds, 3),
            "summary": self.summary(),
        }


@dataclass(slots=True)
class Progress:
    """Where a run is, for a progress bar: called after each file is read and each batch is embedded or written.

    `chunks_embedded` have vectors, `chunks_written` are in the store; the rate is chunks embedded a second since
    the model was ready (its loading, on the first chunk to embed, is not counted), None before any chunk was
    embedded or while too few were for a rate to mean anything (`RATE_MIN_CHUNKS`).
    """

    files_total: int
    files_done: int = 0
    chunks_embedded: int = 0
    chunks_written: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def rate(self) -> float | None:
        elapsed = time.perf_counter() - self.started
        if self.chunks_embedded < RATE_MIN_CHUNKS or elapsed <= 0:
            return None
        return self.chunks_embedded / elapsed


@dataclass(slots=True)
class StoredChunk:
    chunk_index: int | None
    file_hash: str | None
    chunk_count: int | None
    book_hash: str | None = None


@dataclass(slots=True)
class FilePlan:
    """One file's changes: chunks to embed and write, unchanged points to re-stamp, stale points to delete."""

    outcome: FileOutcome
    new: list[Chunk]
    restamp: list[str]
    stale: list[str]
    file_fields: dict[str, Any]
    vectors: list[list[float] | None] = field(default_factory=list)  # filled as batches are embedded
    sentences: dict[int, dict[str, Any]] = field(default_factory=dict)  # chunk index: its sentence vectors' payload
    waiting: int = 0  # new chunks not yet stored (staged)

    @property
    def has_writes(self) -> bool:
        return bool(self.new or self.restamp or self.stale)


def _matches(relative: str, pattern: str) -> bool:
    """Glob match where `**/` also matches no folder at all (so `**/*.mdx` takes `intro.mdx`)."""
    candidates = {pattern}
    while pattern.startswith("**/"):
        pattern = pattern[3:]
        candidates.add(pattern)
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch("/" + relative, p) for p in candidates)


@dataclass(slots=True)
class Discovery:
    """What a walk found: the files to ingest, and the paths refused because they lead outside their root."""

    files: list[Path] = field(default_factory=list)
    outside: list[Path] = field(default_factory=list)  # as met, never resolved into a source nor read


def resolves_under(path: Path, root: Path) -> bool:
    """Whether `path`, every symbolic link followed, lies in `root` (a link loop or an invalid path: no)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):
        return False


def discover(
    paths: Iterable[Path],
    include: Sequence[str] = (),
    exclude: Sequence[str] = DEFAULT_EXCLUDES,
    root: Path | None = None,
) -> Discovery:
    """The files named, and the supported files under the folders named, sorted, minus the excluded ones.

    Globs are matched against the path relative to the folder argument, `*` crossing folders as in fnmatch.
    Every file taken must lie under `root` once its symbolic links are followed; without a `root`, a folder's
    files must lie under that folder (a file named is taken as given: the indexer checks it against its base
    folder). The others go to `outside`, unread: a link in a checkout must not pull in `/etc/passwd`.
    """
    found = Discovery()
    for path in paths:
        if path.is_dir():
            limit = root or path
            candidates = sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink())
            for candidate in candidates:
                relative = candidate.relative_to(path).as_posix()
                if any(_matches(relative, pattern) for pattern in exclude):
                    continue
                if include:
                    if not any(_matches(relative, pattern) for pattern in include):
                        continue
                elif candidate.suffix.lower() not in SUPPORTED_SUFFIXES:
                    continue
                (found.files if resolves_under(candidate, limit) else found.outside).append(candidate)
        elif root is not None and not resolves_under(path, root):
            found.outside.append(path)
        else:
            found.files.append(path)  # named explicitly: loaded (or refused with a reason) whatever its suffix
    return found


def discover_files(
    paths: Iterable[Path], include: Sequence[str] = (), exclude: Sequence[str] = DEFAULT_EXCLUDES
) -> Iterator[Path]:
    """`discover(...).files`, logging each path refused for leading outside its folder."""
    found = discover(paths, include, exclude)
    for path in found.outside:
        logger.warning("skipped %s: it leads outside the folder being ingested", path)
    yield from found.files


def shown_name(path: Path, base_dir: Path) -> str:
    """A path as met, relative to `base_dir` when it is under it, without following any link (for reports)."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(os.path.abspath(base_dir)).as_posix()
    except ValueError:
        return path.as_posix()


def outside_outcomes(outside: Iterable[Path], base_dir: Path, root_name: str) -> list[FileOutcome]:
    """One failed outcome per path that `discover` refused (named as met; where it points is not told)."""
    reason = f"a symbolic link leading outside {root_name}: skipped, not read"
    return [FileOutcome(shown_name(path, base_dir), error=reason, parsed=False) for path in outside]


def prune_scope_of(paths: Iterable[Path], base_dir: Path) -> list[str]:
    """The stored sources that the PATHS of a run stand for: what `--prune` may delete from (see `in_scope`)."""
    return [source_key(path, base_dir) for path in paths]


def in_scope(source: str, scope: Sequence[str] | None) -> bool:
    """Whether a stored source is one `prune` may judge: under one of the `scope` sources (None: any)."""
    if scope is None:
        return True
    for prefix in scope:
        prefix = prefix.rstrip("/")
        if prefix in ("", ".") and not PurePosixPath(source).is_absolute():
            return True
        if source == prefix or source.startswith(prefix + "/"):
            return True
    return False


def source_key(path: Path, base_dir: Path) -> str:
    """How a file is named in the store: its path relative to the book's root folder (ingest/book_root.py), with
    forward slashes; the absolute path for a file outside it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(base_dir.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def moved_sources(stored: Iterable[str], seen: Iterable[str], root: Path) -> dict[str, str]:
    """Stored sources that look like one of `seen` keyed from a folder above the book's root (`book/ch1.md`, or
    an absolute path, for `ch1.md`), as a store ingested before keys were relative to the root has them."""
    by_name: dict[str, list[str]] = {}
    for key in seen:
        by_name.setdefault(PurePosixPath(key).name, []).append(key)
    seen_keys = {key for keys in by_name.values() for key in keys}
    moved: dict[str, str] = {}
    for old in stored:
        if old in seen_keys:
            continue
        for new in by_name.get(PurePosixPath(old).name, []):
            if old == (root / new).as_posix() or (not PurePosixPath(old).is_absolute() and old.endswith("/" + new)):
                moved[old] = new
                break
    return moved


def vector_layout(settings: Settings) -> str:
    """VECTOR_LAYOUT plus what else decides the stored vectors: the embedding model, and EMBEDDING_QUANTIZE=int8
    (on a graph this project exports, the only place it applies), so switching either re-embeds every chunk. The
    model that was the default before it was part of the layout, all-MiniLM-L6-v2 unquantised, keeps the layout,
    and the ids, of the stores ingested with it."""
    identity = embedding_identity(settings)
    layout = VECTOR_LAYOUT if identity == LEGACY_EMBEDDING else f"{VECTOR_LAYOUT}+{identity}"
    packaged = packaged_model(settings.embedding_model)
    quantized = (
        settings.embedding_provider == "local"
        and settings.embedding_runtime == "onnx"
        and settings.embedding_quantize != "off"
        and (packaged is None or packaged.shipped is None)
    )
    return f"{layout}+{settings.embedding_quantize}" if quantized else layout


def chunk_id(chunk: Chunk, layout: str = VECTOR_LAYOUT) -> str:
    """The point id: from the source, the position, everything stored about the chunk but its file fields, and the
    vector layout (`vector_layout`)."""
    meta = {k: v for k, v in chunk.metadata.items() if k not in FILE_FIELDS}
    identity = json.dumps(
        {"embed": chunk.embed_text, "text": chunk.text, "meta": meta, "vectors": layout}, sort_keys=True
    )
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]
    return point_id(f"{meta['source']}\x00{meta['chunk_index']}\x00{digest}")


def source_filter(source: str) -> models.Filter:
    return models.Filter(
        must=[models.FieldCondition(key=f"{METADATA_KEY}.source", match=models.MatchValue(value=source))]
    )


def length_function(settings: Settings, embeddings: Embeddings) -> TokenCounter:
    """How chunk sizes are counted: characters, or the embedding model's tokens (estimated for remote models)."""
    if settings.chunk_size_unit == "chars":
        return len
    counter: TokenCounter = getattr(embeddings, "count_tokens", approximate_tokens)
    return counter


class Indexer:
    """Ingests files into one collection with one embedding model; built by the CLI or the admin endpoint."""

    def __init__(
        self,
        client: QdrantClient,
        embeddings: Embeddings,
        settings: Settings,
        count_tokens: TokenCounter | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        stop: threading.Event | None = None,
    ) -> None:
        self.client = client
        self.limits = IngestLimits.from_settings(settings)
        self.stop = stop  # set (by a shutting-down server): the run stops at the next file or batch
        self.embeddings = embeddings
        self.settings = settings
        self.collection = settings.qdrant_collection
        if settings.chunk_size_unit == "chars" or count_tokens is None:
            count_tokens = length_function(settings, embeddings)
        self.count_tokens = count_tokens
        self.batch_size = batch_size
        self._parser: ParseWorker | None = None  # one child loads a run's files (`ingest`); else one per file
        # Sentence rows already embedded in this run, by text (`ingest` empties it): ~400 bytes a sentence.
        self._sentence_rows: dict[str, Row] = {}
        self.options = SplitOptions(settings.chunk_size, settings.chunk_overlap)
        self.style = settings.book_site_style
        self.layout = vector_layout(settings)
        self.embedding = embedding_identity(settings)
        # Others may write into the collection at the same time (a server), unlike the embedded store's one process.
        self.shared = settings.uses_qdrant_server
        # Anything that changes what a file becomes is part of its hash: the site style (page paths and heading
        # ids), but not BOOK_BASE_URL, which is applied per answer.
        self.signature = "\x00".join(
            [
                SPLIT_VERSION,
                self.layout,
                settings.embedding_provider,
                settings.embedding_model,
                settings.chunk_size_unit,
                str(settings.chunk_size),
                str(settings.chunk_overlap),
                self.style,
            ]
        )

    # -- reading the store -------------------------------------------------------------------------------

    def chunk_id(self, chunk: Chunk) -> str:
        return chunk_id(chunk, self.layout)

    def _store(self, doing: str, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except Exception as exc:
            raise DependencyUnavailable(
                "qdrant",
                f"Qdrant failed while {doing} ({type(exc).__name__}: {exc}). Every file keeps its previous "
                "complete version; run the same ingest again to finish.",
            ) from exc

    def _scroll(self, scroll_filter: models.Filter | None, with_payload: Any) -> Iterator[models.Record]:
        offset: Any = None
        while True:
            points, offset = self._store(
                "reading stored chunks",
                functools.partial(
                    self.client.scroll,
                    self.collection,
                    scroll_filter=scroll_filter,
                    limit=_SCROLL_PAGE,
                    offset=offset,
                    with_payload=with_payload,
                    with_vectors=False,
                ),
            )
            yield from points
            if offset is None:
                return

    def stored_chunks(self) -> dict[str, dict[str, StoredChunk]]:
        """Every stored point readers see, by source and id, with what incremental ingest needs to know (no
        vectors). Hidden points (a running or dead ingest's, chains.vectorstore.VISIBLE) are not stored chunks."""
        if not self._store("opening the collection", lambda: self.client.collection_exists(self.collection)):
            return {}
        fields = ["source", "chunk_index", *FILE_FIELDS]
        by_source: dict[str, dict[str, StoredChunk]] = {}
        for point in self._scroll(VISIBLE, [f"{METADATA_KEY}.{f}" for f in fields]):
            metadata = (point.payload or {}).get(METADATA_KEY) or {}
            if "source" not in metadata:
                continue
            by_source.setdefault(str(metadata["source"]), {})[str(point.id)] = StoredChunk(
                metadata.get("chunk_index"),
                metadata.get("file_hash"),
                metadata.get("chunk_count"),
                metadata.get("book_hash"),
            )
        return by_source

    def stored_ids(self, source: str | None = None) -> set[str]:
        """Ids of the visible points of one source (or of all sources)."""
        if not self.client.collection_exists(self.collection):
            return set()
        return {str(p.id) for p in self._scroll(visible(source_filter(source) if source else None), False)}

    def stored_sources(self) -> set[str]:
        return set(self.stored_chunks())

    # -- planning ----------------------------------------------------------------------------------------

    def file_hash(self, path: Path) -> str | None:
        """The hash of the file's bytes and of the split settings; None when it cannot be read (load says why)."""
        try:
            data = path.read_bytes()
        except OSError:
            return None
        return self._hash(data)

    def _hash(self, data: bytes) -> str:
        return hashlib.sha256(self.signature.encode() + b"\x00" + data).hexdigest()[:32]

    @contextlib.contextmanager
    def parsing(self) -> Iterator[None]:
        """Within the block, `chunks_for` loads every file in one child process (`ParseWorker`), not one each."""
        with ParseWorker(self.limits, self.stop) as parser:
            self._parser = parser
            try:
                yield
            finally:
                self._parser = None

    def chunks_for(self, path: Path, source: str) -> list[Chunk]:
        # In a child process within the per-file limits: the run's worker (`ingest`), else one of its own.
        parser = self._parser
        document = parser.load(path) if parser is not None else load_isolated(path, self.limits, self.stop)
        # A file outside the book's root has no page on the book's site.
        page = None if PurePosixPath(source).is_absolute() else page_path(source, document.metadata, self.style)
        chunks = split_document(document, source, self.count_tokens, self.options, page, self.style)
        if not chunks:
            raise DocumentError(str(path), "no text to index after splitting")
        if len(chunks) > self.limits.max_chunks:
            raise self.limits.over(
                path, f"{len(chunks):,} chunks", self.limits.max_chunks, "INGEST_MAX_CHUNKS_PER_FILE"
            )
        return chunks

    def check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise IngestStopped()

    def plan_file(self, path: Path, source: str, stored: dict[str, StoredChunk]) -> FilePlan:
        """What must change for this file; raises `DocumentError` when it cannot be loaded."""
        digest = self.file_hash(path)
        if (
            digest is not None
            and stored
            and all(s.file_hash == digest and s.chunk_count == len(stored) for s in stored.values())
        ):
            return FilePlan(FileOutcome(source, unchanged=len(stored), parsed=False), [], [], [], {})
        chunks = self.chunks_for(path, source)
        return self.plan_chunks(source, chunks, {"file_hash": digest, "chunk_count": len(chunks)}, stored)

    def plan_chunks(
        self, source: str, chunks: list[Chunk], file_fields: dict[str, Any], stored: dict[str, StoredChunk]
    ) -> FilePlan:
        """What must change for one source to hold `chunks`, each stamped with `file_fields`."""
        wanted: dict[str, Chunk] = {}
        for chunk in chunks:
            wanted[self.chunk_id(chunk)] = Chunk(chunk.text, chunk.embed_text, {**chunk.metadata, **file_fields})
        new = [chunk for cid, chunk in wanted.items() if cid not in stored]
        stamp = tuple(file_fields.get(name) for name in FILE_FIELDS)
        restamp = [
            cid
            for cid in wanted
            if cid in stored and (stored[cid].file_hash, stored[cid].chunk_count, stored[cid].book_hash) != stamp
        ]
        stale = sorted(set(stored) - wanted.keys())
        stale_positions = {stored[cid].chunk_index for cid in stale}
        updated = sum(1 for chunk in new if chunk.metadata["chunk_index"] in stale_positions)
        outcome = FileOutcome(
            source,
            added=len(new) - updated,
            updated=updated,
            unchanged=len(wanted) - len(new),
            removed=len(stale) - updated,
        )
        return FilePlan(outcome, new, restamp, stale, file_fields, [None] * len(new), waiting=len(new))

    def plan_path(self, path: Path, source: str, stored: dict[str, dict[str, StoredChunk]]) -> list[FilePlan]:
        """The plans for one file: itself, or each chapter of an EPUB (and its chapters no longer there)."""
        if is_book(path):
            return self.plan_book(path, source, stored)
        return [self.plan_file(path, source, stored.get(source, {}))]

    def plan_book(self, path: Path, source: str, stored: dict[str, dict[str, StoredChunk]]) -> list[FilePlan]:
        """An EPUB's chapters, each a source of its own (`book.epub/text/ch1.xhtml`) with its own hash: skipped
        unread when the whole file is unchanged, else a chapter whose hash matches is only re-stamped with the
        new book hash, and a chapter gone from the book is deleted (after the others, as a stale file is)."""
        digest = self.file_hash(path)
        parts = {name: chunks for name, chunks in stored.items() if is_part_of(name, source)}
        if (
            digest is not None
            and parts
            and all(c.book_hash == digest and c.chunk_count == len(ids) for ids in parts.values() for c in ids.values())
        ):
            return [
                FilePlan(FileOutcome(name, unchanged=len(ids), parsed=False), [], [], [], {})
                for name, ids in sorted(parts.items())
            ]
        # The chapters stored whole: the child does not even partition them again when their digest is the same.
        whole = {
            next(iter(ids.values())).file_hash: ids
            for ids in parts.values()
            if len({(c.file_hash, c.chunk_count) for c in ids.values()}) == 1
            and next(iter(ids.values())).chunk_count == len(ids)
        }
        load = functools.partial(load_epub, salt=self.signature, known=frozenset(h for h in whole if h))
        parser = self._parser  # the run's parse child, else one of its own
        book: LoadedBook = (
            parser.run(load, path) if parser is not None else run_isolated(load, path, self.limits, self.stop)
        )
        plans: list[FilePlan] = []
        total = 0
        for chapter in book.chapters:
            name = part_source(source, chapter.name)
            fields = {"book_hash": digest, "file_hash": chapter.digest}
            kept = parts.get(name, {})
            if chapter.document is None:
                kept = whole[chapter.digest]
                total += len(kept)  # unchanged chapter: no parse, no embedding; only its book hash is new
                restamp = [cid for cid, c in kept.items() if c.book_hash != digest]
                plans.append(FilePlan(FileOutcome(name, unchanged=len(kept), parsed=False), [], restamp, [], fields))
                continue
            # An EPUB has no page on the book's site: its chapters carry no page path.
            chunks = split_document(chapter.document, name, self.count_tokens, self.options, None, self.style)
            for chunk in chunks:
                chunk.metadata.update({"book": book.title or path.stem, "spine_index": chapter.position})
            total += len(chunks)
            plans.append(self.plan_chunks(name, chunks, {**fields, "chunk_count": len(chunks)}, kept))
        if total > self.limits.max_chunks:
            raise self.limits.over(path, f"{total:,} chunks", self.limits.max_chunks, "INGEST_MAX_CHUNKS_PER_FILE")
        present = {plan.outcome.source for plan in plans}
        for name, ids in sorted(parts.items()):
            if name not in present:
                plans.append(FilePlan(FileOutcome(name, removed=len(ids)), [], [], sorted(ids), {}))
        return plans

    # -- writing -----------------------------------------------------------------------------------------

    def load_model(self) -> float:
        """Load an embedding model that loads on first use (the CLI's), now; returns the seconds it took."""
        started = time.perf_counter()
        load = getattr(self.embeddings, "load", None)
        if callable(load):
            try:
                load()
            except RagError:
                raise
            except Exception as exc:
                raise DependencyUnavailable("embeddings", f"the embedding model failed to load ({exc})") from exc
        return time.perf_counter() - started

    def embed(self, chunks: Sequence[Chunk]) -> list[list[float]]:
        """Dense vectors for `chunks`, in one call to the model."""
        return self.embed_texts([c.embed_text for c in chunks])

    def embed_texts(self, texts: list[str]) -> list[list[float]]:
        try:
            return self.embeddings.embed_documents(texts)
        except RagError:
            raise
        except Exception as exc:
            raise DependencyUnavailable(
                "embeddings",
                f"the embedding model failed ({type(exc).__name__}: {exc}). Every file keeps its previous "
                "complete version; run the same ingest again to finish.",
            ) from exc

    def sparse_vector(self, chunk: Chunk) -> dict[str, models.SparseVector]:
        """The chunk's BM25-style sparse vector (from the same text as its dense one), when it has any terms."""
        encoding = encode_document(chunk.embed_text)
        if not encoding:
            return {}
        return {SPARSE_VECTOR: models.SparseVector(indices=encoding.indices, values=encoding.values)}

    def embed_with_sentences(self, chunks: Sequence[Chunk]) -> list[tuple[list[float], dict[str, Any]]]:
        """Each chunk's dense vector and, when re-scoring is on, its sentence vectors as payload
        (chains.sentence_rescore; {} when off): the chunks and their sentences in one call to the model."""
        if not self.settings.retrieval_sentence_rescore:
            return [(vector, {}) for vector in self.embed(chunks)]
        dense: list[list[float]] = []

        def embed(sentences: list[str]) -> list[list[float]]:
            # Each distinct text once: a chunk of one sentence under no heading is its own sentence.
            texts = [c.embed_text for c in chunks] + sentences
            distinct = list(dict.fromkeys(texts))
            by_text = dict(zip(distinct, self.embed_texts(distinct), strict=True))
            vectors = [by_text[t] for t in texts]
            dense.extend(vectors[: len(chunks)])
            return vectors[len(chunks) :]

        # Sentences met earlier in the run (the overlap with the previous group) are not embedded again.
        values = sentence_payloads([c.text for c in chunks], embed, self._sentence_rows)
        if not dense:  # no chunk had a sentence: `embed` was not called
            dense = self.embed(chunks)
        return [
            (vector, {SENTENCE_KEY: value} if value is not None else {})
            for vector, value in zip(dense, values, strict=True)
        ]

    def reuse_sentences(self, ids: Sequence[str]) -> None:
        """Remember the sentence rows of stored chunks about to be replaced (a changed file's stale chunks), so that
        the new chunks' sentences they held are not embedded again. Best effort: a failed read only costs the
        embedding (the writes that follow report a store that is down)."""
        if not self.settings.retrieval_sentence_rescore:
            return
        for start in range(0, len(ids), self.batch_size):
            try:
                records = self.client.retrieve(
                    self.collection,
                    list(ids[start : start + self.batch_size]),
                    with_payload=[CONTENT_KEY, SENTENCE_KEY],
                    with_vectors=False,
                )
            except Exception as exc:
                logger.debug("stored sentence vectors not read (%s: %s); embedding them", type(exc).__name__, exc)
                return
            for record in records:
                payload = record.payload or {}
                for text, row in stored_rows(str(payload.get(CONTENT_KEY, "")), payload.get(SENTENCE_KEY)).items():
                    self._sentence_rows.setdefault(text, row)

    def write(
        self,
        chunks: Sequence[Chunk],
        dense: Sequence[list[float]],
        sentences: Sequence[dict[str, Any]] | None = None,
        staged: str | None = None,
    ) -> None:
        """Upsert `chunks` with their dense and sparse vectors (and sentence vectors, if given), in batches: the
        one place where points are built. With `staged` (a run's token) they carry STAGED_KEY: hidden from every
        reader until `swap` shows them."""
        sentences = sentences if sentences is not None else [{} for _ in chunks]
        mark: dict[str, Any] = {STAGED_KEY: staged, STAGED_AT_KEY: int(time.time())} if staged else {}
        points = [
            models.PointStruct(
                id=self.chunk_id(chunk),
                vector={DENSE_VECTOR: vector, **self.sparse_vector(chunk)},
                payload={
                    CONTENT_KEY: chunk.text,
                    METADATA_KEY: chunk.metadata,
                    EMBEDDING_KEY: self.embedding,
                    **sentence,
                    **mark,
                },
            )
            for chunk, vector, sentence in zip(chunks, dense, sentences, strict=True)
        ]
        for start in range(0, len(points), self.batch_size):
            batch = points[start : start + self.batch_size]
            upsert = functools.partial(self.client.upsert, self.collection, points=batch, wait=True)
            try:
                self._store("writing chunks", upsert)
            except DependencyUnavailable:
                if not staged:  # staged points are hidden anyway; the run withdraws them all (`_withdraw`)
                    self._delete_best_effort([point.id for point in points[: start + len(batch)]])
                raise

    def _delete_best_effort(self, ids: list[Any]) -> None:
        try:
            self.client.delete(self.collection, points_selector=models.PointIdsList(points=ids), wait=True)
        except Exception as exc:  # the store is down
            logger.warning("could not delete %d new chunks after a failed write (%s)", len(ids), exc)

    def _withdraw(self, token: str) -> None:
        """Delete this run's staged chunks not yet swapped in (a run stopping, the model or the store failing):
        hidden already, so this only tidies; best effort (the store may be gone), the next run's `recover` does it
        otherwise."""
        mine = models.Filter(
            must=[
                models.FieldCondition(key=STAGED_KEY, match=models.MatchValue(value=token)),
                models.IsEmptyCondition(is_empty=models.PayloadField(key=SWAPPED_KEY)),
            ]
        )
        try:
            self.client.delete(self.collection, points_selector=models.FilterSelector(filter=mine), wait=True)
        except Exception as exc:
            logger.warning("could not withdraw this run's staged chunks (%s); the next ingest removes them", exc)

    def swap(self, plans: Sequence[FilePlan], token: str) -> None:
        """Once all new chunks of `plans` are stored (staged): re-stamp their unchanged chunks, then show the new
        ones and hide the stale ones in ONE operation (SWAPPED_KEY on both: chains.vectorstore.VISIBLE), so that
        readers see each of these files switch from its old version to its new one at once; then delete what it
        replaced and unmark the new chunks (neither changes what a reader sees)."""
        for plan in plans:
            if plan.restamp:
                restamp = models.PointIdsList(points=list(plan.restamp))
                fields = plan.file_fields
                self._store(
                    "updating chunk metadata",
                    functools.partial(
                        self.client.set_payload, self.collection, fields, restamp, key=METADATA_KEY, wait=True
                    ),
                )
        new = [self.chunk_id(chunk) for plan in plans for chunk in plan.new]
        stale = [cid for plan in plans for cid in plan.stale]
        if not new and not stale:
            return
        mine = models.Filter(
            must=[
                models.HasIdCondition(has_id=list(new)),
                models.FieldCondition(key=STAGED_KEY, match=models.MatchValue(value=token)),
            ]
        )
        if new:  # all there (an ingest elsewhere into this collection could have removed them): else swap nothing
            present = self._store(
                "reading stored chunks", lambda: self.client.count(self.collection, count_filter=mine, exact=True)
            ).count
            if present != len(new):
                raise DependencyUnavailable(
                    "qdrant",
                    f"{len(new) - present} of this run's {len(new)} new chunks are gone from the store before they "
                    "were shown (another ingest into the same collection?). Every file keeps its previous complete "
                    "version; run one ingest at a time, and this one again.",
                )
        # By a filter, not by ids: the engine applies a set_payload by ids up to an id it lacks, then fails.
        both = models.FilterSelector(
            filter=models.Filter(should=[mine, models.HasIdCondition(has_id=list(stale))] if stale else [mine])
        )
        self._store(
            "swapping in the new chunks",
            lambda: self.client.set_payload(self.collection, payload={SWAPPED_KEY: token}, points=both, wait=True),
        )
        if stale:
            replaced = models.PointIdsList(points=stale)
            self._store(
                "deleting stale chunks",
                lambda: self.client.delete(self.collection, points_selector=replaced, wait=True),
            )
        if new:
            shown = models.PointIdsList(points=new)
            self._store(
                "unmarking the new chunks",
                lambda: self.client.delete_payload(self.collection, keys=list(_MARKS), points=shown, wait=True),
            )

    def recover(self) -> Recovered:
        """Finish what a run that died left (SIGKILL, power loss), before anything else reads or writes: delete
        the hidden points (staged and never swapped in, or swapped out and not yet deleted) and unmark the ones
        swapped in. Neither step changes what a reader sees.

        On a Qdrant server another ingest may be writing into the collection right now, and its staged chunks look
        like a dead run's: there, staged chunks younger than STALE_STAGED_S are left alone (counted in the
        result), so that run's swap still finds them. The embedded store is one process's alone: everything
        staged there is a dead run's."""
        if not self._store("opening the collection", self._exists):
            return Recovered()
        count = functools.partial(self.client.count, self.collection, exact=True)
        if not self._store("reading stored chunks", lambda: count(count_filter=MARKED).count):
            return Recovered()
        staged_only = [field_set(STAGED_KEY), field_empty(SWAPPED_KEY)]
        young = models.Filter(
            must=[*staged_only, models.FieldCondition(key=STAGED_AT_KEY, range=models.Range(gte=self._stale_before()))]
        )
        kept = self._store("reading stored chunks", lambda: count(count_filter=young).count) if self.shared else 0
        hidden = models.Filter(must_not=[VISIBLE, young] if kept else [VISIBLE])
        deleted = self._store("reading stored chunks", lambda: count(count_filter=hidden).count)
        if deleted:
            self._store(
                "deleting an interrupted ingest's chunks",
                lambda: self.client.delete(
                    self.collection, points_selector=models.FilterSelector(filter=hidden), wait=True
                ),
            )
        shown = models.Filter(must=[field_set(STAGED_KEY), field_set(SWAPPED_KEY)])  # swapped in: visible already
        self._store(
            "unmarking an interrupted ingest's chunks",
            lambda: self.client.delete_payload(
                self.collection, keys=list(_MARKS), points=models.FilterSelector(filter=shown), wait=True
            ),
        )
        return Recovered(deleted, kept)

    def _stale_before(self) -> int:
        return int(time.time()) - STALE_STAGED_S

    def delete_source(self, source: str) -> int:
        """Delete every chunk of `source`; returns how many there were."""
        ids = self.stored_ids(source)
        if ids:
            self._store(
                f"deleting {source}",
                lambda: self.client.delete(self.collection, points_selector=source_filter(source), wait=True),
            )
        return len(ids)

    def ingest(
        self,
        files: Sequence[Path],
        base_dir: Path,
        prune: bool = False,
        dry_run: bool = False,
        on_progress: Callable[[Progress], None] | None = None,
        prune_scope: Sequence[str] | None = None,
    ) -> IngestReport:
        """Ingest `files`, keyed relative to `base_dir` (the book's root, then remembered by the collection); with
        `prune`, delete stored sources that are not among them: those under one of the `prune_scope` sources (the
        folders ingested, see `prune_scope_of`), or with no scope every stored source (also the absolute ones older
        versions stored for files from outside the base folder).

        A file that lies outside `base_dir` (its source would be an absolute path) is refused unread. Raises
        `DependencyUnavailable` when the embedding model or the store fails; what was stored stays whole.
        """
        started = time.perf_counter()
        report = IngestReport(dry_run=dry_run)
        progress = Progress(len(files))
        if not dry_run:
            self._note_recovered(report, self.recover())
        stored = self.stored_chunks()
        root = base_dir.resolve()
        root_before = self._store("reading the book root", lambda: remembered_root(self.client, self.collection))
        token = uuid.uuid4().hex  # this run's mark on the chunks it stages
        to_embed: list[tuple[FilePlan, int]] = []  # (file, index of one of its new chunks), across files
        writing: list[FilePlan] = []  # files with new chunks not yet stored
        ready: list[FilePlan] = []  # files whose new chunks are all stored (staged), not yet swapped in
        # One group of chunks is embedded in this worker (ONNX Runtime and PyTorch release the GIL) while this
        # thread parses the next files and writes the previous group; only this thread touches plans and the store.
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-embed")
        in_flight: tuple[list[tuple[FilePlan, int]], Future[list[tuple[list[float], dict[str, Any]]]]] | None = None

        def swap() -> None:
            """Swap in the files whose new chunks are all stored: each appears whole, at once."""
            if ready:
                self.swap(ready, token)
                ready.clear()

        def collect() -> list[tuple[FilePlan, int]]:
            """Wait for the group in flight; returns it with its vectors filled in (nothing written yet)."""
            nonlocal in_flight
            if in_flight is None:
                return []
            batch, future = in_flight
            in_flight = None
            try:
                vectors = future.result()
            except RagError:
                swap()  # the files stored before this group are whole: show them before giving up
                raise
            for (plan, i), (vector, sentences) in zip(batch, vectors, strict=True):
                plan.vectors[i] = vector
                if sentences:
                    plan.sentences[i] = sentences
            report.embedded += len(batch)
            report.embed_seconds = time.perf_counter() - progress.started
            progress.chunks_embedded += len(batch)
            return batch

        def settle(batch: list[tuple[FilePlan, int]]) -> None:
            """Store this group's chunks (staged: hidden), then swap in the files it completed."""
            if not batch:
                return
            if on_progress is not None:  # embedded, not yet written
                on_progress(progress)
            chunks = [plan.new[i] for plan, i in batch]
            vectors = [plan.vectors[i] or [] for plan, i in batch]
            self.write(chunks, vectors, [plan.sentences.get(i, {}) for plan, i in batch], staged=token)
            for plan, i in batch:  # stored: the vectors need not stay in memory
                plan.vectors[i] = None
                plan.sentences.pop(i, None)
                plan.waiting -= 1
            progress.chunks_written += len(batch)
            for plan in [p for p in writing if p.waiting == 0]:
                writing.remove(plan)
                ready.append(plan)
            swap()
            if on_progress is not None:
                on_progress(progress)

        def idle() -> bool:
            """Whether the embedding worker has nothing to do: then half a group goes, not to wait for the rest."""
            return in_flight is None or in_flight[1].done()

        def submit(batch: list[tuple[FilePlan, int]]) -> None:
            nonlocal in_flight
            self.check_stop()
            if not report.embedded and in_flight is None:  # the first group: load the model, outside the rate
                report.load_seconds += self.load_model()
                progress.started = time.perf_counter()
            done = collect()
            in_flight = (batch, worker.submit(self.embed_with_sentences, [plan.new[i] for plan, i in batch]))
            settle(done)  # written while the next group embeds

        seen: set[str] = set()
        parsing = contextlib.ExitStack()
        parsing.enter_context(self.parsing())
        try:
            for path in files:
                self.check_stop()
                source = source_key(path, base_dir)
                if PurePosixPath(source).is_absolute():
                    reason = (
                        f"outside the base folder {base_dir.resolve()}, which sources are stored relative to: give "
                        "--root a folder that holds it; not read"
                    )
                    report.files.append(FileOutcome(shown_name(path, base_dir), error=reason, parsed=False))
                    progress.files_done += 1
                    continue
                if source in seen:  # a link inside the root to a file also met as itself: one source, ingested once
                    progress.files_done += 1
                    continue
                seen.add(source)
                try:
                    plans = self.plan_path(path, source, stored)
                except DocumentError as exc:
                    report.files.append(FileOutcome(source, error=exc.reason))
                    logger.debug("skipped %s: %s", path, exc.reason)
                    plans = []
                    seen.update(name for name in stored if is_part_of(name, source))  # a failed EPUB keeps its own
                for plan in plans:
                    seen.add(plan.outcome.source)
                    report.files.append(plan.outcome)
                    if not dry_run and plan.has_writes:
                        if plan.new and plan.stale:  # before its chunks go to the embedding thread
                            self.reuse_sentences(plan.stale)
                        (writing if plan.new else ready).append(plan)
                        to_embed.extend((plan, i) for i in range(len(plan.new)))
                progress.files_done += 1
                while len(to_embed) >= self.batch_size or (len(to_embed) >= max(1, self.batch_size // 2) and idle()):
                    submit(to_embed[: self.batch_size])
                    del to_embed[: self.batch_size]
                if on_progress is not None:
                    on_progress(progress)
            if to_embed:
                submit(to_embed)
            settle(collect())
            self.check_stop()
            swap()
        except BaseException:
            if not dry_run:
                self._withdraw(token)
            raise
        finally:
            parsing.close()
            worker.shutdown(wait=True, cancel_futures=True)
            self._sentence_rows.clear()
        if on_progress is not None:
            on_progress(progress)
        if prune:
            failed = {f.source for f in report.failed}
            for source in sorted(set(stored) - seen - failed):
                if not in_scope(source, prune_scope):
                    continue  # another folder's chapter: not part of what was ingested
                report.pruned_sources.append(source)
                report.pruned_chunks += len(stored[source]) if dry_run else self.delete_source(source)
        elif stored and root_before != root:
            # Keys from before the root was remembered (relative to the folder the CLI ran from), or another root.
            moved = moved_sources(stored, seen, root)
            if moved:
                old, new = next(iter(sorted(moved.items())))
                report.notes.append(
                    f"{len(moved)} stored source(s) are keyed from another folder than the book's root {root} "
                    f"(e.g. {old!r}, now {new!r}), so their chunks are stored twice: ingest the whole book again "
                    "with --prune (`prune: true` in POST /admin/ingest) to remove the old keys"
                )
        if not dry_run and files and root_before != root and self._store("opening the collection", self._exists):
            remember_root(self.client, self.collection, root)
        report.seconds = time.perf_counter() - started
        return report

    @staticmethod
    def _note_recovered(report: IngestReport, recovered: Recovered) -> None:
        if recovered.deleted:
            report.notes.append(
                f"an earlier ingest was interrupted: its {recovered.deleted} hidden chunk(s) (staged, or replaced and "
                "not yet deleted) were removed; every file had its previous or its new version whole meanwhile"
            )
        if recovered.kept:
            report.notes.append(
                f"{recovered.kept} hidden chunk(s) staged in the last {STALE_STAGED_S // 60} minutes were left in "
                "place: another ingest may be writing into this collection (one at a time is safest); if none is, "
                "a later ingest removes them"
            )

    def _exists(self) -> bool:
        return self.client.collection_exists(self.collection)

    def delete_sources(self, sources: Sequence[str], dry_run: bool = False) -> IngestReport:
        """Delete the named sources (as stored: relative to the base folder); unknown ones are reported failed."""
        started = time.perf_counter()
        report = IngestReport(dry_run=dry_run)
        if not dry_run:
            self._note_recovered(report, self.recover())
        stored = self.stored_chunks()
        for asked in sources:
            # An EPUB's name stands for all of its chapters.
            names = [asked] if asked in stored else sorted(s for s in stored if is_book(asked) and is_part_of(s, asked))
            if not names:
                report.files.append(FileOutcome(asked, error="no such source in the collection"))
            for source in names:
                count = len(stored[source]) if dry_run else self.delete_source(source)
                report.files.append(FileOutcome(source, removed=count))
        report.seconds = time.perf_counter() - started
        return report
