"""`rag-ingest`: load, split, embed and upsert a book's files into the configured Qdrant collection.

Progress (files, chunks, rate) and one line per failed file go to stderr, the summary to stdout. Exit codes:
0 all files ingested, 1 some files failed or the store or model could not be used, 2 a usage error.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import click
from langchain_core.embeddings import Embeddings
from pydantic import ValidationError
from qdrant_client import QdrantClient

from chains.embeddings import build_embeddings, embedding_dimension
from chains.errors import DependencyUnavailable, RagError
from chains.settings import Settings, settings_error_message
from chains.vectorstore import build_qdrant_client, check_collection, ensure_collection
from ingest.book_root import BookRootError, choose_root, remembered_root
from ingest.indexer import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EXCLUDES,
    Indexer,
    IngestReport,
    Progress,
    discover,
    outside_outcomes,
    prune_scope_of,
)
from ingest.splitter import approximate_tokens

logger = logging.getLogger("ingest")

LOCKED_HINT = (
    "Ways through: ingest through the running server instead (POST /admin/ingest with an ADMIN_API_KEYS key and "
    "INGEST_ROOT set on the server; see docs/ingest.md), stop the process holding the store and run rag-ingest "
    "again, or run Qdrant as a server and set QDRANT_URL."
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
    found = discover(paths, include, (*DEFAULT_EXCLUDES, *exclude))
    files = found.files
    if paths and not files and not found.outside and not (prune or prune_all):  # an emptied folder still prunes
        raise click.UsageError("no supported files found under the given paths")
    client = open_store(settings)  # first: a locked store is told before the model takes seconds to load
    reports: list[IngestReport] = []
    try:
        embeddings = LazyEmbeddings(settings, lambda model: _check_store(client, settings, model, dry_run))
        if not dry_run and not client.collection_exists(settings.qdrant_collection):
            embeddings.model()  # the collection is made for the model's vector size
        indexer = Indexer(client, embeddings, settings, batch_size=batch_size)
        if delete_sources:
            reports.append(indexer.delete_sources(delete_sources, dry_run))
        if paths:
            choice = choose_root(paths, root, remembered_root(client, settings.qdrant_collection))
            if choice.note:
                click.echo(f"note: {choice.note}", err=True)
            scope = None if prune_all else prune_scope_of(paths, choice.root)
            report = _run(indexer, files, choice.root, prune or prune_all, scope, dry_run, quiet)
            report.files.extend(outside_outcomes(found.outside, choice.root, "the folder given"))
            reports.append(report)
    except BookRootError as exc:
        raise click.UsageError(str(exc)) from exc
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        client.close()
    failed = 0
    for report in reports:
        for outcome in report.files:
            if outcome.error is not None:
                click.echo(f"failed: {outcome.source}: {outcome.error}", err=True)
            elif dry_run and outcome.changed:
                click.echo(
                    f"would change {outcome.source}: {outcome.added} added, {outcome.updated} updated, "
                    f"{outcome.unchanged} unchanged, {outcome.removed} removed"
                )
        for source in report.pruned_sources:
            click.echo(f"{'would prune' if dry_run else 'pruned'} {source}")
        for note in report.notes:
            click.echo(f"note: {note}", err=True)
        failed += len(report.failed)
        click.echo(report.summary())
    if failed:
        sys.exit(1)


def _progress_line(progress: Progress) -> str:
    return (
        f"{progress.files_done}/{progress.files_total} files read, {progress.chunks_embedded} chunks embedded "
        f"({progress.rate:.1f}/s), {progress.chunks_written} written"
    )


def _run(
    indexer: Indexer,
    files: list[Path],
    base_dir: Path,
    prune: bool,
    scope: list[str] | None,
    dry_run: bool,
    quiet: bool,
) -> IngestReport:
    if quiet:
        return indexer.ingest(files, base_dir, prune, dry_run, prune_scope=scope)
    last = Progress(len(files))
    with click.progressbar(length=len(files), label="ingesting", file=sys.stderr, show_pos=True) as bar:

        def advance(progress: Progress) -> None:
            nonlocal last
            last = progress
            bar.label = _progress_line(progress)
            bar.update(progress.files_done - bar.pos)

        report = indexer.ingest(files, base_dir, prune, dry_run, on_progress=advance, prune_scope=scope)
    click.echo(_progress_line(last), err=True)  # the final figures, also where stderr is not a terminal
    return report


if __name__ == "__main__":
    main()
