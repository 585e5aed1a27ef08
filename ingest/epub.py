"""Read an EPUB into its chapters, in the spine's reading order, titled from the book's navigation.

The EPUB itself is read by ebooklib (its OPF, manifest, spine, and the EPUB 3 nav or, without one, the EPUB 2
NCX); each chapter's XHTML then goes through the same HTML partitioning as a `.xhtml` file, so its headings and
their `id`s become blocks as they would there. A publisher's page (title page, imprint, colophon, licence, as
its `epub:type` says) is left out. Each chapter is its own source in the store (`book.epub/` + its path in the
book, `walden.epub/text/economy.xhtml`), with a digest of its own bytes, so that a changed chapter replaces only
itself.

An EPUB is a zip, and this runs on files nobody checked: before ebooklib opens it, the archive's directory is
read and refused when it is DRM-protected (rights.xml, an LCP licence, FairPlay's sinf.xml, or an
encryption.xml that encrypts more than the fonts obfuscated under the IDPF or Adobe font algorithms), when a
member's name is absolute or climbs out with `..`, or when the members' declared sizes add up past the limits
(zipfile stops reading a member at its declared size, so the declared sizes bound what is inflated). Runs in the
parse worker's child like every loader (`ingest.parse_worker`), within the same `IngestLimits`.

ebooklib is AGPL-3.0-or-later; it is imported here only, when an EPUB is read.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote
from xml.etree import ElementTree

from chains.errors import DocumentError
from ingest.loaders import DEFAULT_LIMITS, IngestLimits, LoadedDocument, html_blocks

logger = logging.getLogger(__name__)

BOOK_SUFFIXES = frozenset({".epub"})
# Encryption that only obfuscates embedded fonts (the text stays readable): the IDPF's and Adobe's.
FONT_OBFUSCATION = frozenset({"http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC"})
# Files that only a DRM scheme puts in META-INF: Adobe ADEPT, Readium LCP, Apple FairPlay.
DRM_FILES = {
    "META-INF/rights.xml": "Adobe DRM (META-INF/rights.xml)",
    "META-INF/license.lcpl": "Readium LCP DRM (META-INF/license.lcpl)",
    "META-INF/sinf.xml": "Apple FairPlay DRM (META-INF/sinf.xml)",
}
_ENCRYPTION = "META-INF/encryption.xml"
_CONTAINER = "META-INF/container.xml"
_OCF = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_XMLENC = "{http://www.w3.org/2001/04/xmlenc#}"
# Members read as text (their declared sizes count against INGEST_MAX_INFLATED_BYTES); images, fonts and audio
# are stored already compressed, so they inflate to about their size in the archive.
_TEXT_MEMBERS = frozenset({".xhtml", ".html", ".htm", ".xml", ".opf", ".ncx", ".css", ".svg", ".smil", ".txt", ""})
_DRIVE = re.compile(r"^[A-Za-z]:")
# The `epub:type`s (EPUB Structural Semantics) of a publisher's pages rather than the book's text: a title page,
# an imprint or colophon, a licence; read from the chapter's <body> and its first <section>, left out.
PUBLISHER_PAGES = frozenset(
    {"cover", "titlepage", "halftitlepage", "seriespage", "imprint", "colophon", "copyright-page", "toc", "landmarks"}
)
_EPUB_TYPE = re.compile(r"<(?:body|section)\b[^>]*?\bepub:type\s*=\s*[\"']([^\"']*)[\"']", re.IGNORECASE)


@dataclass(slots=True)
class Chapter:
    """One spine item: its path in the book (relative to the OPF's folder), its document (None when its digest
    was among the `known` ones: not parsed), and a digest of its path, nav title and bytes."""

    name: str
    document: LoadedDocument | None
    digest: str
    position: int  # in the spine, from 0


@dataclass(slots=True)
class LoadedBook:
    path: Path
    title: str | None
    chapters: list[Chapter] = field(default_factory=list)


def is_book(path: Path | str) -> bool:
    """Whether a file is read as a book of several sources (an EPUB) rather than as one document."""
    return PurePosixPath(str(path)).suffix.lower() in BOOK_SUFFIXES


def part_source(book_source: str, name: str) -> str:
    """The source of a book's chapter: `book.epub/text/chapter-1.xhtml`."""
    return f"{book_source}/{name}"


def is_part_of(source: str, book_source: str) -> bool:
    return source.startswith(book_source + "/")


def _unsafe_name(name: str) -> bool:
    return (
        name.startswith(("/", "\\"))
        or bool(_DRIVE.match(name))
        or "\x00" in name
        or ".." in PurePosixPath(name.replace("\\", "/")).parts
    )


def _encrypted_parts(path: Path, data: bytes) -> list[str]:
    """The parts that META-INF/encryption.xml encrypts with anything but a font obfuscation."""
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise DocumentError(
            str(path), f"{_ENCRYPTION} cannot be read ({exc}), so whether its content is encrypted is unknown"
        ) from exc
    encrypted: list[str] = []
    for entry in root.iter(f"{_XMLENC}EncryptedData"):
        method = entry.find(f"{_XMLENC}EncryptionMethod")
        algorithm = method.get("Algorithm", "") if method is not None else ""
        if algorithm in FONT_OBFUSCATION:
            continue
        reference = entry.find(f"{_XMLENC}CipherData/{_XMLENC}CipherReference")
        encrypted.append(unquote(reference.get("URI", "?")) if reference is not None else "?")
    return encrypted


def _package_path(path: Path, data: bytes) -> str:
    """The OPF's path inside the zip, as META-INF/container.xml names it."""
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise DocumentError(str(path), f"{_CONTAINER} cannot be read ({exc})") from exc
    for rootfile in root.iter(f"{_OCF}rootfile"):
        if rootfile.get("media-type") == "application/oebps-package+xml" and rootfile.get("full-path"):
            return posixpath.normpath(unquote(str(rootfile.get("full-path"))))
    raise DocumentError(str(path), f"{_CONTAINER} names no package (.opf) file")


def check_archive(path: Path, limits: IngestLimits = DEFAULT_LIMITS) -> None:
    """Refuse, before any parser sees it, an EPUB that is not a zip, is DRM-protected, names a path outside
    itself, or declares more than the limits let it inflate to."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            limits.check_elements(path, len(members), "files in the archive")
            text = total = 0
            for info in members:
                if _unsafe_name(info.filename):
                    raise DocumentError(
                        str(path), f"a file inside the EPUB has an unsafe path ({info.filename!r}); not read"
                    )
                total += info.file_size
                if PurePosixPath(info.filename).suffix.lower() in _TEXT_MEMBERS:
                    text += info.file_size
                limits.check_inflated(path, text, info.filename)
                limits.check_inflated(path, total - path.stat().st_size, info.filename)
            names = {info.filename for info in members}
            for name, scheme in DRM_FILES.items():
                if name in names:
                    raise DocumentError(str(path), f"DRM-protected: {scheme}; only DRM-free EPUBs can be ingested")
            if _ENCRYPTION in names:
                encrypted = _encrypted_parts(path, archive.read(_ENCRYPTION))
                if encrypted:
                    shown = ", ".join(encrypted[:3]) + (", ..." if len(encrypted) > 3 else "")
                    raise DocumentError(
                        str(path),
                        f"DRM-protected: {_ENCRYPTION} encrypts {len(encrypted)} part(s) ({shown}); only DRM-free "
                        "EPUBs can be ingested",
                    )
            if _CONTAINER not in names:
                raise DocumentError(str(path), f"not an EPUB: it has no {_CONTAINER}")
            package = _package_path(path, archive.read(_CONTAINER))
            if package not in names:
                raise DocumentError(str(path), f"its package file {package!r}, named by {_CONTAINER}, is missing")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DocumentError(str(path), f"not a readable EPUB: a broken or truncated zip ({exc})") from exc
    except OSError as exc:
        raise DocumentError(str(path), f"cannot read the file ({exc.strerror or exc})") from exc


def publisher_page(markup: str) -> str | None:
    """The structural type that marks a chapter as a publisher's page (`colophon`), or None for the book's text."""
    for match in list(_EPUB_TYPE.finditer(markup, 0, 20_000))[:2]:
        kinds = PUBLISHER_PAGES.intersection(match.group(1).split())
        if kinds:
            return sorted(kinds)[0]
    return None


def _nav_titles(toc: Any, base: str) -> dict[str, str]:
    """The first title the navigation gives each file (by its path relative to the OPF), depth first."""
    from ebooklib import epub

    titles: dict[str, str] = {}

    def visit(entries: Any) -> None:
        for entry in entries:
            if isinstance(entry, tuple):  # (Section, children)
                visit([entry[0]])
                visit(entry[1])
                continue
            if not isinstance(entry, epub.Link | epub.Section):
                continue
            href = unquote(str(getattr(entry, "href", "") or "")).split("#", 1)[0]
            title = " ".join(str(entry.title or "").split())
            if href and title:
                titles.setdefault(posixpath.normpath(posixpath.join(base, href)), title)

    visit(toc or [])
    return titles


def _read(path: Path) -> Any:
    try:
        from ebooklib import epub
    except ImportError as exc:  # the `epub` extra is not installed
        raise DocumentError(
            str(path), "reading EPUB needs the optional ebooklib package: pip install 'bookrag[epub]'"
        ) from exc
    try:
        return epub.read_epub(str(path), {"ignore_ncx": True})  # EPUB 3 nav when there is one, else the NCX
    except DocumentError:
        raise
    except zipfile.BadZipFile as exc:  # a member that does not match its declared size or checksum
        raise DocumentError(str(path), f"not a readable EPUB: a damaged part in the zip ({exc})") from exc
    except Exception as exc:  # ebooklib raises EpubException, KeyError, lxml and index errors for a broken book
        missing = re.search(r"named '([^']+)'", str(exc)) if isinstance(exc, KeyError) else None
        if missing:
            reason = f"not a readable EPUB: the part {missing.group(1)!r} that its package file names is missing"
        else:
            detail = getattr(exc, "msg", None) or str(exc) or "no detail"
            reason = (
                f"not a readable EPUB: its package file or navigation is malformed ({type(exc).__name__}: {detail})"
            )
        raise DocumentError(str(path), reason) from exc


def load_epub(
    path: Path, limits: IngestLimits = DEFAULT_LIMITS, salt: str = "", known: frozenset[str] = frozenset()
) -> LoadedBook:
    """The book's chapters in spine order, each a document titled from the navigation; raises `DocumentError`
    naming the file and the problem when it is DRM-protected, broken or over a limit.

    Each chapter's digest starts from `salt` (the indexer's split settings); a chapter whose digest is in `known`
    (stored whole already) is not partitioned, so a changed EPUB costs the parsing of its changed chapters only.
    """
    check_archive(path, limits)
    book = _read(path)
    from ebooklib import epub  # present: _read said so

    ncx = next((item for item in book.get_items() if isinstance(item, epub.EpubNcx)), None)
    has_nav = any(isinstance(item, epub.EpubNav) for item in book.get_items())
    # Nav hrefs come back relative to the OPF's folder; an NCX's as written, relative to the NCX file.
    titles = _nav_titles(book.toc, "" if has_nav or ncx is None else posixpath.dirname(ncx.get_name()))
    loaded = LoadedBook(path, str(book.title).strip() or None if book.title else None)
    chars = 0
    seen: set[str] = set()
    inherited: str | None = None  # the last title the nav gave, for a part it does not list (a split chapter)
    for idref, _linear in book.spine:
        item = book.get_item_with_id(idref)
        if not isinstance(item, epub.EpubHtml) or not item.is_chapter() or item.get_name() in seen:
            continue  # the nav document, a cover page, an image or a repeat
        seen.add(item.get_name())
        # Its path relative to the OPF's folder (as the nav names it); a file beside that folder keeps the rest.
        name = "/".join(p for p in PurePosixPath(posixpath.normpath(item.get_name())).parts if p != "..")
        nav_title = titles.get(posixpath.normpath(item.get_name()))
        inherited = nav_title or inherited
        content = bytes(item.content)
        parts = [salt.encode(), name.encode(), (nav_title or "").encode(), (inherited or "").encode(), content]
        digest = hashlib.sha256(b"\x00".join(parts)).hexdigest()[:32]
        try:
            markup = content.decode("utf-8-sig")
            kind = publisher_page(markup)
            if kind is not None:
                logger.debug("%s: %s is a publisher's page (%s), left out", path, name, kind)
                continue
            if digest in known:
                loaded.chapters.append(Chapter(name, None, digest, len(loaded.chapters)))
                continue
            blocks = html_blocks(path, markup, limits)
        except UnicodeDecodeError as exc:
            raise DocumentError(str(path), f"chapter {name} is not UTF-8 text (byte {exc.start})") from exc
        except DocumentError as exc:
            raise DocumentError(str(path), f"chapter {name}: {exc.reason}") from exc
        if not blocks:
            logger.debug("%s: no text in chapter %s, left out", path, name)
            continue
        chars += sum(len(b.text) for b in blocks)
        limits.check_chars(path, chars)
        first_heading = next((b.text for b in blocks if b.kind == "heading"), None)
        title = nav_title or first_heading or inherited or PurePosixPath(name).stem.replace("-", " ").replace("_", " ")
        document = LoadedDocument(Path(name), title, blocks)
        loaded.chapters.append(Chapter(name, document, digest, len(loaded.chapters)))
    if not loaded.chapters:
        raise DocumentError(str(path), "no text found in the book's spine")
    return loaded
