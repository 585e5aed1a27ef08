"""Write a book's chunks to Qdrant incrementally: stable ids, embed only what is new, then drop what is stale.

A chunk's point id derives from (source, position, content hash), so an unchanged chunk keeps its id and is
neither embedded nor written again. For each file the new chunks are upserted before the stale ones are deleted:
a run that dies midway leaves every chapter answering with a complete version (the old one, or old and new
together until the next run removes the old).
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from langchain_core.embeddings import Embeddings
from qdrant_client import QdrantClient, models

from chains.errors import DocumentError
from chains.settings import Settings
from chains.vectorstore import CONTENT_KEY, DENSE_VECTOR, METADATA_KEY, point_id
from ingest.loaders import SUPPORTED_SUFFIXES, load_document
from ingest.splitter import Chunk, SplitOptions, TokenCounter, split_document

logger = logging.getLogger(__name__)

DEFAULT_EXCLUDES = ("**/node_modules/**", "**/.*/**", "**/.*")


@dataclass(slots=True)
class FileOutcome:
    source: str
    added: int = 0
    unchanged: int = 0
    removed: int = 0
    error: str | None = None


@dataclass(slots=True)
class IngestReport:
    files: list[FileOutcome] = field(default_factory=list)
    pruned_sources: list[str] = field(default_factory=list)
    pruned_chunks: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def failed(self) -> list[FileOutcome]:
        return [f for f in self.files if f.error is not None]

    @property
    def added(self) -> int:
        return sum(f.added for f in self.files)

    @property
    def unchanged(self) -> int:
        return sum(f.unchanged for f in self.files)

    @property
    def removed(self) -> int:
        return sum(f.removed for f in self.files) + self.pruned_chunks

    @property
    def updated_files(self) -> int:
        return sum(1 for f in self.files if f.error is None and (f.added or f.removed))

    def summary(self) -> str:
        prefix = "dry run: would have " if self.dry_run else ""
        return (
            f"{prefix}{len(self.files)} files ({len(self.failed)} failed, {self.updated_files} changed); chunks: "
            f"{self.added} added, {self.unchanged} unchanged, {self.removed} removed"
            f"{f' ({len(self.pruned_sources)} files pruned)' if self.pruned_sources else ''}; {self.seconds:.1f}s"
        )


def discover_files(
    paths: Iterable[Path], include: Sequence[str] = (), exclude: Sequence[str] = DEFAULT_EXCLUDES
) -> Iterator[Path]:
    """The files named, and the supported files under the folders named, sorted, minus the excluded ones."""
    for path in paths:
        if path.is_dir():
            candidates = sorted(p for p in path.rglob("*") if p.is_file())
            for candidate in candidates:
                relative = candidate.relative_to(path).as_posix()
                if any(
                    fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch("/" + relative, pattern)
                    for pattern in exclude
                ):
                    continue
                if include:
                    if any(fnmatch.fnmatch(relative, pattern) for pattern in include):
                        yield candidate
                elif candidate.suffix.lower() in SUPPORTED_SUFFIXES:
                    yield candidate
        else:
            yield path  # named explicitly: loaded (or refused with a reason) whatever its suffix


def source_key(path: Path, base_dir: Path) -> str:
    """How a file is named in the store: its path relative to the base folder, with forward slashes."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(base_dir.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def source_url(source: str, base_url: str | None) -> str | None:
    if not base_url:
        return None
    return f"{base_url.rstrip('/')}/{source.rsplit('.', 1)[0]}"


def chunk_id(chunk: Chunk) -> str:
    meta = chunk.metadata
    return point_id(f"{meta['source']}\x00{meta['chunk_index']}\x00{meta['content_hash']}")


def source_filter(source: str) -> models.Filter:
    return models.Filter(
        must=[models.FieldCondition(key=f"{METADATA_KEY}.source", match=models.MatchValue(value=source))]
    )


class Indexer:
    """Ingests files into one collection with one embedding model; built by the CLI or the admin endpoint."""

    def __init__(
        self,
        client: QdrantClient,
        embeddings: Embeddings,
        settings: Settings,
        count_tokens: TokenCounter,
        batch_size: int = 64,
    ) -> None:
        self.client = client
        self.embeddings = embeddings
        self.settings = settings
        self.collection = settings.qdrant_collection
        self.count_tokens = count_tokens
        self.batch_size = batch_size
        self.options = SplitOptions(settings.chunk_size, settings.chunk_overlap)

    def stored_ids(self, source: str | None = None) -> set[str]:
        """Ids of the points of one source (or of all sources)."""
        ids: set[str] = set()
        offset = None
        while True:
            points, offset = self.client.scroll(
                self.collection,
                scroll_filter=source_filter(source) if source else None,
                limit=1024,
                offset=offset,
                with_payload=False,
                with_vectors=False,
            )
            ids.update(str(p.id) for p in points)
            if offset is None:
                return ids

    def stored_sources(self) -> set[str]:
        sources: set[str] = set()
        offset = None
        while True:
            points, offset = self.client.scroll(
                self.collection, limit=1024, offset=offset, with_payload=[f"{METADATA_KEY}.source"], with_vectors=False
            )
            for point in points:
                metadata = (point.payload or {}).get(METADATA_KEY) or {}
                if "source" in metadata:
                    sources.add(str(metadata["source"]))
            if offset is None:
                return sources

    def chunks_for(self, path: Path, source: str) -> list[Chunk]:
        document = load_document(path)
        base_url = str(self.settings.book_base_url) if self.settings.book_base_url else None
        chunks = split_document(document, source, self.count_tokens, self.options, source_url(source, base_url))
        if not chunks:
            raise DocumentError(str(path), "no text to index after splitting")
        return chunks

    def write(self, chunks: Sequence[Chunk]) -> None:
        for start in range(0, len(chunks), self.batch_size):
            batch = chunks[start : start + self.batch_size]
            vectors = self.embeddings.embed_documents([c.embed_text for c in batch])
            points = [
                models.PointStruct(
                    id=chunk_id(chunk),
                    vector={DENSE_VECTOR: vector},
                    payload={CONTENT_KEY: chunk.text, METADATA_KEY: chunk.metadata},
                )
                for chunk, vector in zip(batch, vectors, strict=True)
            ]
            self.client.upsert(self.collection, points=points, wait=True)

    def ingest_file(self, path: Path, source: str, dry_run: bool = False) -> FileOutcome:
        outcome = FileOutcome(source)
        chunks = self.chunks_for(path, source)
        wanted = {chunk_id(c): c for c in chunks}
        existing = self.stored_ids(source)
        new = [c for cid, c in wanted.items() if cid not in existing]
        stale = sorted(existing - wanted.keys())
        outcome.added, outcome.unchanged, outcome.removed = len(new), len(wanted) - len(new), len(stale)
        if dry_run:
            return outcome
        if new:
            self.write(new)
        if stale:
            self.client.delete(self.collection, points_selector=models.PointIdsList(points=list(stale)), wait=True)
        return outcome

    def delete_source(self, source: str) -> int:
        ids = self.stored_ids(source)
        if ids:
            self.client.delete(self.collection, points_selector=source_filter(source), wait=True)
        return len(ids)

    def ingest(
        self,
        files: Sequence[Path],
        base_dir: Path,
        prune: bool = False,
        dry_run: bool = False,
        on_file: Callable[[FileOutcome], None] | None = None,
    ) -> IngestReport:
        """Ingest `files`; with `prune`, delete stored sources under `base_dir` that are not among them."""
        started = time.perf_counter()
        report = IngestReport(dry_run=dry_run)
        seen: set[str] = set()
        for path in files:
            source = source_key(path, base_dir)
            seen.add(source)
            try:
                outcome = self.ingest_file(path, source, dry_run)
            except DocumentError as exc:
                outcome = FileOutcome(source, error=exc.reason)
                logger.warning("skipped %s: %s", path, exc.reason)
            report.files.append(outcome)
            if on_file is not None:
                on_file(outcome)
        if prune:
            failed = {f.source for f in report.failed}
            for source in sorted(self.stored_sources() - seen - failed):
                if Path(source).is_absolute():
                    continue  # stored from outside the base folder: not ours to judge
                report.pruned_sources.append(source)
                report.pruned_chunks += len(self.stored_ids(source)) if dry_run else self.delete_source(source)
        report.seconds = time.perf_counter() - started
        return report
