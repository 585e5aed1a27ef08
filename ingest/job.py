"""What one `rag-ingest` run asks for, and running it on an `Indexer`: one code path for a run in the CLI's own
process and for a run handed to the API server that holds the embedded store (ingest/handoff.py).

The job carries absolute paths, so that the server, whatever its working folder, reads the same files, and
`run_job` applies the rules of a local run to them: the same discovery (a walked file must lie under its folder
argument once its links are followed), the same book root (`--root`, else the remembered one, else the folder
argument) and the same refusal of a file outside that root.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field
from qdrant_client import QdrantClient

from chains.settings import Settings
from chains.vectorstore import other_embedding
from ingest.book_root import choose_root, remembered_root
from ingest.indexer import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EXCLUDES,
    Discovery,
    Indexer,
    IngestReport,
    Progress,
    discover,
    outside_outcomes,
    prune_scope_of,
)

MAX_PATHS = 10_000  # a shell glob of a large book's chapters fits; the request stays well under a megabyte


class JobUsageError(ValueError):
    """The job cannot run as asked (the CLI's usage error, exit code 2): the message says why."""


def _absolute(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a path may not contain a NUL byte")
    if not os.path.isabs(value):
        raise ValueError(f"{value!r} is not an absolute path")
    return value


AbsolutePath = Annotated[str, Field(max_length=4096), AfterValidator(_absolute)]
Glob = Annotated[str, Field(max_length=1024)]


class IngestJob(BaseModel):
    """The arguments of one `rag-ingest` run, with its paths made absolute where the command ran."""

    paths: list[AbsolutePath] = Field(default_factory=list, max_length=MAX_PATHS)
    root: AbsolutePath | None = None
    include: list[Glob] = Field(default_factory=list, max_length=100)
    exclude: list[Glob] = Field(default_factory=list, max_length=100)
    prune: bool | Literal["all"] = False
    delete: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list, max_length=MAX_PATHS)
    dry_run: bool = False
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, le=4096)
    collection: str = Field(max_length=255)

    def discover(self) -> Discovery:
        return discover([Path(p) for p in self.paths], self.include, (*DEFAULT_EXCLUDES, *self.exclude))

    def check(self, found: Discovery) -> None:
        """The usage errors a run is refused for before anything is opened."""
        if not self.paths and not self.delete:
            raise JobUsageError("give PATHS to ingest, or --delete SOURCE")
        if self.prune and not self.paths:
            raise JobUsageError("--prune needs the PATHS that are still part of the book")
        if self.paths and not found.files and not found.outside and not self.prune:  # an emptied folder still prunes
            raise JobUsageError("no supported files found under the given paths")


def job_from_arguments(
    paths: tuple[Path, ...],
    root: Path | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    prune: bool,
    prune_all: bool,
    delete: tuple[str, ...],
    dry_run: bool,
    batch_size: int,
    collection: str,
) -> IngestJob:
    """The job for the CLI's arguments: paths absolute as met from this folder (links are followed later, by the
    same checks as ever, so that a link is named as given)."""
    return IngestJob(
        paths=[str(p.absolute()) for p in paths],
        root=str(root.absolute()) if root is not None else None,
        include=list(include),
        exclude=list(exclude),
        prune="all" if prune_all else prune,
        delete=list(delete),
        dry_run=dry_run,
        batch_size=batch_size,
        collection=collection,
    )


@dataclass(frozen=True, slots=True)
class ProgressFigures:
    """A run's progress as the progress bar shows it, also as sent from the server to the CLI."""

    files_total: int
    files_done: int = 0
    chunks_embedded: int = 0
    chunks_written: int = 0
    rate: float | None = None  # None until enough chunks are embedded for a rate (`Progress.rate`)

    @classmethod
    def of(cls, progress: Progress) -> ProgressFigures:
        return cls(
            progress.files_total,
            progress.files_done,
            progress.chunks_embedded,
            progress.chunks_written,
            None if progress.rate is None else round(progress.rate, 2),
        )

    def line(self) -> str:
        shown = f" ({self.rate:.1f}/s)" if self.rate is not None else ""
        return (
            f"{self.files_done}/{self.files_total} files read, {self.chunks_embedded} chunks embedded{shown}, "
            f"{self.chunks_written} written"
        )


def re_embedding_note(client: QdrantClient, settings: Settings) -> str | None:
    """Why an unchanged book is embedded again (EMBEDDING_MODEL switched: the model is part of a chunk's id), for
    the author's console; None when the store is the configured model's."""
    other = other_embedding(client, settings)
    if other is None:
        return None
    return (
        f"{other.chunks} of {other.total} stored chunks were embedded with {other.model}; EMBEDDING_MODEL is "
        f"{settings.embedding_model}, so every chunk of the files given is embedded again (the service serves the "
        "book once all of it is)"
    )


def run_job(
    indexer: Indexer,
    job: IngestJob,
    on_progress: Callable[[ProgressFigures], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> list[IngestReport]:
    """Delete the job's sources, then ingest its paths keyed against the book's root (ingest/book_root.py).

    Raises `JobUsageError` (nothing to ingest), `BookRootError` (a path outside the remembered root) and what the
    indexer raises; the collection must exist unless this is a dry run.
    """
    found = job.discover()
    job.check(found)
    reports: list[IngestReport] = []
    if job.delete:
        reports.append(indexer.delete_sources(job.delete, job.dry_run))
    if job.paths:
        paths = [Path(p) for p in job.paths]
        explicit = Path(job.root) if job.root is not None else None
        choice = choose_root(paths, explicit, remembered_root(indexer.client, indexer.collection))
        if choice.note and on_note is not None:
            on_note(choice.note)
        scope = None if job.prune == "all" else prune_scope_of(paths, choice.root)
        progress: Callable[[Progress], None] | None = None
        if on_progress is not None:
            report_progress = on_progress

            def progress(p: Progress) -> None:
                report_progress(ProgressFigures.of(p))

        report = indexer.ingest(
            found.files, choice.root, bool(job.prune), job.dry_run, on_progress=progress, prune_scope=scope
        )
        report.files.extend(outside_outcomes(found.outside, choice.root, "the folder given"))
        reports.append(report)
    return reports
