"""Split a loaded document into chunks that follow its headings.

Blocks are grouped into sections by heading; a section's blocks are packed into chunks of at most `chunk_size`
(counted by the given function: the embedding model's own tokens, since that is where it truncates, or
characters when CHUNK_SIZE_UNIT=chars), carrying whole trailing paragraphs
as overlap. Code blocks and tables stay whole unless one alone is larger than a chunk. Sections too small to
stand alone are merged into the next one. Each chunk knows its heading path, and its embedding text starts with
that path, which helps a passage match a question that names its chapter or section. Each chunk also knows where
it lives on the book's site: its page path and the id of its deepest heading (chains/site_urls.py), computed over
the whole document so that repeated headings are numbered as the site numbers them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_text_splitters import RecursiveCharacterTextSplitter

from chains.site_urls import heading_slugs, split_custom_id
from ingest.loaders import MARKDOWN_SUFFIXES, Block, LoadedDocument

TokenCounter = Callable[[str], int]
_JOINER = "\n\n"


@dataclass(frozen=True, slots=True)
class SplitOptions:
    chunk_size: int = 256
    chunk_overlap: int = 48
    min_section_tokens: int = 48


@dataclass(slots=True)
class Section:
    heading_path: list[str]
    blocks: list[Block] = field(default_factory=list)
    anchor: str | None = None  # the site's id of the deepest heading in `heading_path`


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    embed_text: str
    metadata: dict[str, Any]


def approximate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about four characters a token), for remote embedding models."""
    return max(1, len(text) // 4)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def render_block(block: Block) -> str:
    if block.kind == "code":
        return f"```\n{block.text}\n```"
    return block.text


def heading_anchors(document: LoadedDocument, style: str = "docusaurus") -> list[str | None]:
    """The site's id of each heading block, in order: the generator's slugger over a Markdown document's headings
    (all of them, so repeats are numbered as on the site), an HTML heading's own `id`, else none.

    Docusaurus counts an H1 in its slugger but renders it without an id (its theme's Heading drops it: the H1 is
    the page title), so a chunk under the H1 alone links to the page itself.
    """
    headings = [b for b in document.blocks if b.kind == "heading"]
    if document.path.suffix.lower() in MARKDOWN_SUFFIXES:
        slugs = heading_slugs([b.text for b in headings], style)
        if style == "docusaurus":
            return [None if b.level == 1 else slug for b, slug in zip(headings, slugs, strict=True)]
        return list(slugs)
    return [b.anchor for b in headings]


def sections_of(document: LoadedDocument, style: str = "docusaurus") -> list[Section]:
    """Group blocks under the heading path they sit in (the document title is the root when it has no `#`).

    Headings are shown without their `{#custom-id}`; each section keeps the anchor of its deepest heading.
    """
    title = split_custom_id(document.title)[0] if document.title else None
    root = [title] if title else []
    anchors = iter(heading_anchors(document, style))
    stack: list[tuple[int, str, str | None]] = []
    sections = [Section(list(root))]
    for block in document.blocks:
        if block.kind != "heading":
            sections[-1].blocks.append(block)
            continue
        while stack and stack[-1][0] >= block.level:
            stack.pop()
        stack.append((block.level, split_custom_id(block.text)[0], next(anchors)))
        path = [text for _, text, _ in stack]
        if root and path[0] != root[0]:
            path = root + path
        # The deepest heading the site gives an id (an HTML heading without one links to its parent's).
        sections.append(Section(path, anchor=next((a for _, _, a in reversed(stack) if a), None)))
    with_text = [s for s in sections if s.blocks]
    if not with_text and stack:
        # Only headings: unstructured, without part-of-speech tags, takes short plain-text lines for titles.
        return [Section(list(root), [Block("text", b.text, page=b.page) for b in document.blocks])]
    return with_text


def merge_small_sections(sections: list[Section], count: TokenCounter, min_tokens: int) -> list[Section]:
    """Fold a section with little text into the next one, keeping the first one's headings in the text."""
    merged: list[Section] = []
    pending: Section | None = None
    for section in sections:
        if pending is not None:
            section = Section(section.heading_path, _titled(pending) + section.blocks, section.anchor)
            pending = None
        size = sum(count(render_block(b)) for b in section.blocks)
        if size < min_tokens:
            pending = section
        else:
            merged.append(section)
    if pending is not None:
        if merged:  # the last section, too small, goes with the one before: its heading stays in the text
            merged[-1].blocks.extend(_titled(pending))
        else:
            merged.append(pending)
    return merged


def _titled(section: Section) -> list[Block]:
    """A section folded into another: its heading as a line of text, then its blocks."""
    heading = [Block("text", section.heading_path[-1])] if section.heading_path else []
    return heading + section.blocks


@dataclass(frozen=True, slots=True)
class Piece:
    """A block's text (or a part of one), its size, and the PDF page it was read from."""

    text: str
    tokens: int
    page: int | None = None


def pieces_of(section: Section, count: TokenCounter, options: SplitOptions) -> list[Piece]:
    """The section's blocks as pieces, with any block larger than a chunk cut recursively."""
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=options.chunk_size,
        chunk_overlap=options.chunk_overlap,
        length_function=count,
        separators=["\n\n", "\n", ". ", "; ", ", ", " ", ""],
        keep_separator="end",  # a cut part ends with its full stop rather than the next one starting with ". "
    )
    pieces: list[Piece] = []
    for block in section.blocks:
        text = render_block(block)
        tokens = count(text)
        if tokens <= options.chunk_size:
            pieces.append(Piece(text, tokens, block.page))
        else:
            pieces.extend(Piece(part, count(part), block.page) for part in splitter.split_text(text))
    return pieces


def pack(pieces: list[Piece], options: SplitOptions, joiner: int = 0) -> list[tuple[str, int | None]]:
    """Pack pieces into chunks up to `chunk_size`, starting each new chunk with trailing pieces as overlap.

    `joiner` is the size of the blank line between two pieces (2 in characters, 0 in most tokenizers). Each
    chunk comes with the page of its first piece: where a reader finds the chunk's first words.
    """
    chunks: list[tuple[str, int | None]] = []
    current: list[Piece] = []
    size = 0
    for piece in pieces:
        if current and size + joiner + piece.tokens > options.chunk_size:
            chunks.append((_JOINER.join(p.text for p in current), current[0].page))
            carry: list[Piece] = []
            carried = 0
            for previous in reversed(current):
                cost = previous.tokens + (joiner if carry else 0)
                if (
                    carried + cost > options.chunk_overlap
                    or carried + cost + joiner + piece.tokens > options.chunk_size
                ):
                    break
                carry.insert(0, previous)
                carried += cost
            current, size = carry, carried
        size += piece.tokens + (joiner if current else 0)
        current.append(piece)
    if current:
        chunks.append((_JOINER.join(p.text for p in current), current[0].page))
    return chunks


def json_safe(value: Any) -> Any:
    """Front matter as JSON the store accepts: dates and other scalars become strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def split_document(
    document: LoadedDocument,
    source: str,
    count: TokenCounter,
    options: SplitOptions,
    page_path: str | None = None,
    style: str = "docusaurus",
) -> list[Chunk]:
    """All chunks of one document, numbered in reading order, with the metadata a frontend links back with.

    `page_path` (the page on the book's site) and each chunk's `anchor` are stored; the URL is not, since it is
    composed from BOOK_BASE_URL per answer. Front matter (Markdown, MDX) rides along under `front_matter`.
    """
    chunks: list[Chunk] = []
    front_matter = json_safe(document.metadata) if document.metadata else None
    sections = merge_small_sections(sections_of(document, style), count, options.min_section_tokens)
    for section in sections:
        path = section.heading_path
        for text, page in pack(pieces_of(section, count, options), options, count(_JOINER)):
            metadata: dict[str, Any] = {
                "source": source,
                "title": split_custom_id(document.title)[0] if document.title else document.title,
                "chapter": path[0] if path else document.title,
                "heading_path": path,
                "section": " > ".join(path),
                "chunk_index": len(chunks),
                "content_hash": content_hash(text),
            }
            if page is not None:
                metadata["page"] = page
            if page_path is not None:
                metadata["page_path"] = page_path
            if section.anchor:
                metadata["anchor"] = section.anchor
            if front_matter:
                metadata["front_matter"] = front_matter
            embed_text = f"{' > '.join(path)}\n\n{text}" if path else text
            chunks.append(Chunk(text, embed_text, metadata))
    return chunks
