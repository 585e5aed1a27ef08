"""Where a book's file and heading live on the book's own website, computed the way its site generator does.

Pure functions, no I/O: ingest stores each chunk's `page_path` and `anchor`, and the answer composes the URL
from BOOK_BASE_URL at answer time, so a new base never needs a re-ingest. The rules follow each generator's
own code (checked against their sources, not from memory):

- Docusaurus (default): number prefixes (`03-`, `03_`, `03.`, `3 - `) stripped from every path segment by its
  default number-prefix parser, which leaves date- and version-like names (`2021-01-31-x`, `1.2-x`) alone;
  `index`, `README` (any case) or a file named like its folder serve the folder; front-matter `slug` (absolute
  from the docs root, or relative to the file's folder) and `id` (replaces the file name) honoured. Heading ids:
  github-slugger over the heading's text, `-1`, `-2` for repeats in a page, `{#custom-id}` as written.
- MkDocs (`use_directory_urls`, its default): `page.md` -> `page/`, `index.md` / `README.md` -> the folder;
  heading ids by Python-Markdown's toc `slugify` and `unique` (the library MkDocs runs), repeats `_1`, `_2`.
- mdBook: `page.md` -> `page.html`, `README.md` (any case) -> `index.html`; heading ids by its `normalize_id`
  (ASCII letters lowercased, others kept), repeats `-1`, `-2`.
- html: the file's own path (`ch01.xhtml`); Markdown files as `.html` beside it. Heading ids are the elements'
  own `id` attributes (the loader reads them); Markdown headings use the github-slugger rule.

Files that are not Markdown (PDF, DOCX, text, HTML under the other styles) keep their own path: the site serves
them as files.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from urllib.parse import quote, urljoin, urlsplit

from markdown.extensions.toc import slugify as toc_slugify
from markdown.extensions.toc import unique as toc_unique

STYLES = ("docusaurus", "mkdocs", "mdbook", "html")
MARKDOWN_SUFFIXES = frozenset({".md", ".mdx", ".markdown"})

# Docusaurus' DefaultNumberPrefixParser (plugin-content-docs/src/numberPrefix.ts).
_DATE_LIKE = r"^((\d{2}|\d{4})[-_.]\d{2}([-_.](\d{2}|\d{4}))?)(.*)$"
_VERSION_LIKE = r"^(\d+[-_.]\d+)(.*)$"
_IGNORED_PREFIX = re.compile(f"{_DATE_LIKE}|{_VERSION_LIKE}", re.DOTALL)
_NUMBER_PREFIX = re.compile(r"^(?P<number>\d+)(?P<separator>\s*[-_.]+\s*)(?P<suffix>.*)$", re.DOTALL)

# Docusaurus' parseMarkdownHeadingId (@docusaurus/utils): the id may hold anything but `{#` and `}`, and must
# end the heading. MDX needs the braces escaped (`\{#id\}`), which Docusaurus' own tooling writes.
_CUSTOM_ID = re.compile(r"\s*\\?\{#(?P<id>(?:.(?!\{#|\\?\}))*.)\\?\}$", re.DOTALL)

# Inline Markdown reduced to the text a reader sees (what mdast-util-to-string and the toc extension read).
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)|\[([^\]]*)\]\[[^\]]*\]")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>|<!--.*?-->", re.DOTALL)
_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_EMPHASIS = re.compile(r"(\*\*|\*|~~)(?=\S)(.+?)(?<=\S)\1|(?<!\w)(__|_)(?=\S)(.+?)(?<=\S)\3(?!\w)", re.DOTALL)
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'", "&nbsp;": "\u00a0"}

# github-slugger removes these Unicode general categories (script/generate-regex.mjs), except `-`, ` ` and
# alphabetic characters that sit in them (circled letters: Other_Symbol but Alphabetic; told here by their name).
_SLUGGER_REMOVED = frozenset({"No", "Pe", "Pf", "Pi", "Ps", "Po", "Pd", "Sm", "Sc", "Sk", "So"})
_SLUGGER_REMOVED_ALL = frozenset({"Cc", "Co", "Cf", "Cn", "Cs", "Zs", "Zl", "Zp"})


def _check_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"unknown site style {style!r}: use one of {', '.join(STYLES)}")
    return style


def strip_number_prefix(name: str) -> str:
    """`03-planting` -> `planting`, as Docusaurus' default parser does; `2021-01-31-x` and `1.2-x` stay."""
    if _IGNORED_PREFIX.match(name):
        return name
    match = _NUMBER_PREFIX.match(name)
    return match.group("suffix") if match else name


def _front_matter_str(front_matter: Mapping[str, object] | None, key: str) -> str | None:
    value = (front_matter or {}).get(key)
    if value is None or isinstance(value, dict | list):
        return None
    return str(value).strip() or None


def _resolve(relative: str, folder: str) -> str:
    """Resolve a slug against a folder path (`/a/b/`), as the resolve-pathname package Docusaurus uses does."""
    return urlsplit(urljoin("http://site" + folder, relative)).path


def _docusaurus_path(path: PurePosixPath, front_matter: Mapping[str, object] | None) -> str:
    folders = path.parent.parts
    folder = "/" if not folders else "/" + "/".join(strip_number_prefix(p) for p in folders) + "/"
    slug = _front_matter_str(front_matter, "slug")
    if slug is not None and slug.startswith("/"):
        resolved = slug
    elif slug is None and path.stem.lower() in {"index", "readme", *(f.lower() for f in folders[-1:])}:
        resolved = folder
    else:
        base = slug or _front_matter_str(front_matter, "id") or strip_number_prefix(path.stem)
        resolved = _resolve(base, folder)
    return resolved.lstrip("/")


def page_path(relative_path: str, front_matter: Mapping[str, object] | None = None, style: str = "docusaurus") -> str:
    """The site-relative path of the page built from `relative_path` (a path inside the book's root folder).

    Docusaurus: `03-planting.md` -> `planting`, `guide/index.md` -> `guide/`, root index -> ``.
    """
    _check_style(style)
    path = PurePosixPath(relative_path.replace("\\", "/").lstrip("/"))
    suffix = path.suffix.lower()
    if style == "html":
        if suffix in MARKDOWN_SUFFIXES:
            return str(path.with_suffix(".html"))
        return str(path)
    if suffix not in MARKDOWN_SUFFIXES:
        return str(path)
    if style == "docusaurus":
        return _docusaurus_path(path, front_matter)
    folder = "" if str(path.parent) == "." else f"{path.parent}/"
    if style == "mkdocs":
        if path.stem == "index" or path.stem == "README":
            return folder
        return f"{folder}{path.stem}/"
    # mdbook
    if path.stem.lower() in {"readme", "index"}:
        return f"{folder}index.html"
    return f"{folder}{path.stem}.html"


def split_custom_id(heading: str) -> tuple[str, str | None]:
    """`"Depth and Width {#deep}"` -> `("Depth and Width", "deep")`; a heading without one -> `(heading, None)`."""
    match = _CUSTOM_ID.search(heading)
    if not match:
        return heading, None
    return heading[: match.start()], match.group("id").strip()


def heading_text(heading: str) -> str:
    """The text a reader sees in a Markdown heading: emphasis, code spans, links, images and tags reduced."""
    kept: list[str] = []

    def keep(value: str) -> str:
        kept.append(value)
        return f"\x00{len(kept) - 1}\x00"

    # Code spans and backslash escapes are literal text: set them aside before reading any markup.
    text = _CODE.sub(lambda m: keep(m.group(2).strip() or m.group(2)), heading)
    text = _ESCAPE.sub(lambda m: keep(m.group(1)), text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _HTML_TAG.sub("", text)
    previous = None
    while previous != text:
        previous, text = text, _EMPHASIS.sub(lambda m: m.group(2) if m.group(1) else m.group(4), text)
    for entity, char in _ENTITIES.items():
        text = text.replace(entity, char)
    return re.sub("\x00(\\d+)\x00", lambda m: kept[int(m.group(1))], text).strip()


def github_slug(text: str) -> str:
    """github-slugger's `slug()` (v2): lowercase, drop punctuation, symbols and controls, spaces to `-`."""
    kept = []
    for char in text.lower():
        if char in "- ":
            kept.append(char)
            continue
        category = unicodedata.category(char)
        if category in _SLUGGER_REMOVED_ALL:
            continue
        if category in _SLUGGER_REMOVED and not (category == "So" and " LETTER " in unicodedata.name(char, "")):
            continue
        kept.append(char)
    return "".join(kept).replace(" ", "-")


def mkdocs_slug(text: str) -> str:
    """MkDocs' heading id: Python-Markdown's own toc `slugify` with MkDocs' defaults (separator `-`, ASCII only)."""
    return str(toc_slugify(text, "-"))


def mdbook_slug(text: str) -> str:
    """mdBook's `normalize_id`: alphanumerics, `_` and `-` kept (ASCII ones lowercased), whitespace to `-`."""
    out = []
    for char in text.strip():
        if char.isalnum() or char in "_-":
            out.append(char.lower() if char.isascii() else char)
        elif char.isspace():
            out.append("-")
    return "".join(out)


def heading_slugs(headings: Sequence[str], style: str = "docusaurus") -> list[str]:
    """The ids the site gives a page's headings, in document order (repeats numbered as the site numbers them).

    A `{#custom-id}` is used as written and, as on each generator, does not count as a repeat of a generated id.
    """
    _check_style(style)
    parsed = [split_custom_id(h) for h in headings]
    slugs: list[str] = []
    if style == "mkdocs":
        # The toc extension first collects ids set by attr_list, then makes the others unique against them.
        used = {custom for _, custom in parsed if custom}
        for text, custom in parsed:
            if custom:
                slugs.append(custom)
                continue
            slugs.append(str(toc_unique(mkdocs_slug(heading_text(text)), used)))
        return slugs
    if style == "mdbook":
        counts: dict[str, int] = {}
        for text, custom in parsed:
            if custom:
                slugs.append(custom)
                continue
            slug = mdbook_slug(heading_text(text))
            seen = counts.get(slug, 0)
            counts[slug] = seen + 1
            slugs.append(slug if seen == 0 else f"{slug}-{seen}")
        return slugs
    # github-slugger's BananaSlug.slug(): a repeat gets the next free `-n`, counted per original slug.
    occurrences: dict[str, int] = {}
    for text, custom in parsed:
        if custom:
            slugs.append(custom)
            continue
        original = slug = github_slug(heading_text(text))
        while slug in occurrences:
            occurrences[original] += 1
            slug = f"{original}-{occurrences[original]}"
        occurrences[slug] = 0
        slugs.append(slug)
    return slugs


def page_url(base_url: str, page_path: str, anchor: str | None) -> str:
    """`page_url("https://x/docs/", "planting", "depth-and-width")` -> `https://x/docs/planting#depth-and-width`.

    The path and anchor are percent-encoded where a URL needs it (spaces, non-ASCII); the base is used as given,
    with a `/` added so that the page goes under it rather than beside it.
    """
    base = base_url if base_url.endswith("/") else base_url + "/"
    url = base + quote(page_path.lstrip("/"), safe="/:@!$&'()*+,;=-._~%")
    if anchor:
        url += "#" + quote(anchor, safe="/:@!$&'()*+,;=-._~?%")
    return url


def section_url(base_url: object | None, metadata: Mapping[str, object]) -> str | None:
    """Where a stored chunk's section is on the book's site: BOOK_BASE_URL + its `page_path` + `#anchor`.

    None without a base URL or without a page (a reader's selection, a file outside the book's root, or a chunk
    stored before page paths were). Composed per answer, so a new base needs no re-ingest.
    """
    path = metadata.get("page_path")
    if not base_url or not isinstance(path, str):
        return None
    anchor = metadata.get("anchor")
    return page_url(str(base_url), path, anchor if isinstance(anchor, str) else None)
