"""Which folder a book's sources are named relative to, and how the collection remembers it.

A source's key is its path inside the book's root folder (`03-planting.md`, `guide/index.md`), whatever folder
the command ran from, so that the page path on the book's site can be computed from it and so that ingesting one
changed chapter later (`rag-ingest book/ch1.md`) finds the chunks the whole-folder ingest stored. The rule:

1. `--root` (or `--base-dir`, its older name) when given; the admin endpoint always uses INGEST_ROOT.
2. Else the root this collection remembers from its first ingest, when every path lies under it.
3. Else the folder argument itself (for several paths: the folder they share; for a file: its folder).

The chosen root (an absolute path) is stored in the collection's metadata (Qdrant 1.16+), merged with whatever
else is there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qdrant_client import QdrantClient

logger = logging.getLogger(__name__)

ROOT_KEY = "bookrag_book_root"


class BookRootError(ValueError):
    """The paths do not fit the root the collection remembers, and no root was given."""


@dataclass(frozen=True, slots=True)
class RootChoice:
    root: Path
    note: str | None = None  # something the user should know (the root moved), or None


def remembered_root(client: QdrantClient, collection: str) -> Path | None:
    """The book root the collection was ingested against, or None (new collection, or made before roots)."""
    if not client.collection_exists(collection):
        return None
    metadata = client.get_collection(collection).config.metadata or {}
    value = metadata.get(ROOT_KEY)
    return Path(value) if isinstance(value, str) and value else None


def remember_root(client: QdrantClient, collection: str, root: Path) -> None:
    """Store `root` in the collection's metadata; a server too old for collection metadata is only logged."""
    try:
        client.update_collection(collection, metadata={ROOT_KEY: str(root)})
    except Exception as exc:  # an older Qdrant without collection metadata: keys still work, only not remembered
        logger.warning("could not store the book root in collection %s (%s: %s)", collection, type(exc).__name__, exc)


def default_root(paths: Sequence[Path]) -> Path:
    """The folder the paths share: a folder argument itself, a file's own folder."""
    folders = [p.resolve() if p.is_dir() else p.resolve().parent for p in paths]
    return Path(os.path.commonpath(folders))


def choose_root(paths: Sequence[Path], explicit: Path | None, remembered: Path | None) -> RootChoice:
    """The root to key `paths` against (see the module's rule), or `BookRootError` saying what to do."""
    if explicit is not None:
        root = explicit.resolve()
        if remembered is not None and remembered != root:
            return RootChoice(
                root,
                f"the book root changes from {remembered} to {root}: sources stored relative to the old root stay "
                "until an ingest of the whole book with --prune removes them",
            )
        return RootChoice(root)
    if not paths:
        return RootChoice(remembered or Path.cwd().resolve())
    fallback = default_root(paths)
    if remembered is None:
        return RootChoice(fallback)
    outside = [p for p in paths if not p.resolve().is_relative_to(remembered)]
    if not outside:
        return RootChoice(remembered)
    if not remembered.is_dir():
        return RootChoice(
            fallback,
            f"the book root this collection remembers, {remembered}, is not a folder here; using {fallback}",
        )
    raise BookRootError(
        f"{outside[0]} is outside the book root this collection remembers ({remembered}). Pass --root to say "
        "which folder is the book's root (then ingest the whole book with --prune to drop sources stored under "
        "the old root), or use another --collection for another book."
    )
