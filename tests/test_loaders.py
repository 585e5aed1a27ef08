"""Loading every supported format offline, and a clear reason for every file that cannot be loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from chains.errors import DocumentError
from ingest.loaders import load_document, split_front_matter, strip_mdx
from ingest.splitter import SplitOptions, split_document


def minimal_pdf(pages: list[str]) -> bytes:
    """A valid PDF with one line of Helvetica text a page, written by hand (no PDF writer needed)."""
    objects: list[bytes] = []
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    font_id = 3 + 2 * len(pages)
    for i, text in enumerate(pages):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def test_markdown_headings_code_and_tables_become_blocks(tmp_path: Path) -> None:
    path = tmp_path / "ch1.md"
    path.write_text(
        "---\ntitle: Soil Basics\nsidebar_position: 1\n---\n\n# Soil\n\nLoam is best.\n\n## Testing\n\n"
        "```python\nph = read_ph()\nprint(ph)\n```\n\n| soil | ph |\n|---|---|\n| loam | 6.5 |\n",
        encoding="utf-8",
    )
    document = load_document(path)
    assert document.title == "Soil Basics"
    assert document.metadata["sidebar_position"] == 1
    kinds = [(b.kind, b.level) for b in document.blocks]
    assert kinds[0] == ("heading", 1) and ("heading", 2) in kinds
    code = next(b for b in document.blocks if b.kind == "code")
    assert "ph = read_ph()" in code.text and "print(ph)" in code.text
    table = next(b for b in document.blocks if b.kind == "table")
    assert "| loam | 6.5 |" in table.text


def test_mdx_imports_and_jsx_are_dropped_but_inner_text_kept(tmp_path: Path) -> None:
    path = tmp_path / "intro.mdx"
    path.write_text(
        "---\ntitle: Intro\n---\nimport Callout from '@site/src/Callout';\n\n# Intro\n\n<Callout type=\"tip\">\n"
        "Graft in early spring.\n</Callout>\n\n```jsx\n<Keep />\n```\n",
        encoding="utf-8",
    )
    text = " ".join(b.text for b in load_document(path).blocks)
    assert "import" not in text and "Callout" not in text
    assert "Graft in early spring." in text
    assert "<Keep />" in text  # code stays code


def test_strip_mdx_leaves_fenced_code_alone() -> None:
    source = "import X from 'x'\n```\nimport os\n<Tag/>\n```\n<Tag/>\ntext"
    assert strip_mdx(source) == "```\nimport os\n<Tag/>\n```\ntext"


def test_front_matter_that_is_not_a_mapping_is_ignored() -> None:
    assert split_front_matter("---\n- a\n- b\n---\nbody") == ({}, "body")


def test_html_text_and_docx_load_with_headings(tmp_path: Path) -> None:
    html = tmp_path / "page.html"
    html.write_text("<html><body><h1>Harvest</h1><p>Pick when the fruit lifts off easily.</p></body></html>")
    txt = tmp_path / "notes.txt"
    txt.write_text("Storage notes\n\nKeep apples cool and dark, at about three degrees.\n")
    from docx import Document as Docx

    docx_doc = Docx()
    docx_doc.add_heading("Pests", 1)
    docx_doc.add_paragraph("Codling moth larvae tunnel into apples in midsummer.")
    docx_path = tmp_path / "pests.docx"
    docx_doc.save(str(docx_path))

    loaded_html = load_document(html)
    assert loaded_html.title == "Harvest"
    assert any("lifts off easily" in b.text for b in loaded_html.blocks)
    assert any("three degrees" in b.text for b in load_document(txt).blocks)
    loaded_docx = load_document(docx_path)
    assert loaded_docx.blocks[0].kind == "heading" and loaded_docx.blocks[0].text == "Pests"
    assert any("Codling moth" in b.text for b in loaded_docx.blocks)


def test_pdf_pages_keep_their_page_numbers(tmp_path: Path) -> None:
    path = tmp_path / "book.pdf"
    path.write_bytes(minimal_pdf(["Chapter one is about roots.", "Chapter two is about leaves."]))
    blocks = load_document(path).blocks
    assert [(b.page, "roots" in b.text, "leaves" in b.text) for b in blocks] == [(1, True, False), (2, False, True)]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.md", b"", "empty"),
        ("blank.txt", b"  \n\n ", "empty"),
        ("binary.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("latin1.txt", "caf\xe9 au lait".encode("latin-1"), "UTF-8"),
        ("broken.pdf", b"%PDF-1.4\nthis is not really a pdf", "PDF"),
        ("broken.docx", b"PK\x03\x04 not a zip really", "DOCX"),
        ("image.png", b"\x89PNG", "unsupported file type"),
        ("front-only.md", b"---\ntitle: x\n---\n", "no text"),
    ],
)
def test_bad_files_get_a_reason_naming_the_file(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DocumentError) as info:
        load_document(path)
    assert reason in info.value.reason
    assert str(path) in str(info.value)


def test_unreadable_path_gets_a_reason(tmp_path: Path) -> None:
    link = tmp_path / "gone.md"
    link.symlink_to(tmp_path / "missing.md")
    with pytest.raises(DocumentError, match="cannot read"):
        load_document(link)


def test_offline_nlp_patch_still_reaches_unstructured() -> None:
    import unstructured.nlp.tokenize as tokenize

    from ingest.offline_nlp import install_offline_nlp

    install_offline_nlp()
    assert tokenize._get_nlp().pipe_names == ["sentencizer"]


def test_html_headings_carry_their_own_ids(tmp_path: Path) -> None:
    page = tmp_path / "ch01.html"
    page.write_text(
        '<html><body><section id="s1"><h1 id="ch01">Chapter <em>One</em></h1><p>Some text in a paragraph.</p>'
        '<h2>No id here</h2><p>More text here.</p><h2 id="sec-2"><a id="x"></a>Second</h2><p>Still more.</p>'
        "</section></body></html>",
        encoding="utf-8",
    )
    headings = [(b.text, b.anchor) for b in load_document(page).blocks if b.kind == "heading"]
    # The heading element's own id; an id on an element inside it is not the heading's, nor is its section's id
    # once the section's first heading has its own.
    assert headings == [("Chapter One", "ch01"), ("No id here", None), ("Second", "sec-2")]


def test_a_standard_ebooks_chapter_takes_its_hgroup_title_and_its_sections_ids(tmp_path: Path) -> None:
    chapter = tmp_path / "chapter-1.xhtml"
    chapter.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops"><body>\n'
        '<section id="chapter-1" epub:type="chapter"><hgroup><h2 epub:type="z3998:ordinal">I</h2>\n'
        '<p epub:type="title">Variation Under Domestication</p></hgroup>\n'
        '<section id="chapter-1-1"><h3 epub:type="title">Causes of Variability</h3>\n'
        "<p>When we compare the individuals of the same variety of our older cultivated plants.</p>\n"
        "<h4>A later heading of the same section</h4><p>Variation Under Domestication</p></section>\n"
        "</section></body></html>\n",
        encoding="utf-8",
    )
    document = load_document(chapter)
    headings = [(b.text, b.anchor) for b in document.blocks if b.kind == "heading"]
    assert headings == [
        ("I: Variation Under Domestication", "chapter-1"),  # "I" alone would be the chapter's name in sources
        ("Causes of Variability", "chapter-1-1"),  # the id is on the section, where readers' links point
        ("A later heading of the same section", None),  # a section's id is its first heading's only
    ]
    assert document.title == "I: Variation Under Domestication"
    texts = [b.text for b in document.blocks if b.kind == "text"]
    # The hgroup's line is part of the heading now, not a paragraph of its own; the same words later stay.
    assert texts[0].startswith("When we compare") and texts[-1] == "Variation Under Domestication"
    [first, *_] = split_document(document, "chapter-1.xhtml", len, SplitOptions(400, 0, min_section_tokens=0))
    assert first.metadata["chapter"] == "I: Variation Under Domestication"
    assert first.metadata["heading_path"] == ["I: Variation Under Domestication", "Causes of Variability"]


def test_a_fence_with_a_title_stays_code_and_its_lines_are_not_headings(tmp_path: Path) -> None:
    page = tmp_path / "create-a-document.md"
    page.write_text(
        "# Create a Document\n\nWrite this:\n\n"
        '```md title="docs/hello.md" {1-4}\n# Hello\n\nThis is my **first Docusaurus document**!\n```\n\n'
        "## Configure the Sidebar\n\nAdd it to the sidebar.\n",
        encoding="utf-8",
    )
    blocks = load_document(page).blocks
    assert [b.text for b in blocks if b.kind == "heading"] == ["Create a Document", "Configure the Sidebar"]
    assert any(b.kind == "code" and "# Hello" in b.text for b in blocks)


def test_an_hgroup_line_left_open_does_not_hide_the_headings_after_it() -> None:
    from ingest.loaders import html_headings

    markup = (
        '<section id="ch-2"><hgroup><p>Book One<h2>II</h2><p>Variation Under Nature</hgroup>'
        '<section id="ch-2-1"><h3>Variability</h3><p>Text.</p></section></section><h2 id="end">End</h2>'
    )
    headings = html_headings(markup)
    assert [(h.title, h.anchor) for h in headings] == [
        ("Book One: II: Variation Under Nature", "ch-2"),
        ("Variability", "ch-2-1"),
        ("End", "end"),
    ]


def test_mdbook_fences_with_attributes_stay_code_and_its_include_directives_are_dropped(tmp_path: Path) -> None:
    page = tmp_path / "ch20-03-advanced-types.md"
    page.write_text(
        "## Advanced Types\n\n### Type Synonyms and Type Aliases\n\nAn alias:\n\n"
        "```rust,noplayground\ntype Kilometers = i32;\n```\n\nThe alias helps in two ways.\n\n"
        "```rust\n{{#rustdoc_include ../listings/ch20-advanced-features/listing-20-26/src/main.rs:here}}\n```\n\n"
        "Listing 20-26 shows {{#include ../listings/alias.rs}} the alias.\n\n"
        "```rust,ignore,does_not_compile\n# fn main() {\nlet x: ! = panic!();\n# }\n```\n\n"
        "### The Never Type That Never Returns\n\nRust has a special type named `!`.\n\n"
        "~~~console {title=run}\n$ cargo run\n~~~\n\n### Dynamically Sized Types\n\nSized.\n",
        encoding="utf-8",
    )
    blocks = load_document(page).blocks
    assert [b.text for b in blocks if b.kind == "heading"] == [
        "Advanced Types",
        "Type Synonyms and Type Aliases",
        "The Never Type That Never Returns",  # swallowed by a code block while `rust,ignore` went unseen
        "Dynamically Sized Types",
    ]
    code = [b.text for b in blocks if b.kind == "code"]
    assert any("type Kilometers" in c for c in code) and any("# fn main()" in c for c in code)
    assert any("cargo run" in c for c in code)
    # mdBook's directives name files the folder does not hold; a code block of nothing but one is gone.
    assert not any("{{#" in b.text or "listings" in b.text for b in blocks)
    assert any(b.text == "Listing 20-26 shows the alias." for b in blocks)


def test_an_xhtml_chapter_with_its_xml_declaration_loads_like_html(tmp_path: Path) -> None:
    chapter = tmp_path / "economy.xhtml"
    chapter.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">\n'
        '<head><title>Economy</title></head><body><section epub:type="chapter">\n'
        '<h2 epub:type="title">Economy</h2><p>I lived alone, in the woods, a mile from any neighbor.</p>\n'
        '<h3 id="cost">The cost of the house</h3><p>The mass of men lead lives of quiet desperation.</p>\n'
        "</section></body></html>\n",
        encoding="utf-8",
    )
    document = load_document(chapter)
    headings = [(b.level, b.text) for b in document.blocks if b.kind == "heading"]
    assert headings == [(2, "Economy"), (3, "The cost of the house")]
    assert any("quiet desperation" in b.text for b in document.blocks if b.kind == "text")


def test_a_figures_caption_is_text_of_the_chapter(tmp_path: Path) -> None:
    page = tmp_path / "frontispiece.xhtml"
    page.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml"><body>'
        '<section id="frontispiece"><figure id="illustration-1"><img alt="A lizard." src="lizard.jpg"/>'
        "<figcaption>Amblyrynchus Demarlii: a species of lizard found on the Galapagos.</figcaption>"
        "</figure></section></body></html>\n",
        encoding="utf-8",
    )
    document = load_document(page)  # an image and its caption: the caption is what a reader can ask about
    assert [b.text for b in document.blocks] == ["Amblyrynchus Demarlii: a species of lizard found on the Galapagos."]


def test_a_page_of_links_only_fails_saying_it_is_navigation(tmp_path: Path) -> None:
    page = tmp_path / "loi.xhtml"
    page.write_text(
        '<html xmlns:epub="http://www.idpf.org/2007/ops"><body epub:type="backmatter"><nav id="loi" '
        'epub:type="loi"><h2 epub:type="title">List of Illustrations</h2><ol><li><p><a href="ch1.xhtml#i1">A '
        "mineral with inclusions.</a></p></li></ol></nav></body></html>",
        encoding="utf-8",
    )
    with pytest.raises(DocumentError, match="a list of illustrations: links to the book's pages"):
        load_document(page)
    empty = tmp_path / "empty.html"
    empty.write_text("<html><body><div></div></body></html>", encoding="utf-8")
    with pytest.raises(DocumentError, match="no text found in the file"):
        load_document(empty)
