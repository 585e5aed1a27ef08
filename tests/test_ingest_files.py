"""Which files a folder argument takes (include/exclude globs), how sources are named, and their URLs."""

from __future__ import annotations

from pathlib import Path

from ingest.indexer import DEFAULT_EXCLUDES, discover_files, moved_sources, source_key


def make_book(root: Path) -> Path:
    book = root / "book"
    for name in [
        "intro.mdx",
        "part1/ch1.md",
        "part1/deep/ch2.mdx",
        "drafts/wip.md",
        "node_modules/pkg/readme.md",
        ".git/notes.md",
        ".hidden.md",
        "cover.png",
    ]:
        path = book / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# x\n\ntext\n")
    return book


def relative(book: Path, files: list[Path]) -> list[str]:
    return [f.relative_to(book).as_posix() for f in files]


def test_folder_walk_takes_supported_files_minus_hidden_and_node_modules(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    assert relative(book, list(discover_files([book]))) == [
        "drafts/wip.md",
        "intro.mdx",
        "part1/ch1.md",
        "part1/deep/ch2.mdx",
    ]


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    mdx = discover_files([book], include=["**/*.mdx"])
    assert relative(book, list(mdx)) == ["intro.mdx", "part1/deep/ch2.mdx"]  # `**/` also matches the top level
    no_drafts = discover_files([book], exclude=[*DEFAULT_EXCLUDES, "drafts/**"])
    assert "drafts/wip.md" not in relative(book, list(no_drafts))


def test_a_file_named_explicitly_is_taken_whatever_its_type(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    assert list(discover_files([book / "cover.png"])) == [book / "cover.png"]


def test_sources_are_relative_to_the_base_folder(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    assert source_key(book / "part1" / "ch1.md", tmp_path) == "book/part1/ch1.md"
    assert source_key(book / "intro.mdx", tmp_path / "elsewhere") == (book / "intro.mdx").resolve().as_posix()


def test_sources_keyed_from_above_the_root_are_recognised(tmp_path: Path) -> None:
    root = tmp_path / "book"
    stored = ["book/ch1.md", "book/part/ch2.md", (root / "ch3.md").as_posix(), "ch4.md", "other/ch5.md", "x/ch6.md"]
    seen = ["ch1.md", "part/ch2.md", "ch3.md", "ch4.md", "ch5.md", "part/x/ch6.md"]
    # A key that ends with a new key under some folder prefix, or is the file's absolute path under the root: moved
    # (this runs only when the root is new to the collection). Already the new key, or a path that is not a
    # suffix of it (x/ch6.md is not part/x/ch6.md), or an absolute path outside the root: not.
    assert moved_sources(stored, seen, root) == {
        "book/ch1.md": "ch1.md",
        "book/part/ch2.md": "part/ch2.md",
        (root / "ch3.md").as_posix(): "ch3.md",
        "other/ch5.md": "ch5.md",
    }
    assert moved_sources([(tmp_path / "elsewhere" / "ch1.md").as_posix()], ["ch1.md"], root) == {}
