"""Turn one file into a flat list of blocks (headings, text, code, tables) with `unstructured` (PDF with pypdf).

Markdown and MDX are cleaned before partitioning: YAML front matter becomes metadata, MDX `import`/`export`
lines and JSX tags are dropped (their inner text is kept), fenced code stays as code. Every failure is a
`DocumentError` naming the file and the reason, so that ingest can report it and go on.

`IngestLimits` bound what a file decompresses into, checked while it is read: a PDF's page count first, then
each page's content inflated under a byte budget (pypdf's own decoding limits set to what is left) before its
text is extracted, and the characters so far; a DOCX's zip members by their declared sizes and its paragraphs
counted in a stream of `word/document.xml`, before `unstructured` parses it; the text of other formats before
partitioning, their elements after. Time and memory are bounded by the child process that runs this
(`ingest.parse_worker`).
"""

from __future__ import annotations

import html
import logging
import re
import zipfile
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal

import yaml

from chains.errors import DocumentError
from chains.settings import Settings
from ingest.offline_nlp import install_offline_nlp

logger = logging.getLogger(__name__)

BlockKind = Literal["heading", "text", "code", "table"]
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mdx"})
HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
# An EPUB is a book of several sources, read chapter by chapter by `ingest.epub.load_epub`.
SUPPORTED_SUFFIXES = frozenset(MARKDOWN_SUFFIXES | HTML_SUFFIXES | {".txt", ".text", ".rst", ".pdf", ".docx", ".epub"})
_TEXT_SUFFIXES = SUPPORTED_SUFFIXES - {".pdf", ".docx", ".epub"}
_MAX_FILE_BYTES = 200 * 1024 * 1024

_FRONT_MATTER = re.compile(r"\A\ufeff?---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_FENCE = re.compile(r"^\s*(```|~~~)")
_MDX_ESM = re.compile(r"^(import|export)\s")
_JSX_LINE = re.compile(r"^\s*</?[A-Z][\w.]*(\s[^<>]*)?/?>\s*$")
_JSX_INLINE = re.compile(r"</?[A-Z][\w.]*(\s[^<>]*)?/?>")
_XML_DECLARATION = re.compile(r"\A\ufeff?\s*<\?xml[^>]*\?>\s*")
# A figure's caption is the book's own text ("Amblyrynchus Demarlii: a species of lizard found on ..."), while the
# HTML partitioner leaves out all of a <figure>: the figure is read as its caption's paragraph.
_FIGURE = re.compile(r"<figure\b[^>]*>(.*?)</figure\s*>", re.IGNORECASE | re.DOTALL)
_FIGCAPTION = re.compile(r"<figcaption\b[^>]*>(.*?)</figcaption\s*>", re.IGNORECASE | re.DOTALL)
# A page of links only: a table of contents or a list of illustrations, as a book's XHTML folder holds them.
_NAVIGATION = re.compile(r"<nav\b[^>]*>", re.IGNORECASE)
_NAVIGATION_TYPE = re.compile(r"\bepub:type\s*=\s*[\"']([^\"']*)[\"']", re.IGNORECASE)
_NAVIGATION_NAMES = {"loi": "a list of illustrations", "lot": "a list of tables", "toc": "a table of contents"}
_MDX_COMMENT = re.compile(r"\{/\*.*?\*/\}", re.DOTALL)
# A fence's info string past the language (Docusaurus' ```md title="x" {1-4}, mdBook's ```rust,ignore), which
# Python-Markdown's fenced code does not accept: the fence then goes unseen and the code in it is read as Markdown
# (its `# lines` as headings), and the next fence opens a block that swallows the text and headings after it.
_FENCE_LINE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$", re.MULTILINE)
_FENCE_LANGUAGE = re.compile(r"[\w#.+-]*")
# mdBook's preprocessor directives ({{#include ../listings/ch02/src/main.rs:here}}): on the site they become the
# included file, which a folder of chapters does not hold; left in, their paths would be read as the passage's words.
_MDBOOK_DIRECTIVE = re.compile(r"\{\{#(?:include|rustdoc_include|playground|playpen|title)\b[^}\n]*\}\}")


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """What one file may decompress into (see the INGEST_MAX_* settings); the defaults are the settings'."""

    max_pages: int = 5000
    max_chars: int = 10_000_000
    max_inflated_bytes: int = 32 * 1024 * 1024
    max_elements: int = 50_000
    max_chunks: int = 10_000
    max_seconds: float = 300.0
    max_parser_mb: int = 2048

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestLimits:
        return cls(
            settings.ingest_max_pages,
            settings.ingest_max_chars,
            settings.ingest_max_inflated_bytes,
            settings.ingest_max_elements,
            settings.ingest_max_chunks_per_file,
            settings.ingest_max_seconds_per_file,
            settings.ingest_max_parser_mb,
        )

    def over(self, path: Path, what: str, limit: int, setting: str) -> DocumentError:
        return DocumentError(str(path), f"{what}: over the limit of {limit:,} ({setting}); not ingested")

    def check_chars(self, path: Path, chars: int) -> None:
        if chars > self.max_chars:
            raise self.over(
                path, f"more than {self.max_chars:,} characters of text", self.max_chars, "INGEST_MAX_CHARS"
            )

    def check_elements(self, path: Path, count: int, what: str = "elements") -> None:
        if count > self.max_elements:
            raise self.over(path, f"more than {self.max_elements:,} {what}", self.max_elements, "INGEST_MAX_ELEMENTS")

    def check_inflated(self, path: Path, inflated: int, part: str) -> None:
        if inflated > self.max_inflated_bytes:
            raise self.over(
                path,
                f"its compressed parts inflate past {self.max_inflated_bytes:,} bytes (at {part})",
                self.max_inflated_bytes,
                "INGEST_MAX_INFLATED_BYTES",
            )


DEFAULT_LIMITS = IngestLimits()


@dataclass(frozen=True, slots=True)
class Block:
    kind: BlockKind
    text: str
    level: int = 0  # heading depth, 1 for a top title
    page: int | None = None
    anchor: str | None = None  # an HTML heading's own `id` (Markdown heading ids are computed by the splitter)


@dataclass(slots=True)
class LoadedDocument:
    path: Path
    title: str | None
    blocks: list[Block]
    metadata: dict[str, Any] = field(default_factory=dict)


def read_text(path: Path) -> str:
    """The file as UTF-8 text, refusing binary content whatever its extension says."""
    raw = path.read_bytes()
    if not raw.strip():
        raise DocumentError(str(path), "the file is empty")
    if b"\x00" in raw[:8192]:
        raise DocumentError(str(path), "binary content in a text file (NUL bytes); is the extension right?")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(str(path), f"not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    try:
        data = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError:
        data = {}
    return (data if isinstance(data, dict) else {}), text[match.end() :]


def plain_fences(text: str) -> str:
    """Code fences reduced to their language, so that every fence the site sees is a fence here too."""

    def plain(match: re.Match[str]) -> str:
        info = match["info"].strip()
        language = _FENCE_LANGUAGE.match(info)
        kept = language[0] if language else ""
        return match[0] if info == kept else match["fence"] + kept

    return _FENCE_LINE.sub(plain, text)


def strip_mdx(text: str) -> str:
    """Drop MDX imports/exports, JSX tags and comments outside code fences; keep everything else."""
    text = _MDX_COMMENT.sub("", text)
    kept: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            kept.append(line)
            continue
        if in_fence:
            kept.append(line)
            continue
        if _MDX_ESM.match(line) or _JSX_LINE.match(line):
            continue
        kept.append(_JSX_INLINE.sub("", line))
    return "\n".join(kept)


class _TableText(HTMLParser):
    """Renders an HTML table as pipe-separated rows, which embeds and reads better than flattened cells."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_text(element_text: str, text_as_html: str | None) -> str:
    if not text_as_html:
        return element_text
    parser = _TableText()
    parser.feed(text_as_html)
    rows = [row for row in parser.rows if any(row)]
    if not rows:
        return element_text
    return "\n".join("| " + " | ".join(html.unescape(c) for c in row) + " |" for row in rows)


def blocks_from_elements(elements: list[Any]) -> list[Block]:
    """Map unstructured's elements to blocks; Title elements become headings at their depth."""
    blocks: list[Block] = []
    for element in elements:
        text = (element.text or "").strip()
        if not text:
            continue
        category = getattr(element, "category", type(element).__name__)
        meta = element.metadata
        page = getattr(meta, "page_number", None)
        if category == "Title":
            depth = getattr(meta, "category_depth", None)
            blocks.append(Block("heading", text, level=(depth or 0) + 1, page=page))
        elif category == "CodeSnippet":
            blocks.append(Block("code", element.text.strip("\n"), page=page))
        elif category == "Table":
            blocks.append(Block("table", table_text(text, getattr(meta, "text_as_html", None)), page=page))
        elif category in ("PageBreak", "Header", "Footer", "Image"):
            continue
        else:
            blocks.append(Block("text", text, page=page))
    return blocks


@dataclass(frozen=True)
class HtmlHeading:
    text: str  # the heading's own text
    anchor: str | None  # its `id`, else its section's (below)
    lines: tuple[str, ...] = ()  # its `<hgroup>`'s lines in order, itself among them ("I", "Variation Under ...")

    @property
    def title(self) -> str:
        return ": ".join(self.lines) if self.lines else self.text


class _HtmlHeadings(HTMLParser):
    """Each `<h1>`..`<h6>` of an HTML page in order, with what a reader's link and a source's title need.

    The anchor is the heading's own `id`, else the `id` of the `<section>` or `<article>` it is the first heading
    of: Standard Ebooks and many generated books put the id on the section, not on the heading. The other lines of
    an `<hgroup>` (a chapter's "I" and its title "Variation Under Domestication") are part of its title.
    """

    _CONTAINERS = frozenset({"section", "article"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.headings: list[HtmlHeading] = []
        self._containers: list[list[str | None]] = []  # open sections: [id, or None once a heading took it]
        self._hgroup: list[str] | None = None  # the lines of the open <hgroup>; its heading is `_hgroup_at`
        self._hgroup_at: int | None = None
        self._open: tuple[str, str | None, list[str]] | None = None  # a heading or an hgroup's <p> being read

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        own_id = dict(attrs).get("id") or None
        heading = re.fullmatch(r"h[1-6]", tag) is not None
        if self._open is not None and self._open[0] == "p" and (tag == "p" or heading):
            self._finish()  # an hgroup line left open (HTML allows `<p>` without `</p>`)
        if tag in self._CONTAINERS:
            self._containers.append([own_id])
        elif tag == "hgroup":
            self._hgroup, self._hgroup_at = [], None
        elif self._open is None and (heading or (tag == "p" and self._hgroup is not None)):
            if heading and self._containers:
                section = self._containers[-1]
                own_id = own_id or section[0]
                section[0] = None  # a section's id belongs to its first heading only
            self._open = (tag, own_id, [])

    def handle_endtag(self, tag: str) -> None:
        if self._open is not None and tag == self._open[0]:
            self._finish()
        elif tag == "hgroup" and self._hgroup is not None:
            if self._open is not None and self._open[0] == "p":
                self._finish()
            if self._hgroup_at is not None:
                heading = self.headings[self._hgroup_at]
                if len(self._hgroup) > 1:
                    self.headings[self._hgroup_at] = replace(heading, lines=tuple(self._hgroup))
            self._hgroup, self._hgroup_at = None, None
        elif tag in self._CONTAINERS and self._containers:
            self._containers.pop()

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[2].append(data)

    def _finish(self) -> None:
        """Close the heading or hgroup line being read."""
        assert self._open is not None
        tag, anchor, parts = self._open
        text = " ".join("".join(parts).split())
        if tag == "p":
            if self._hgroup is not None and text:
                self._hgroup.append(text)
        else:
            if self._hgroup is not None and self._hgroup_at is None:
                self._hgroup_at = len(self.headings)
                self._hgroup.append(text)
            self.headings.append(HtmlHeading(text, anchor))
        self._open = None


def html_headings(markup: str) -> list[HtmlHeading]:
    parser = _HtmlHeadings()
    parser.feed(markup)
    parser.close()
    return parser.headings


def with_html_headings(blocks: list[Block], markup: str) -> list[Block]:
    """Give each heading block its anchor (unstructured's elements do not carry ids) and its `<hgroup>`'s other
    lines ("I" becomes "I: Variation Under Domestication"; those lines' own text blocks are dropped), matching
    the page's headings by text in order. A heading block matching none (a title guessed from text) is kept as is."""
    headings = html_headings(markup)
    position = 0
    result: list[Block] = []
    dropping: set[str] = set()  # the other hgroup lines of the heading just matched, while their blocks follow
    for block in blocks:
        text = " ".join(block.text.split())
        if dropping and text in dropping:
            dropping.discard(text)
            continue
        dropping = set()
        if block.kind == "heading":
            match = next((i for i in range(position, len(headings)) if headings[i].text == text), None)
            if match is not None:
                position = match + 1
                heading = headings[match]
                others = set(heading.lines) - {heading.text}
                if others:
                    before = result[-1] if result else None
                    if before is not None and " ".join(before.text.split()) in others:
                        result.pop()  # a line above its heading ("Book One" over "Chapter 1")
                    block = replace(block, text=heading.title)
                    dropping = others
                block = replace(block, anchor=heading.anchor)
        result.append(block)
    return result


def _partition(kind: str, **kwargs: Any) -> list[Any]:
    install_offline_nlp()
    if kind == "md":
        from unstructured.partition.md import partition_md

        return list(partition_md(**kwargs))
    if kind == "html":
        from unstructured.partition.html import partition_html

        return list(partition_html(**kwargs))
    if kind == "docx":
        from unstructured.partition.docx import partition_docx

        return list(partition_docx(**kwargs))
    from unstructured.partition.text import partition_text

    return list(partition_text(**kwargs))


def _checked_elements(path: Path, elements: list[Any], limits: IngestLimits) -> list[Block]:
    limits.check_elements(path, len(elements))
    blocks = blocks_from_elements(elements)
    limits.check_chars(path, sum(len(b.text) for b in blocks))
    return blocks


def html_blocks(path: Path, markup: str, limits: IngestLimits = DEFAULT_LIMITS) -> list[Block]:
    """An HTML or XHTML page's blocks, its headings with their own `id`s (an EPUB's chapters come here too)."""
    limits.check_chars(path, len(markup))
    markup = _XML_DECLARATION.sub("", markup, count=1)  # XHTML's <?xml ...?>
    markup = _FIGURE.sub(figure_caption, markup)
    return with_html_headings(_checked_elements(path, _partition("html", text=markup), limits), markup)


def figure_caption(figure: re.Match[str]) -> str:
    """A figure as the paragraph of its caption (nothing when it has none, as the partitioner reads it)."""
    caption = _FIGCAPTION.search(figure.group(1))
    return f"<p>{caption.group(1)}</p>" if caption else ""


def navigation_page(markup: str) -> str | None:
    """What a page of navigation is ("a list of illustrations", by its `<nav epub:type="loi">`), or None when the
    page has no `<nav>`."""
    nav = _NAVIGATION.search(markup)
    if nav is None:
        return None
    kind = _NAVIGATION_TYPE.search(nav.group(0))
    names = [_NAVIGATION_NAMES[k] for k in (kind.group(1).split() if kind else []) if k in _NAVIGATION_NAMES]
    return names[0] if names else "a page of navigation"


def read_limited_text(path: Path, limits: IngestLimits) -> str:
    text = read_text(path)
    limits.check_chars(path, len(text))
    return text


def load_markdown(path: Path, limits: IngestLimits = DEFAULT_LIMITS) -> LoadedDocument:
    front_matter, body = split_front_matter(read_limited_text(path, limits))
    body = plain_fences(_MDBOOK_DIRECTIVE.sub("", body))
    if path.suffix.lower() == ".mdx":
        body = strip_mdx(body)
    if not body.strip():
        raise DocumentError(str(path), "no text after the front matter")
    blocks = _checked_elements(path, _partition("md", text=body), limits)
    title = front_matter.get("title")
    return LoadedDocument(path, str(title) if title else None, blocks, front_matter)


def _page_content_bytes(page: Any, budget: int) -> int:
    """How many bytes the page's content streams inflate to, decoding each under pypdf's limits set to `budget`
    (so a bomb stops at the budget instead of inflating in full); the text extraction reuses the decoded data."""
    from pypdf import apply_configuration
    from pypdf.errors import LimitReachedError

    contents = page.get("/Contents")
    if contents is None:
        return 0
    contents = contents.get_object()
    streams = list(contents) if isinstance(contents, list) else [contents]
    inflated = 0
    for stream in streams:
        limit = max(budget - inflated, 0) + 1
        with apply_configuration(
            zlib_maximum_output_length=limit,
            lzw_maximum_output_length=limit,
            run_length_maximum_output_length=limit,
            array_based_stream_maximum_output_length=limit,
            brotli_maximum_output_length=limit,
            stream_decoding_work_maximum_length=limit,
        ):
            try:
                inflated += len(stream.get_object().get_data())
            except LimitReachedError:
                return budget + 1
        if inflated > budget:
            break
    return inflated


def load_pdf(path: Path, limits: IngestLimits = DEFAULT_LIMITS) -> LoadedDocument:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(str(path))
        count = len(reader.pages)
        if count > limits.max_pages:
            raise limits.over(path, f"{count:,} pages", limits.max_pages, "INGEST_MAX_PAGES")
        pages: list[tuple[int, str]] = []
        inflated = chars = 0
        for number, page in enumerate(reader.pages, start=1):
            inflated += _page_content_bytes(page, limits.max_inflated_bytes - inflated)
            limits.check_inflated(path, inflated, f"page {number}")
            text = page.extract_text() or ""
            chars += len(text)
            limits.check_chars(path, chars)
            pages.append((number, text))
        info_title = reader.metadata.title if reader.metadata else None
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise DocumentError(str(path), f"not a readable PDF ({type(exc).__name__}: {exc})") from exc
    blocks = [Block("text", text.strip(), page=number) for number, text in pages if text.strip()]
    if not blocks:
        raise DocumentError(str(path), "no extractable text (a scanned PDF needs OCR first)")
    return LoadedDocument(path, str(info_title) if info_title else None, blocks)


_PARAGRAPH_TAGS = (b"<w:p>", b"<w:p ", b"<w:tbl>", b"<w:tbl ")


def check_docx_parts(path: Path, limits: IngestLimits) -> None:
    """Before parsing: the zip's members by their declared sizes (zipfile stops a member at its declared
    size), then the paragraphs and tables of the main part, counted in a stream of it."""
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = 0
            for info in archive.infolist():
                inflated += info.file_size
                limits.check_inflated(path, inflated, info.filename)
            try:
                part = archive.open("word/document.xml")
            except KeyError:
                return  # python-docx says what is wrong with it
            count, tail = 0, b""
            with part:
                while chunk := part.read(1024 * 1024):
                    window = tail + chunk
                    count += sum(window.count(tag) for tag in _PARAGRAPH_TAGS)
                    tail = window[-7:]  # a tag cut by the chunk border is counted in the next window ...
                    count -= sum(tail.count(tag) for tag in _PARAGRAPH_TAGS)  # ... and only there
                    limits.check_elements(path, count, "paragraphs and tables")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise DocumentError(str(path), f"not a readable DOCX ({type(exc).__name__})") from exc


def load_docx(path: Path, limits: IngestLimits = DEFAULT_LIMITS) -> LoadedDocument:
    if path.stat().st_size == 0:
        raise DocumentError(str(path), "the file is empty")
    check_docx_parts(path, limits)
    try:
        elements = _partition("docx", filename=str(path))
    except Exception as exc:  # python-docx raises zipfile/KeyError/ValueError... for a broken file
        raise DocumentError(str(path), f"not a readable DOCX ({type(exc).__name__})") from exc
    return LoadedDocument(path, None, _checked_elements(path, elements, limits))


def load_document(path: Path, limits: IngestLimits = DEFAULT_LIMITS) -> LoadedDocument:
    """Load one file within `limits`, or raise `DocumentError` saying why it cannot be."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise DocumentError(str(path), f"unsupported file type {suffix or '(none)'!r} (supported: {supported})")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DocumentError(str(path), f"cannot read the file ({exc.strerror or exc})") from exc
    if size > _MAX_FILE_BYTES:
        raise DocumentError(str(path), f"the file is larger than {_MAX_FILE_BYTES // (1024 * 1024)} MiB")
    try:
        if suffix in MARKDOWN_SUFFIXES:
            document = load_markdown(path, limits)
        elif suffix == ".pdf":
            document = load_pdf(path, limits)
        elif suffix == ".docx":
            document = load_docx(path, limits)
        elif suffix in HTML_SUFFIXES:
            markup = read_limited_text(path, limits)
            document = LoadedDocument(path, None, html_blocks(path, markup, limits))
            if not document.blocks and (navigation := navigation_page(markup)):
                raise DocumentError(
                    str(path), f"{navigation}: links to the book's pages, no text of its own (--exclude leaves it out)"
                )
        elif suffix == ".epub":
            raise DocumentError(str(path), "an EPUB holds several chapters: read it with ingest.epub.load_epub")
        else:
            assert suffix in _TEXT_SUFFIXES
            elements = _partition("text", text=read_limited_text(path, limits))
            document = LoadedDocument(path, None, _checked_elements(path, elements, limits))
    except PermissionError as exc:
        raise DocumentError(str(path), "permission denied") from exc
    except OSError as exc:
        raise DocumentError(str(path), f"cannot read the file ({exc.strerror or exc})") from exc
    if not document.blocks:
        raise DocumentError(str(path), "no text found in the file")
    if document.title is None:
        first_heading = next((b.text for b in document.blocks if b.kind == "heading"), None)
        document.title = first_heading or path.stem.replace("-", " ").replace("_", " ")
    return document
