"""The page and heading-id rules of chains/site_urls.py, one generator at a time.

Expected values are what each generator's own code gives (Docusaurus' numberPrefix.ts / slug.ts and
github-slugger's fixtures; Python-Markdown's toc; mdBook's normalize_id), written out by hand here.
"""

from __future__ import annotations

import pytest

from chains.site_urls import (
    heading_slugs,
    heading_text,
    page_path,
    page_url,
    split_custom_id,
    strip_number_prefix,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("03-planting", "planting"),
        ("03_planting", "planting"),
        ("03.planting", "planting"),
        ("003 - My Doc", "My Doc"),
        ("1-My Doc", "My Doc"),
        ("MyDoc", "MyDoc"),
        ("a1-My Doc", "a1-My Doc"),
        ("My Doc-000", "My Doc-000"),
        # Docusaurus leaves date- and version-like names alone (its issues 4640 and 4653).
        ("2021-01-31-Doc", "2021-01-31-Doc"),
        ("31-01-2021 - Doc", "31-01-2021 - Doc"),
        ("8.0-Doc", "8.0-Doc"),
        ("1-2-Doc", "1-2-Doc"),
    ],
)
def test_docusaurus_number_prefixes(name: str, expected: str) -> None:
    assert strip_number_prefix(name) == expected


@pytest.mark.parametrize(
    ("path", "front_matter", "expected"),
    [
        ("03-planting.md", None, "planting"),
        ("04-pruning-and-pollination.mdx", None, "pruning-and-pollination"),
        ("01-basics/02-soil/03-ph.md", None, "basics/soil/ph"),
        ("index.md", None, ""),
        ("README.md", None, ""),
        ("guide/index.md", None, "guide/"),
        ("guide/readme.md", None, "guide/"),
        ("guide/ReadMe.mdx", None, "guide/"),
        ("02-guide/index.md", None, "guide/"),
        # A file named like its folder is the folder's index (the raw names are compared, prefixes and all).
        ("guide/Guide.md", None, "guide/"),
        ("01-intro/01-intro.md", None, "intro/"),
        ("01-intro/intro.md", None, "intro/intro"),
        # front-matter id replaces the file name part, slug wins over both.
        ("03-planting.md", {"id": "plant"}, "plant"),
        ("part-1/03-planting.md", {"id": "plant"}, "part-1/plant"),
        ("guide/index.md", {"id": "start"}, "guide/"),
        ("part/03-planting.md", {"slug": "/garden/plant"}, "garden/plant"),
        ("part/03-planting.md", {"slug": "plant"}, "part/plant"),
        ("part/03-planting.md", {"slug": "../elsewhere"}, "elsewhere"),
        ("part/03-planting.md", {"slug": "/"}, ""),
        ("part/index.md", {"slug": "welcome"}, "part/welcome"),
        ("part/03-planting.md", {"slug": "plant", "id": "ignored"}, "part/plant"),
        ("intro.md", {"slug": None, "title": "Intro"}, "intro"),
        # Not a Markdown page: served as a file.
        ("files/manual.pdf", None, "files/manual.pdf"),
    ],
)
def test_docusaurus_page_paths(path: str, front_matter: dict[str, object] | None, expected: str) -> None:
    assert page_path(path, front_matter) == expected


@pytest.mark.parametrize(
    ("style", "path", "expected"),
    [
        ("mkdocs", "03-planting.md", "03-planting/"),
        ("mkdocs", "guide/setup.md", "guide/setup/"),
        ("mkdocs", "index.md", ""),
        ("mkdocs", "guide/index.md", "guide/"),
        ("mkdocs", "guide/README.md", "guide/"),
        ("mdbook", "03-planting.md", "03-planting.html"),
        ("mdbook", "guide/setup.md", "guide/setup.html"),
        ("mdbook", "README.md", "index.html"),
        ("mdbook", "guide/readme.md", "guide/index.html"),
        ("html", "text/ch01.xhtml", "text/ch01.xhtml"),
        ("html", "ch02.html", "ch02.html"),
        ("html", "notes/03-planting.md", "notes/03-planting.html"),
    ],
)
def test_other_styles_page_paths(style: str, path: str, expected: str) -> None:
    # Front matter that Docusaurus would honour does not move a page on the other generators.
    assert page_path(path, {"slug": "/x", "id": "y"}, style=style) == expected


def test_unknown_style_is_named() -> None:
    with pytest.raises(ValueError, match="unknown site style 'hugo'"):
        page_path("a.md", style="hugo")
    with pytest.raises(ValueError, match="docusaurus, mkdocs, mdbook, html"):
        heading_slugs(["A"], style="hugo")


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Depth and Width {#deep}", ("Depth and Width", "deep")),
        ("Depth and Width", ("Depth and Width", None)),
        (r"Escaped for MDX \{#deep-2\}", ("Escaped for MDX", "deep-2")),
        ("**Bold** part {#bold-id}", ("**Bold** part", "bold-id")),
        ("Not at the end {#x} here", ("Not at the end {#x} here", None)),
        ("Spaced {# spaced }", ("Spaced", "spaced")),
    ],
)
def test_split_custom_id(heading: str, expected: tuple[str, str | None]) -> None:
    assert split_custom_id(heading) == expected


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("**Bold** and *em* and _under_", "Bold and em and under"),
        ("Use `git push --force`", "Use git push --force"),
        ("See [the guide](guide.md#x) and ![a cat](cat.png)", "See the guide and a cat"),
        ("snake_case_name stays", "snake_case_name stays"),
        ("A <span>tag</span> &amp; entity", "A tag & entity"),
        (r"Escaped \*stars\*", "Escaped *stars*"),
    ],
)
def test_heading_text(heading: str, expected: str) -> None:
    assert heading_text(heading) == expected


def test_docusaurus_heading_slugs() -> None:
    headings = [
        "Planting",
        "Depth and Width",
        "Rootstocks: The Hidden Half of the Tree",
        "Is It Ripe?",
        "Pests, Diseases, Harvest and Storage",
        "Bare-Root or Container-Grown",
        "Über Bäume",
        "Ça marche — déjà",
        "日本語の見出し",
        "C++ & Rust!",
        "Emoji 🍎 apples",
        "**Bold** `code` [link](x.md)",
        "snake_case_name",
    ]
    assert heading_slugs(headings) == [
        "planting",
        "depth-and-width",
        "rootstocks-the-hidden-half-of-the-tree",
        "is-it-ripe",
        "pests-diseases-harvest-and-storage",
        "bare-root-or-container-grown",
        "über-bäume",
        "ça-marche--déjà",
        "日本語の見出し",
        "c--rust",
        "emoji--apples",
        "bold-code-link",
        "snake_case_name",
    ]


def test_docusaurus_duplicates_and_custom_ids() -> None:
    headings = ["Watering", "Watering", "Watering {#watering}", "Watering", "Watering-1", "Notes {#deep}", "Notes"]
    # github-slugger numbers repeats per original slug and skips taken ones; a custom id is not registered.
    assert heading_slugs(headings) == [
        "watering",
        "watering-1",
        "watering",
        "watering-2",
        "watering-1-1",
        "deep",
        "notes",
    ]


def test_mkdocs_heading_slugs() -> None:
    headings = ["Depth and Width", "Depth and Width", "Über Bäume", "C++ & Rust!", "Kept {#kept}", "Kept", "`code`"]
    assert heading_slugs(headings, style="mkdocs") == [
        "depth-and-width",
        "depth-and-width_1",
        "uber-baume",
        "c-rust",
        "kept",
        "kept_1",
        "code",
    ]


def test_mdbook_heading_slugs() -> None:
    headings = ["Depth and Width", "Depth and Width", "Über Bäume", "C++ & Rust!", "Own {#own}", "**Bold** text"]
    assert heading_slugs(headings, style="mdbook") == [
        "depth-and-width",
        "depth-and-width-1",
        "Über-bäume",  # mdBook lowercases ASCII letters only
        "c--rust",
        "own",
        "bold-text",
    ]


def test_html_headings_use_the_github_rule() -> None:
    assert heading_slugs(["Depth and Width", "Depth and Width"], style="html") == [
        "depth-and-width",
        "depth-and-width-1",
    ]


def test_sample_book_depth_and_width() -> None:
    path = page_path("03-planting.md", {"title": "Planting", "sidebar_position": 3})
    headings = ["Planting", "When to Plant", "Preparing the Roots", "Digging the Hole", "Depth and Width"]
    anchor = heading_slugs(headings)[-1]
    assert page_url("https://x/docs/", path, anchor) == "https://x/docs/planting#depth-and-width"


@pytest.mark.parametrize(
    ("base", "path", "anchor", "expected"),
    [
        ("https://x/docs/", "planting", None, "https://x/docs/planting"),
        ("https://x/docs", "planting", "a", "https://x/docs/planting#a"),
        ("https://x/docs/", "", "intro", "https://x/docs/#intro"),
        ("https://x/docs/", "guide/", None, "https://x/docs/guide/"),
        ("https://x/", "my notes/über.html", "über-bäume", "https://x/my%20notes/%C3%BCber.html#%C3%BCber-b%C3%A4ume"),
        ("https://x/", "a%20b", "", "https://x/a%20b"),
    ],
)
def test_page_url(base: str, path: str, anchor: str | None, expected: str) -> None:
    assert page_url(base, path, anchor) == expected
