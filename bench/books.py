"""The evaluation books beyond ../shared/corpus: exported from a git snapshot of their public repositories at a
pinned commit into `.bench-cache/books/<name>/`, so that no whole book is committed to this repository.

    python -m bench.books --git-dir swift_book=/path/to/swift-book.git --git-dir walden=/path/to/walden.git
    python -m bench.books --mirror-root /work/.mirror    # finds <owner>+<name>/repo (or <owner>+<name>.git) there

A git directory is any clone of the repository named in `BOOKS` that holds the pinned commit (`git clone --bare`
does). The export reads that commit only (`git ls-tree`, `git show`), never the work tree. Sources and licences:
bench/questions/SOURCES.md.

Changes made on export, the same every time:
- Markdown (the Swift book): HTML comments are removed. The book keeps its test harness for the code listings
  in `<!-- ... -->` blocks (about 30 % of the bytes); a reader never sees them.
- Standard Ebooks XHTML (Walden): the XML declaration is dropped and the files are renamed `.xhtml` -> `.html`,
  because today's ingest reads `.html` but refuses `.xhtml` (issue 15 adds it). The markup itself is unchanged.
  Front and back matter (title page, imprint, colophon, licence page) are left out.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import CACHE_DIR

BOOKS_DIR = CACHE_DIR / "books"
_COMMENT = re.compile(r"<!--.*?-->\n?", re.DOTALL)
_XML_DECLARATION = re.compile(r"\A\ufeff?<\?xml[^>]*\?>\s*")


def strip_html_comments(text: str) -> str:
    return _COMMENT.sub("", text)


def xhtml_as_html(text: str) -> str:
    return _XML_DECLARATION.sub("", text)


# The pages Standard Ebooks add to a book's text (title pages, imprint, colophon, licence): left out of an export.
STANDARD_EBOOKS_PAGES = (
    "titlepage.xhtml",
    "halftitlepage.xhtml",
    "imprint.xhtml",
    "colophon.xhtml",
    "uncopyright.xhtml",
)


@dataclass(frozen=True)
class Book:
    repo: str  # owner/name of the public repository
    commit: str
    folders: tuple[str, ...]  # exported folders; a file's path below its folder is its name in the export
    suffix: str
    licence: str
    transform: Callable[[str], str]
    rename_suffix: str | None = None
    skip: tuple[str, ...] = ()  # file names left out

    def files(self, git_dir: Path) -> list[str]:
        listing = _git(git_dir, "ls-tree", "-r", "--name-only", self.commit, "--", *self.folders).splitlines()
        return sorted(p for p in listing if p.endswith(self.suffix) and Path(p).name not in self.skip)

    def target_name(self, path: str) -> str:
        folder = next(f for f in self.folders if path.startswith(f))
        name = path[len(folder) :].lstrip("/")
        if self.rename_suffix:
            name = name[: -len(self.suffix)] + self.rename_suffix
        return name


BOOKS: dict[str, Book] = {
    "swift_book": Book(
        repo="swiftlang/swift-book",
        commit="29329996c4ec537de0b16e70609e2a6c4ecc2af7",
        folders=("TSPL.docc/GuidedTour/", "TSPL.docc/LanguageGuide/"),
        suffix=".md",
        licence="Apache-2.0 (with the Swift Runtime Library Exception)",
        transform=strip_html_comments,
    ),
    "walden": Book(
        repo="standardebooks/henry-david-thoreau_walden",
        commit="f000c2130735e4cff43fd147d47201c0199405d2",
        folders=("src/epub/text/",),
        suffix=".xhtml",
        licence="public domain (text); Standard Ebooks' work CC0 1.0",
        transform=xhtml_as_html,
        rename_suffix=".html",
        skip=STANDARD_EBOOKS_PAGES,
    ),
    "rust_book": Book(
        repo="rust-lang/book",
        commit="917544888a55e4da7109bdba8c88c893c0da70f4",
        folders=("src/",),
        suffix=".md",
        licence="MIT or Apache-2.0 (the repository's LICENSE-MIT, LICENSE-APACHE)",
        transform=str,
    ),
    "origin_of_species": Book(
        repo="standardebooks/charles-darwin_the-origin-of-species",
        commit="7c13c26dbac394a5fbe31c21b0403a8688686ba3",
        folders=("src/epub/text/",),
        suffix=".xhtml",
        licence="public domain (text); Standard Ebooks' work CC0 1.0",
        transform=str,
        skip=(*STANDARD_EBOOKS_PAGES, "loi.xhtml"),
    ),
    # Added after every default was chosen, as books no decision looked at (docs/retrieval.md, "Two books no
    # default was chosen on").
    "elixir_guide": Book(
        repo="elixir-lang/elixir",
        commit="63a7a054ceb2383d795731db8e6ea28aa30e4a03",
        folders=("lib/elixir/pages/getting-started/",),
        suffix=".md",
        licence="Apache-2.0 (the repository's LICENSE)",
        transform=str,
    ),
    "on_liberty": Book(
        repo="standardebooks/john-stuart-mill_on-liberty",
        commit="f9793ea4d5f540e28413cf49496da4fcbf54d822",
        folders=("src/epub/text/",),
        suffix=".xhtml",
        licence="public domain (text); Standard Ebooks' work CC0 1.0",
        transform=str,
        skip=STANDARD_EBOOKS_PAGES,
    ),
    # Added once the two above had become development books, as the held-out kinds again (a programming-language
    # book of over a hundred Markdown files, a 19th-century non-fiction classic in XHTML), and measured once with
    # the defaults as they stood (docs/retrieval.md, "Two more books no default was chosen on").
    "crystal_book": Book(
        repo="crystal-lang/crystal-book",
        commit="d8691369aaa964b730b7bad345bdcec104fcddec",
        folders=("docs/",),
        suffix=".md",
        licence="CC0 1.0 (the repository's LICENSE)",
        transform=str,
    ),
    "leisure_class": Book(
        repo="standardebooks/thorstein-veblen_the-theory-of-the-leisure-class",
        commit="0a0fe2d243e9621c03fb04d6613811c0e05e1170",
        folders=("src/epub/text/",),
        suffix=".xhtml",
        licence="public domain (text); Standard Ebooks' work CC0 1.0",
        transform=str,
        skip=STANDARD_EBOOKS_PAGES,
    ),
    # Added once the two above were development books too, and measured once with the defaults as they stood
    # (docs/retrieval.md, "Two books measured once, after every default was chosen").
    "scala3_book": Book(
        repo="scala/docs.scala-lang",
        commit="7689a46f38261d036ef5ee5b87d9ff366af396b9",
        folders=("_overviews/scala3-book/",),
        suffix=".md",
        licence="CC BY-SA 3.0 (EPFL; the repository's README)",
        transform=str,  # as published: Jekyll front matter and {% tabs %} tags included
    ),
    "voyage_of_the_beagle": Book(
        repo="standardebooks/charles-darwin_the-voyage-of-the-beagle",
        commit="4ad3b795abbb155e21c100d17d0b4d3ed0e34c8a",
        folders=("src/epub/text/",),
        suffix=".xhtml",
        licence="public domain (text); Standard Ebooks' work CC0 1.0",
        transform=str,
        skip=(*STANDARD_EBOOKS_PAGES, "loi.xhtml"),  # and the list of illustrations: links only
    ),
}


def _git(git_dir: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), *args], check=True, capture_output=True, text=True, encoding="utf-8"
    ).stdout


def book_dir(name: str, books_dir: Path = BOOKS_DIR) -> Path:
    return books_dir / name


def export(name: str, git_dir: Path, books_dir: Path = BOOKS_DIR) -> Path:
    """Write book `name`'s files at its pinned commit into `books_dir/name` (again only when the commit changed)."""
    book = BOOKS[name]
    target = book_dir(name, books_dir)
    stamp = books_dir / f"{name}.commit"
    if target.is_dir() and stamp.is_file() and stamp.read_text().strip() == book.commit:
        return target
    files = book.files(git_dir)
    if not files:
        raise SystemExit(f"{name}: no {book.suffix} files under {book.folders} at {book.commit} in {git_dir}")
    for old in sorted(target.rglob("*"), reverse=True) if target.exists() else []:
        old.unlink() if old.is_file() else old.rmdir()
    for path in files:
        out = target / book.target_name(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(book.transform(_git(git_dir, "show", f"{book.commit}:{path}")), encoding="utf-8")
    stamp.write_text(book.commit + "\n")
    return target


def find_git_dir(mirror_root: Path, repo: str) -> Path | None:
    flat = repo.replace("/", "+")
    for candidate in (mirror_root / flat / "repo", mirror_root / f"{flat}.git", mirror_root / flat):
        if (candidate / "HEAD").is_file() or (candidate / ".git").exists():
            return candidate if (candidate / "HEAD").is_file() else candidate / ".git"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export the evaluation books from git snapshots.")
    parser.add_argument("--git-dir", action="append", default=[], metavar="NAME=PATH", help="a book's git directory")
    parser.add_argument("--mirror-root", type=Path, help="a folder holding <owner>+<name>/repo git directories")
    args = parser.parse_args(argv)
    given = dict(item.split("=", 1) for item in args.git_dir)
    for name, book in BOOKS.items():
        git_dir = Path(given[name]) if name in given else None
        if git_dir is None and args.mirror_root is not None:
            git_dir = find_git_dir(args.mirror_root, book.repo)
        if git_dir is None:
            print(f"{name}: skipped (no git directory for {book.repo}; pass --git-dir {name}=PATH)")
            continue
        target = export(name, git_dir)
        count = sum(1 for _ in target.rglob(f"*{book.rename_suffix or book.suffix}"))
        print(f"{name}: {count} files in {target} ({book.repo} @ {book.commit[:12]}, {book.licence})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
