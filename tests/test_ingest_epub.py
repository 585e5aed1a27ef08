"""EPUB ingest: real EPUB files built here (ebooklib's writer, or zipfile for the broken and DRM-marked ones),
ingested with the real embedding model into a real Qdrant: spine order, chapter titles from the navigation, one
source per chapter, a changed chapter re-embedded alone, a removed chapter gone, and bad EPUBs named as failed
while the rest of the run goes in."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from ebooklib import epub
from langchain_core.embeddings import Embeddings
from qdrant_client import QdrantClient

from chains.catalogue import match_source
from chains.embeddings import LocalEmbeddings
from chains.errors import DocumentError
from chains.settings import Settings
from chains.vectorstore import build_qdrant_client, ensure_collection
from ingest.epub import load_epub
from ingest.indexer import Indexer, IngestReport
from ingest.loaders import IngestLimits
from tests.conftest import app_client
from tests.test_ingest import stored
from tests.test_ingest_cli import run_cli

pytestmark = pytest.mark.integration

# (file name, title in the nav, body); the spine reads them in SPINE order, not by file name.
CHAPTERS = {
    "a-planting.xhtml": (
        "Planting a Young Tree",
        "<h1>Planting</h1><p>Dig the planting hole twice as wide as the root ball but no deeper than the roots, "
        "so that the graft union sits well above the soil.</p><h2 id='staking'>Staking</h2><p>Stake a young tree "
        "low on the windward side and loosen the tie every spring so that the bark is never cut.</p>",
    ),
    "b-pruning.xhtml": (
        "Pruning in Winter",
        "<h1>Pruning</h1><p>Prune apple and pear trees in late winter, while they are dormant, cutting just above "
        "an outward-facing bud. Plums and cherries are pruned in summer instead, against silver leaf.</p>",
    ),
    "c-watering.xhtml": (
        "Watering Through the First Summer",
        "<h1>Watering</h1><p>A newly planted tree needs about twenty litres of water a week through its first "
        "summer, given at once rather than a little every day, so that the roots grow deep.</p>",
    ),
}
SPINE = ["c-watering.xhtml", "a-planting.xhtml", "b-pruning.xhtml"]


def write_epub(path: Path, chapters: dict[str, tuple[str, str]] = CHAPTERS, spine: list[str] = SPINE) -> Path:
    """An EPUB 3 (with an EPUB 2 NCX beside its nav) written by ebooklib, chapters in `spine` order."""
    book = epub.EpubBook()
    book.set_identifier("orchard-handbook")
    book.set_title("The Orchard Handbook")
    book.set_language("en")
    items = {}
    for name, (title, body) in chapters.items():
        item = epub.EpubHtml(title=title, file_name=f"text/{name}", lang="en")
        item.content = f"<html><head><title>{title}</title></head><body>{body}</body></html>"
        book.add_item(item)
        items[name] = item
    book.toc = [items[name] for name in spine]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *(items[name] for name in spine)]
    epub.write_epub(str(path), book)
    return path


def rewrite_zip(source: Path, target: Path, extra: dict[str, bytes]) -> Path:
    """A copy of the EPUB `source` with `extra` members added (or replaced)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            if info.filename not in extra:
                new.writestr(info, old.read(info.filename))
        for name, data in extra.items():
            new.writestr(name, data)
    return target


def encryption_xml(uri: str, algorithm: str) -> bytes:
    return (
        '<?xml version="1.0"?><encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
        'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>'
        f'<enc:EncryptionMethod Algorithm="{algorithm}"/><enc:CipherData><enc:CipherReference URI="{uri}"/>'
        "</enc:CipherData></enc:EncryptedData></encryption>"
    ).encode()


class CountingEmbeddings(Embeddings):
    """The session's real model, keeping the texts given to `embed_documents` (the calls ingest makes: chunks and,
    for sentence re-scoring, their sentences)."""

    def __init__(self, model: LocalEmbeddings) -> None:
        self.model, self.texts, self.seen = model, 0, list[str]()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.texts += len(texts)
        self.seen.extend(texts)
        return self.model.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.model.embed_query(text)

    def count_tokens(self, text: str) -> int:
        return self.model.count_tokens(text)


def ingest(client: QdrantClient, embeddings: Any, settings: Settings, book: Path, prune: bool = False) -> IngestReport:
    ensure_collection(client, settings, 384)
    indexer = Indexer(client, embeddings, settings, embeddings.count_tokens)
    return indexer.ingest([book], book.parent, prune=prune)


def by_source(client: QdrantClient, settings: Settings) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for payload in stored(client, settings).values():
        found.setdefault(payload["metadata"]["source"], []).append(payload)
    return found


def test_chapters_go_in_in_spine_order_titled_from_the_nav(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, tmp_path: Path
) -> None:
    book = write_epub(tmp_path / "orchard.epub")
    report = ingest(qdrant, embeddings, settings, book)
    assert not report.failed
    assert [f.source for f in report.files] == [f"orchard.epub/text/{name}" for name in SPINE]
    chunks = by_source(qdrant, settings)
    assert set(chunks) == {f"orchard.epub/text/{name}" for name in SPINE}
    for position, name in enumerate(SPINE):
        for payload in chunks[f"orchard.epub/text/{name}"]:
            meta = payload["metadata"]
            assert meta["chapter"] == CHAPTERS[name][0]  # the nav's title, not the file name nor the <h1>
            assert meta["spine_index"] == position and meta["book"] == "The Orchard Handbook"
            assert "page_path" not in meta  # an EPUB has no page on the book's site
    staking = next(p for p in chunks["orchard.epub/text/a-planting.xhtml"] if "windward" in p["page_content"])
    assert staking["metadata"]["heading_path"][-1] == "Staking" and staking["metadata"]["anchor"] == "staking"


async def test_search_and_answers_cite_the_chapter_and_filter_by_the_book(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, tmp_path: Path
) -> None:
    ingest(qdrant, embeddings, settings, write_epub(tmp_path / "orchard.epub"))
    async for _, client in app_client(settings, embeddings, qdrant):
        found = await client.post("/search", json={"query": "How wide should the planting hole be?", "k": 2})
        assert found.status_code == 200, found.text
        top = found.json()["results"][0]["metadata"]
        assert top["source"] == "orchard.epub/text/a-planting.xhtml"
        assert top["chapter"] == "Planting a Young Tree" and top["url"] is None
        asked = await client.post("/ask", json={"question": "When should apple trees be pruned?"})
        assert asked.status_code == 200, asked.text
        sources = asked.json()["sources"]
        assert sources[0]["source"] == "orchard.epub/text/b-pruning.xhtml"
        assert sources[0]["heading_path"][0] == "Pruning in Winter"
        whole_book = await client.post("/search", json={"query": "water", "sources": ["orchard.epub"], "k": 5})
        assert whole_book.status_code == 200 and len(whole_book.json()["results"]) == 3
        by_chapter = await client.post("/search", json={"query": "trees", "chapter": "pruning in winter"})
        assert {r["metadata"]["source"] for r in by_chapter.json()["results"]} == {"orchard.epub/text/b-pruning.xhtml"}
    known = ["orchard.epub/text/a-planting.xhtml", "orchard.epub/text/b-pruning.xhtml", "notes.md"]
    assert match_source("orchard.epub", known) == known[:2]


def test_unchanged_epub_costs_nothing_and_a_changed_chapter_is_embedded_alone(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, tmp_path: Path
) -> None:
    counting = CountingEmbeddings(embeddings)
    book = write_epub(tmp_path / "orchard.epub")
    first = ingest(qdrant, counting, settings, book)
    assert first.embedded == len(stored(qdrant, settings)) > 0
    before = stored(qdrant, settings)

    counting.texts = 0
    again = ingest(qdrant, counting, settings, book)
    assert again.embedded == 0 and counting.texts == 0
    assert not any(f.parsed for f in again.files)  # the EPUB's hash matched: not even opened
    assert stored(qdrant, settings) == before

    changed = dict(CHAPTERS)
    changed["b-pruning.xhtml"] = (
        "Pruning in Winter",
        "<h1>Pruning</h1><p>Prune quince trees lightly in winter, taking out crossing branches only.</p>",
    )
    write_epub(book, changed)
    counting.seen.clear()
    report = ingest(qdrant, counting, settings, book)
    outcomes = {f.source: f for f in report.files}
    pruning = outcomes["orchard.epub/text/b-pruning.xhtml"]
    assert pruning.updated == 1 and pruning.parsed
    for name in ("a-planting.xhtml", "c-watering.xhtml"):
        assert not outcomes[f"orchard.epub/text/{name}"].changed
        assert not outcomes[f"orchard.epub/text/{name}"].parsed  # its own hash matched: not split again
    texts = [p["page_content"] for p in by_source(qdrant, settings)["orchard.epub/text/b-pruning.xhtml"]]
    assert report.embedded == 1  # the changed chapter's one chunk, no other
    assert counting.seen and all("quince" in t or t in texts[0] for t in counting.seen)  # it and its sentences
    assert any("quince" in t for t in texts) and not any("apple and pear" in t for t in texts)
    kept = {k: v for k, v in stored(qdrant, settings).items() if "b-pruning" not in v["metadata"]["source"]}
    assert set(kept) <= set(before)  # the other chapters' points are the same points, re-stamped only

    third = ingest(qdrant, counting, settings, book)
    assert third.embedded == 0 and not any(f.parsed for f in third.files)


def test_a_chapter_removed_from_the_epub_disappears(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, tmp_path: Path
) -> None:
    book = write_epub(tmp_path / "orchard.epub")
    ingest(qdrant, embeddings, settings, book)
    shorter = {k: v for k, v in CHAPTERS.items() if k != "c-watering.xhtml"}
    write_epub(book, shorter, [s for s in SPINE if s in shorter])
    report = ingest(qdrant, embeddings, settings, book)
    gone = next(f for f in report.files if f.source == "orchard.epub/text/c-watering.xhtml")
    assert gone.removed >= 1 and not report.failed
    assert set(by_source(qdrant, settings)) == {
        "orchard.epub/text/a-planting.xhtml",
        "orchard.epub/text/b-pruning.xhtml",
    }
    assert "twenty litres" not in "\n".join(p["page_content"] for p in stored(qdrant, settings).values())


def test_broken_and_drm_epubs_are_named_as_failed_while_the_rest_goes_in(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "shelf"
    folder.mkdir()
    good = write_epub(folder / "orchard.epub")
    (folder / "notes.md").write_text("# Notes\n\nMulch keeps the soil moist around a young tree.\n")
    data = good.read_bytes()
    (folder / "truncated.epub").write_bytes(data[: len(data) // 2])
    rewrite_zip(good, folder / "adept.epub", {"META-INF/rights.xml": b"<rights/>"})
    aes = "http://www.w3.org/2001/04/xmlenc#aes128-cbc"
    rewrite_zip(good, folder / "locked.epub", {"META-INF/encryption.xml": encryption_xml("EPUB/text/a.xhtml", aes)})
    fonts = encryption_xml("EPUB/fonts/serif.otf", "http://www.idpf.org/2008/embedding")
    rewrite_zip(good, folder / "fonts.epub", {"META-INF/encryption.xml": fonts})  # obfuscated fonts: not DRM
    result = run_cli(settings, str(folder), "-q")
    assert result.exit_code == 1, result.output
    errors = result.stderr
    assert "failed: truncated.epub: not a readable EPUB: a broken or truncated zip" in errors
    assert "failed: adept.epub: DRM-protected: Adobe DRM (META-INF/rights.xml)" in errors
    assert (
        "failed: locked.epub: DRM-protected: META-INF/encryption.xml encrypts 1 part(s) (EPUB/text/a.xhtml)" in errors
    )
    assert "fonts.epub" not in errors and "orchard.epub" not in errors
    assert "(3 failed," in result.stdout
    client = build_qdrant_client(settings)
    try:
        sources = {p["metadata"]["source"] for p in stored(client, settings).values()}
    finally:
        client.close()
    assert "notes.md" in sources
    assert {f"orchard.epub/text/{n}" for n in SPINE} | {f"fonts.epub/text/{n}" for n in SPINE} <= sources
    assert not any(s.startswith(("truncated", "adept", "locked")) for s in sources)


def test_a_failing_epub_keeps_its_stored_chapters_even_with_prune(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, tmp_path: Path
) -> None:
    book = write_epub(tmp_path / "orchard.epub")
    ingest(qdrant, embeddings, settings, book)
    before = stored(qdrant, settings)
    book.write_bytes(book.read_bytes()[:200])  # a copy cut short on the way
    report = ingest(qdrant, embeddings, settings, book, prune=True)
    assert [f.source for f in report.failed] == ["orchard.epub"] and not report.pruned_sources
    assert stored(qdrant, settings) == before


def test_zip_bombs_unsafe_paths_and_non_epubs_are_refused_before_parsing(tmp_path: Path) -> None:
    good = write_epub(tmp_path / "orchard.epub")
    bomb = rewrite_zip(good, tmp_path / "bomb.epub", {"EPUB/text/a-planting.xhtml": b" " * (4 * 1024 * 1024)})
    assert bomb.stat().st_size < 100_000
    with pytest.raises(DocumentError, match=r"inflate past 1,048,576 bytes.*INGEST_MAX_INFLATED_BYTES"):
        load_epub(bomb, IngestLimits(max_inflated_bytes=1024 * 1024))
    # A member that lies about its size: zipfile stops at the declared 1,000 bytes, and the checksum fails.
    liar = rewrite_zip(good, tmp_path / "liar.epub", {"EPUB/text/a-planting.xhtml": b" " * (4 * 1024 * 1024)})
    data = bytearray(liar.read_bytes())
    name = b"EPUB/text/a-planting.xhtml"
    for signature, offset, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = data.find(signature)
        while data[at + name_at : at + name_at + len(name)] != name:
            at = data.find(signature, at + 4)
        data[at + offset : at + offset + 4] = (1000).to_bytes(4, "little")
    liar.write_bytes(bytes(data))
    with pytest.raises(DocumentError, match="not a readable EPUB: a damaged part in the zip"):
        load_epub(liar, IngestLimits(max_inflated_bytes=1024 * 1024))
    climbing = rewrite_zip(good, tmp_path / "climbing.epub", {"../../etc/cron.d/x": b"x"})
    with pytest.raises(DocumentError, match=r"unsafe path \('../../etc/cron.d/x'\)"):
        load_epub(climbing)
    plain = tmp_path / "plain.epub"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("readme.txt", "not a book")
    with pytest.raises(DocumentError, match=r"not an EPUB: it has no META-INF/container\.xml"):
        load_epub(plain)
    missing = tmp_path / "missing.epub"
    with zipfile.ZipFile(good) as old, zipfile.ZipFile(missing, "w") as new:
        for info in old.infolist():
            if info.filename != "EPUB/text/b-pruning.xhtml":
                new.writestr(info, old.read(info.filename))
    with pytest.raises(DocumentError, match=r"the part 'EPUB/text/b-pruning\.xhtml' that its package file names is"):
        load_epub(missing)
    no_opf = tmp_path / "no-opf.epub"
    with zipfile.ZipFile(good) as old, zipfile.ZipFile(no_opf, "w") as new:
        for info in old.infolist():
            if info.filename != "EPUB/content.opf":
                new.writestr(info, old.read(info.filename))
    with pytest.raises(DocumentError, match=r"package file 'EPUB/content\.opf', named by META-INF/container\.xml, is"):
        load_epub(no_opf)


def test_an_epub2_book_takes_its_chapter_titles_from_the_ncx(tmp_path: Path) -> None:
    """No EPUB 3 nav: the NCX (here in a subfolder, its hrefs relative to itself) names the chapters; the
    imprint, marked by its epub:type, is left out, and a part the NCX does not list keeps the title before it."""
    opf = (
        '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="2.0" unique-identifier="id">'
        '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Old Orchard</dc:title>'
        '<dc:identifier id="id">old-1</dc:identifier><dc:language>en</dc:language></metadata><manifest>'
        '<item id="ncx" href="nav/toc.ncx" media-type="application/x-dtbncx+xml"/>'
        '<item id="one" href="one.html" media-type="application/xhtml+xml"/>'
        '<item id="two" href="two.html" media-type="application/xhtml+xml"/>'
        '<item id="imprint" href="imprint.html" media-type="application/xhtml+xml"/>'
        '<item id="more" href="two-split.html" media-type="application/xhtml+xml"/></manifest>'
        '<spine toc="ncx"><itemref idref="imprint"/><itemref idref="two"/><itemref idref="more"/>'
        '<itemref idref="one"/></spine></package>'
    )
    ncx = (
        '<?xml version="1.0"?><ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" version="2005-1"><navMap>'
        '<navPoint id="p1"><navLabel><text>Grafting by Hand</text></navLabel><content src="../one.html"/></navPoint>'
        '<navPoint id="p2"><navLabel><text>Choosing Rootstock</text></navLabel><content src="../two.html"/>'
        "</navPoint></navMap></ncx>"
    )
    page = '<html xmlns="http://www.w3.org/1999/xhtml"><body><h1>{}</h1><p>{}</p></body></html>'
    path = tmp_path / "old.epub"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        archive.writestr(
            "META-INF/container.xml",
            '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
            '<rootfiles><rootfile full-path="OPS/book.opf" media-type="application/oebps-package+xml"/>'
            "</rootfiles></container>",
        )
        archive.writestr("OPS/book.opf", opf)
        archive.writestr("OPS/nav/toc.ncx", ncx)
        archive.writestr("OPS/one.html", page.format("One", "A whip-and-tongue graft joins scion and stock."))
        archive.writestr("OPS/two.html", page.format("Two", "A dwarfing rootstock keeps a tree small."))
        archive.writestr(  # the rest of chapter two, split off into a file of its own that the NCX does not list
            "OPS/two-split.html",
            '<html xmlns="http://www.w3.org/1999/xhtml"><body><p>Seedling stock grows a full-sized tree.</p>'
            "</body></html>",
        )
        archive.writestr(  # a publisher's page, marked as such: not part of the book's text
            "OPS/imprint.html",
            '<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops"><body>'
            '<section epub:type="imprint"><p>Typeset by the Orchard Press.</p></section></body></html>',
        )
    book = load_epub(path)
    assert book.title == "Old Orchard"
    assert [(c.name, c.document.title) for c in book.chapters] == [
        ("two.html", "Choosing Rootstock"),
        ("two-split.html", "Choosing Rootstock"),
        ("one.html", "Grafting by Hand"),
    ]


def test_a_deleted_epub_is_pruned_with_its_folder_and_deleted_by_its_name(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "shelf"
    folder.mkdir()
    write_epub(folder / "orchard.epub")
    write_epub(folder / "second.epub")
    assert run_cli(settings, str(folder), "-q").exit_code == 0
    (folder / "second.epub").unlink()
    pruned = run_cli(settings, str(folder), "--prune", "-q")
    assert pruned.exit_code == 0, pruned.output
    assert all(f"pruned second.epub/text/{name}" in pruned.stdout for name in SPINE)
    deleted = run_cli(settings, "--delete", "orchard.epub", "-q")
    assert deleted.exit_code == 0, deleted.output
    client = build_qdrant_client(settings)
    try:
        assert stored(client, settings) == {}
    finally:
        client.close()


def test_chapters_whose_digest_is_known_are_not_parsed_again(tmp_path: Path) -> None:
    book = write_epub(tmp_path / "orchard.epub")
    first = load_epub(book, salt="settings-1")
    assert all(c.document is not None for c in first.chapters)
    known = frozenset({first.chapters[0].digest})
    again = load_epub(book, salt="settings-1", known=known)
    assert again.chapters[0].document is None and again.chapters[0].digest == first.chapters[0].digest
    assert all(c.document is not None for c in again.chapters[1:])
    resalted = load_epub(book, salt="settings-2", known=known)  # other split settings: every chapter read again
    assert all(c.document is not None for c in resalted.chapters)


def test_without_the_epub_extra_an_epub_fails_naming_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ebooklib (AGPL) is the optional `epub` extra: a deployment without it gets a failure it can act on.
    good = write_epub(tmp_path / "orchard.epub")
    monkeypatch.setitem(sys.modules, "ebooklib", None)  # what `import ebooklib` meets when it is not installed
    monkeypatch.setitem(sys.modules, "ebooklib.epub", None)
    with pytest.raises(DocumentError, match=r"needs the optional ebooklib package: pip install 'bookrag\[epub\]'"):
        load_epub(good)
