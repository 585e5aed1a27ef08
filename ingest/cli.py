"""`rag-ingest`: load, split, embed and upsert a book's files into the configured Qdrant collection.

Progress (files, chunks, rate) and one line per failed file go to stderr, the summary to stdout. Exit codes:
0 all files ingested, 1 some files failed or the store or model could not be used, 2 a usage error.

When a running `rag-api` holds the embedded store, the job is handed to it (ingest/handoff.py) and its progress and
reports are shown the same way, with the same exit codes.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from langchain_core.embeddings import Embeddings
from pydantic import ValidationError
from qdrant_client import QdrantClient

from chains.embeddings import build_embeddings, embedding_dimension
from chains.errors import DependencyUnavailable, RagError
from chains.settings import Settings, settings_error_message
from chains.vectorstore import build_qdrant_client, check_collection, ensure_collection
from ingest.book_root import BookRootError
from ingest.channel import ChannelRefused, find_server
from ingest.handoff import HandoffFailed, hand_over
from ingest.indexer import DEFAULT_BATCH_SIZE, Indexer
from ingest.job import IngestJob, JobUsageError, ProgressFigures, job_from_arguments, re_embedding_note, run_job
from ingest.splitter import approximate_tokens

logger = logging.getLogger("ingest")

LOCKED_HINT = (
    "A running rag-api would have taken the work itself (nothing to set); this holder is another process (another "
    "rag-ingest, a notebook, an older server). Ways through: wait for it or stop it and run rag-ingest again, "
    "ingest through a server configured for it (POST /admin/ingest with an ADMIN_API_KEYS key and INGEST_ROOT; "
    "see docs/ingest.md), or run Qdrant as a server and set QDRANT_URL."
)


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        raise click.UsageError(settings_error_message(exc)) from exc


class LazyEmbeddings(Embeddings):
    """The embedding model, loaded on first use: an unchanged re-ingest needs neither it nor its tokenizer.

    `on_load` runs once with the model, before it is used (to check the collection against its vector size).
    """

    def __init__(self, settings: Settings, on_load: Callable[[Embeddings], None]) -> None:
        self._settings = settings
        self._on_load = on_load
        self._model: Embeddings | None = None

    def model(self) -> Embeddings:
        if self._model is None:
            model = build_embeddings(self._settings)
            self._on_load(model)
            self._model = model
        return self._model

    def load(self) -> None:
        """Load now (the indexer calls it before embedding, so that the rate excludes it)."""
        self.model()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model().embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.model().embed_query(text)

    def count_tokens(self, text: str) -> int:
        counter: Callable[[str], int] = getattr(self.model(), "count_tokens", approximate_tokens)
        return counter(text)


def _check_store(client: QdrantClient, settings: Settings, model: Embeddings, dry_run: bool) -> None:
    """Make the collection (or check it) for `model`; a dry run only checks an existing one."""
    dimension = embedding_dimension(model)
    if not dry_run:
        ensure_collection(client, settings, dimension)
    elif client.collection_exists(settings.qdrant_collection):
        check_collection(client, settings.qdrant_collection, dimension)
    note = re_embedding_note(client, settings)
    if note is not None:
        _note(note)


def open_store(settings: Settings) -> QdrantClient:
    """The Qdrant client, or a one-paragraph explanation (no traceback) when the embedded store is taken."""
    try:
        return build_qdrant_client(settings)
    except DependencyUnavailable as exc:
        if settings.uses_qdrant_server:
            raise click.ClickException(str(exc)) from exc
        raise click.ClickException(f"{exc}\n{LOCKED_HINT}") from exc
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--collection", envvar="QDRANT_COLLECTION", help="Qdrant collection to write to.")
@click.option(
    "--root",
    "--base-dir",
    "root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The book's root folder: sources are stored by their path inside it, as the book's site names its pages. "
    "Default: the root the collection remembers from its first ingest, else the folder argument.",
    show_default=False,
)
@click.option("--include", multiple=True, help="Glob (relative to a folder argument) of files to take; repeatable.")
@click.option("--exclude", multiple=True, help="Glob of files to skip; repeatable (adds to hidden and node_modules).")
@click.option(
    "--prune", is_flag=True, help="Delete stored files under the PATHS given (their folders) that are no longer there."
)
@click.option(
    "--prune-all",
    is_flag=True,
    help="Delete every stored file that is not among PATHS (other folders' too, and absolute sources of old runs).",
)
@click.option(
    "--delete",
    "delete_sources",
    multiple=True,
    metavar="SOURCE",
    help="Delete a stored source (its path inside the book's root, as the summary names it); repeatable.",
)
@click.option("--dry-run", is_flag=True, help="Show what would change (chunks added, updated, removed); write nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 4096),
    default=DEFAULT_BATCH_SIZE,
    help="Chunks given to the embedding model at once (it batches them by length).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def main(
    paths: tuple[Path, ...],
    collection: str | None,
    root: Path | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    prune: bool,
    prune_all: bool,
    delete_sources: tuple[str, ...],
    dry_run: bool,
    batch_size: int,
    quiet: bool,
) -> None:
    """Ingest the book files and folders PATHS (Markdown, MDX, HTML, text, PDF, DOCX, EPUB) into Qdrant.

    Re-running is cheap: unchanged files are skipped, changed files replace their old chunks (new ones are
    written before old ones are removed). Settings (QDRANT_URL, QDRANT_PATH, EMBEDDING_MODEL, CHUNK_SIZE,
    CHUNK_SIZE_UNIT, BOOK_SITE_STYLE, ...) come from the environment or `.env`.

    Sources are named by their path inside the book's root folder, whatever folder this runs from: --root if
    given, else the root this collection remembers from its first ingest (when PATHS lie under it), else the
    folder argument (a file's own folder; for several paths the folder they share). So `rag-ingest book/` and a
    later `rag-ingest book/ch1.md` store ch1.md under the same key.

    While a running rag-api holds the embedded store (QDRANT_PATH), the job is handed to it over a local socket
    that only the store's owner can use, and its progress is shown here: nothing to restart, nothing to set.

    \b
    Examples:
      rag-ingest book/ --prune
      rag-ingest book/ch1.md                 # one changed chapter, same key as above
      rag-ingest book/chapters/ --prune      (prunes only under book/chapters/)
      rag-ingest docs/ --include '**/*.mdx' --exclude 'drafts/**'
      rag-ingest book/ --dry-run
      rag-ingest --delete old-chapter.md
      rag-ingest walden.epub                 # one source a chapter: walden.epub/text/economy.xhtml, ...
    """
    if not paths and not delete_sources:
        raise click.UsageError("give PATHS to ingest, or --delete SOURCE")
    if (prune or prune_all) and not paths:
        raise click.UsageError("--prune needs the PATHS that are still part of the book")
    settings = load_settings(qdrant_collection=collection)
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    job = job_from_arguments(
        paths, root, include, exclude, prune, prune_all, delete_sources, dry_run, batch_size, settings.qdrant_collection
    )
    try:
        job.check(job.discover())
    except JobUsageError as exc:
        raise click.UsageError(str(exc)) from exc
    # The embedded store opens in one process: a running API server holding it takes the job itself.
    handed = None if settings.uses_qdrant_server else _run_in_server(settings, job, quiet)
    reports = handed if handed is not None else _run_here(settings, job, quiet)
    if _echo_reports(reports):
        sys.exit(1)


def _note(message: str) -> None:
    click.echo(f"note: {message}", err=True)


class ProgressView:
    """The progress bar on stderr, fed by this process's indexer or by the server's events, and its final figures
    (printed also where stderr is not a terminal)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.last: ProgressFigures | None = None
        self._stack = contextlib.ExitStack()
        self._bar: Any = None

    def update(self, figures: ProgressFigures) -> None:
        self.last = figures
        if self.quiet:
            return
        if self._bar is None:
            bar = click.progressbar(length=figures.files_total, label="ingesting", file=sys.stderr, show_pos=True)
            self._bar = self._stack.enter_context(bar)
        self._bar.label = figures.line()
        self._bar.update(figures.files_done - self._bar.pos)

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()
        if self.last is not None and not self.quiet:
            click.echo(self.last.line(), err=True)


def _run_in_server(settings: Settings, job: IngestJob, quiet: bool) -> list[dict[str, Any]] | None:
    """Hand the job to the API server holding the embedded store; None when no server holds it."""
    try:
        server = find_server(settings.qdrant_path)
    except ChannelRefused as exc:
        raise click.ClickException(str(exc)) from exc
    if server is None:
        return None
    endpoint, sock = server
    _note(f"the API server (pid {endpoint.pid}) holds the store at {settings.qdrant_path}: ingesting through it")
    try:
        with ProgressView(quiet) as view:
            return hand_over(endpoint, sock, job, view.update, _note)
    except HandoffFailed as exc:
        if exc.exit_code == 2:
            raise click.UsageError(str(exc)) from exc
        raise click.ClickException(str(exc)) from exc


def _run_here(settings: Settings, job: IngestJob, quiet: bool) -> list[dict[str, Any]]:
    client = open_store(settings)  # first: a locked store is told before the model takes seconds to load
    try:
        embeddings = LazyEmbeddings(settings, lambda model: _check_store(client, settings, model, job.dry_run))
        if not job.dry_run and not client.collection_exists(settings.qdrant_collection):
            embeddings.model()  # the collection is made for the model's vector size
        indexer = Indexer(client, embeddings, settings, batch_size=job.batch_size)
        with ProgressView(quiet) as view:
            reports = run_job(indexer, job, view.update, _note)
    except (BookRootError, JobUsageError) as exc:
        raise click.UsageError(str(exc)) from exc
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        client.close()
    return [report.as_dict() for report in reports]


def _echo_reports(reports: list[dict[str, Any]]) -> int:
    """Print each report (failed files and notes on stderr, changes and the summary on stdout); returns the
    number of failed files."""
    failed = 0
    for report in reports:
        dry_run = bool(report["dry_run"])
        for outcome in report["files"]:
            if outcome["error"] is not None:
                click.echo(f"failed: {outcome['source']}: {outcome['error']}", err=True)
            elif dry_run and (outcome["added"] or outcome["updated"] or outcome["removed"]):
                click.echo(
                    f"would change {outcome['source']}: {outcome['added']} added, {outcome['updated']} updated, "
                    f"{outcome['unchanged']} unchanged, {outcome['removed']} removed"
                )
        for source in report["pruned_sources"]:
            click.echo(f"{'would prune' if dry_run else 'pruned'} {source}")
        for note in report["notes"]:
            _note(note)
        failed += int(report["failed"])
        click.echo(report["summary"])
    return failed


if __name__ == "__main__":
    main()
