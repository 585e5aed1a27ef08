"""`bench.books` exports a book from a git directory at its pinned commit, with the documented changes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import books
from bench.books import Book, export, strip_html_comments, xhtml_as_html
from ingest.loaders import load_document


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def snapshot(tmp_path: Path) -> tuple[Path, str]:
    """A repository with one XHTML chapter, a title page and a later commit that the pin must not see."""
    repo = tmp_path / "repo"
    (repo / "text").mkdir(parents=True)
    git(tmp_path, "init", "-q", str(repo))
    (repo / "text" / "solitude.xhtml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml"><body><section>'
        "<h2>Solitude</h2><p>This is a delicious evening by the pond.</p></section></body></html>\n",
        encoding="utf-8",
    )
    (repo / "text" / "titlepage.xhtml").write_text("<html><body><h1>Title</h1></body></html>", encoding="utf-8")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "one")
    pinned = git(repo, "rev-parse", "HEAD")
    (repo / "text" / "later.xhtml").write_text("<html><body><p>later</p></body></html>", encoding="utf-8")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "two")
    return repo / ".git", pinned


def test_export_writes_the_pinned_commits_chapters_as_html_that_ingest_reads(
    snapshot: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git_dir, pinned = snapshot
    book = Book("o/n", pinned, ("text/",), ".xhtml", "CC0", xhtml_as_html, ".html", ("titlepage.xhtml",))
    monkeypatch.setitem(books.BOOKS, "tiny", book)

    target = export("tiny", git_dir, tmp_path / "out")

    assert sorted(p.name for p in target.iterdir()) == ["solitude.html"]  # no title page, no later file
    text = (target / "solitude.html").read_text(encoding="utf-8")
    assert not text.startswith("<?xml")
    loaded = load_document(target / "solitude.html")
    assert [b.text for b in loaded.blocks if b.kind == "heading"] == ["Solitude"]
    assert (tmp_path / "out" / "tiny.commit").read_text().strip() == pinned


def test_html_comments_are_removed_from_markdown() -> None:
    text = "# Closures\n\n<!--\n  - test: `x`\n  ```swifttest\n  -> let a = 1\n  ```\n-->\n\nBody text.\n"
    assert strip_html_comments(text) == "# Closures\n\n\nBody text.\n"
