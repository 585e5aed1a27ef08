"""`rag-ingest`: load, split, embed and upsert a book's files into the configured Qdrant collection.

Progress goes to stderr, the summary to stdout. Exit codes: 0 all files ingested, 1 some files failed or the
store could not be used, 2 a usage error (bad option or setting).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from pydantic import ValidationError

from chains.embeddings import build_embeddings, embedding_dimension
from chains.errors import RagError
from chains.settings import Settings, settings_error_message
from chains.vectorstore import build_qdrant_client, ensure_collection
from ingest.indexer import DEFAULT_EXCLUDES, FileOutcome, Indexer, IngestReport, discover_files
from ingest.splitter import approximate_tokens

logger = logging.getLogger("ingest")


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        raise click.UsageError(settings_error_message(exc)) from exc


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--collection", envvar="QDRANT_COLLECTION", help="Qdrant collection to write to.")
@click.option(
    "--base-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    help="Sources are stored by their path relative to this folder.",
)
@click.option("--include", multiple=True, help="Glob (relative to a folder argument) of files to take; repeatable.")
@click.option("--exclude", multiple=True, help="Glob of files to skip; repeatable (adds to hidden and node_modules).")
@click.option("--prune", is_flag=True, help="Delete stored files under --base-dir that are no longer among PATHS.")
@click.option("--dry-run", is_flag=True, help="Show what would change without writing anything.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=64, help="Chunks embedded and upserted at once.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or per-file lines.")
def main(
    paths: tuple[Path, ...],
    collection: str | None,
    base_dir: Path,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    prune: bool,
    dry_run: bool,
    batch_size: int,
    quiet: bool,
) -> None:
    """Ingest the book files and folders PATHS (Markdown, MDX, HTML, text, PDF, DOCX) into Qdrant.

    Re-running is cheap: unchanged chunks are skipped, changed files replace their old chunks.
    Settings (QDRANT_URL, QDRANT_PATH, EMBEDDING_MODEL, CHUNK_SIZE, ...) come from the environment or `.env`.
    """
    settings = load_settings(qdrant_collection=collection)
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    files = list(discover_files(paths, include, (*DEFAULT_EXCLUDES, *exclude)))
    if not files:
        raise click.UsageError("no supported files found under the given paths")
    try:
        embeddings = build_embeddings(settings)
        client = build_qdrant_client(settings)
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        ensure_collection(client, settings, embedding_dimension(embeddings))
        count = getattr(embeddings, "count_tokens", approximate_tokens)
        indexer = Indexer(client, embeddings, settings, count, batch_size)
        report = _run(indexer, files, base_dir, prune, dry_run, quiet)
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        client.close()
    for outcome in report.failed:
        click.echo(f"failed: {outcome.source}: {outcome.error}", err=True)
    click.echo(report.summary())
    if report.failed:
        sys.exit(1)


def _run(indexer: Indexer, files: list[Path], base_dir: Path, prune: bool, dry_run: bool, quiet: bool) -> IngestReport:
    if quiet:
        return indexer.ingest(files, base_dir, prune, dry_run)
    with click.progressbar(length=len(files), label="ingesting", file=sys.stderr, show_pos=True) as bar:

        def advance(outcome: FileOutcome) -> None:
            bar.update(1)
            if outcome.error is None and (outcome.added or outcome.removed):
                bar.label = f"{outcome.source}: +{outcome.added} -{outcome.removed}"

        return indexer.ingest(files, base_dir, prune, dry_run, on_file=advance)


if __name__ == "__main__":
    main()
