"""Heading-aware splitting: heading paths, whole code blocks, merged fragments, bounded sizes."""

from __future__ import annotations

from pathlib import Path

from ingest.loaders import Block, LoadedDocument
from ingest.splitter import SplitOptions, approximate_tokens, split_document


def words(text: str) -> int:
    return len(text.split())


def document(*blocks: Block, title: str = "Orchard") -> LoadedDocument:
    return LoadedDocument(Path("orchard.md"), title, list(blocks))


def paragraph(word: str, count: int) -> Block:
    return Block("text", " ".join([word] * count) + ".")


def test_chunks_carry_their_heading_path_and_metadata() -> None:
    doc = document(
        Block("heading", "Orchard", 1),
        paragraph("intro", 30),
        Block("heading", "Soil", 2),
        paragraph("soil", 30),
        Block("heading", "Drainage", 3),
        paragraph("drain", 30),
        Block("heading", "Planting", 2),
        paragraph("plant", 30),
    )
    chunks = split_document(doc, "orchard.md", words, SplitOptions(100, 10, min_section_tokens=5), "orchard")
    paths = [c.metadata["heading_path"] for c in chunks]
    assert paths == [["Orchard"], ["Orchard", "Soil"], ["Orchard", "Soil", "Drainage"], ["Orchard", "Planting"]]
    assert [c.metadata["chunk_index"] for c in chunks] == [0, 1, 2, 3]
    assert chunks[2].embed_text.startswith("Orchard > Soil > Drainage\n\n")
    assert all(c.metadata["source"] == "orchard.md" and c.metadata["page_path"] == "orchard" for c in chunks)
    # The H1 is the page's title: Docusaurus renders it without an id, so its chunk links to the page.
    assert [c.metadata.get("anchor") for c in chunks] == [None, "soil", "drainage", "planting"]
    assert not any("url" in c.metadata for c in chunks)  # composed from BOOK_BASE_URL per answer, never stored
    assert len({c.metadata["content_hash"] for c in chunks}) == 4


def test_code_block_is_not_cut_when_it_fits() -> None:
    code = Block("code", "\n".join(f"line_{i} = {i}" for i in range(20)))
    doc = document(Block("heading", "Logger", 1), paragraph("a", 50), code, paragraph("b", 50))
    chunks = split_document(doc, "x.md", words, SplitOptions(80, 10, min_section_tokens=1))
    holding = [c for c in chunks if "line_0 = 0" in c.text]
    assert len(holding) == 1 and "line_19 = 19" in holding[0].text


def test_tiny_sections_merge_into_the_next() -> None:
    doc = document(
        Block("heading", "Orchard", 1),
        Block("heading", "Note", 2),
        Block("text", "Short."),
        Block("heading", "Soil", 2),
        paragraph("soil", 40),
    )
    chunks = split_document(doc, "x.md", words, SplitOptions(100, 10, min_section_tokens=10))
    assert len(chunks) == 1
    assert "Short." in chunks[0].text and "Note" in chunks[0].text
    assert chunks[0].metadata["heading_path"] == ["Orchard", "Soil"]


def test_a_tiny_last_section_joins_the_one_before_with_its_heading() -> None:
    doc = document(
        Block("heading", "Orchard", 1),
        Block("heading", "Soil", 2),
        paragraph("soil", 40),
        Block("heading", "The drip logger", 2),
        Block("text", "It logs."),
    )
    chunks = split_document(doc, "x.md", words, SplitOptions(100, 10, min_section_tokens=10))
    assert len(chunks) == 1
    assert chunks[0].text.endswith("The drip logger\n\nIt logs.")  # the heading is not lost with the merge


def test_long_sections_split_within_size_with_overlap() -> None:
    doc = document(Block("heading", "Long", 1), *[paragraph(f"p{i}", 20) for i in range(20)])
    chunks = split_document(doc, "x.md", words, SplitOptions(60, 20, min_section_tokens=1))
    assert len(chunks) > 5
    assert all(words(c.text) <= 60 for c in chunks)
    first_paragraph_of_second = chunks[1].text.split("\n\n")[0]
    assert first_paragraph_of_second in chunks[0].text  # a whole paragraph carried over as overlap


def test_oversized_paragraph_is_split_recursively() -> None:
    doc = document(Block("heading", "Huge", 1), Block("text", ". ".join(f"sentence {i}" for i in range(400))))
    chunks = split_document(doc, "x.md", approximate_tokens, SplitOptions(100, 20, min_section_tokens=1))
    assert len(chunks) > 5
    assert all(approximate_tokens(c.text) <= 100 for c in chunks)


def test_a_paragraph_cut_between_sentences_keeps_each_full_stop_with_its_sentence() -> None:
    # A reader sees a source's text: it should start with a sentence, not with the previous one's ". ".
    text = " ".join(
        f"Sentence number {i} is about pruning the young cherry tree in its second spring." for i in range(60)
    )
    doc = document(Block("heading", "Pruning", 1), Block("text", text))
    chunks = split_document(doc, "x.md", approximate_tokens, SplitOptions(100, 20, min_section_tokens=1))
    assert len(chunks) > 3
    bodies = [c.text.split("\n\n", 1)[-1] if c.text.startswith("#") else c.text for c in chunks]
    assert not [b[:12] for b in bodies if b.startswith((".", ";", ","))]
    assert all(b.rstrip().endswith(".") for b in bodies)


def test_chunk_page_is_the_page_of_its_first_text_not_the_sections() -> None:
    pages = [Block("text", " ".join([f"page{n}"] * 40) + ".", page=n) for n in (1, 2, 3, 4)]
    doc = LoadedDocument(Path("book.pdf"), "Book", pages)
    chunks = split_document(doc, "book.pdf", words, SplitOptions(100, 0, min_section_tokens=1))
    assert [c.metadata["page"] for c in chunks] == [1, 3]
    assert chunks[1].text.startswith("page3")


def test_oversized_pdf_page_keeps_its_page_on_every_part() -> None:
    doc = LoadedDocument(
        Path("book.pdf"),
        "Book",
        [Block("text", "short first page.", page=1), Block("text", ". ".join(["long"] * 300), page=2)],
    )
    chunks = split_document(doc, "book.pdf", words, SplitOptions(50, 0, min_section_tokens=1))
    assert len(chunks) > 3
    assert chunks[0].metadata["page"] == 1 and {c.metadata["page"] for c in chunks[1:]} == {2}


def test_front_matter_rides_along_as_json_safe_metadata() -> None:
    import datetime

    doc = document(Block("heading", "Orchard", 1), paragraph("intro", 30))
    doc.metadata = {"sidebar_position": 2, "date": datetime.date(2024, 5, 1), "tags": ["trees"]}
    chunk = split_document(doc, "x.md", words, SplitOptions(100, 10, min_section_tokens=1))[0]
    assert chunk.metadata["front_matter"] == {"sidebar_position": 2, "date": "2024-05-01", "tags": ["trees"]}


def test_document_of_only_headings_is_kept_as_text() -> None:
    doc = document(Block("heading", "Storage", 1), Block("heading", "Keep pears at one degree.", 1))
    chunks = split_document(doc, "notes.txt", words, SplitOptions(100, 10, min_section_tokens=1))
    assert len(chunks) == 1 and "Keep pears at one degree." in chunks[0].text


def test_sizes_in_characters_when_counted_by_len() -> None:
    doc = document(Block("heading", "Long", 1), *[paragraph(f"p{i}", 20) for i in range(20)])
    chunks = split_document(doc, "x.md", len, SplitOptions(300, 50, min_section_tokens=1))
    assert len(chunks) > 5 and all(len(c.text) <= 300 for c in chunks)


def test_anchors_are_the_sites_heading_ids_over_the_whole_document() -> None:
    doc = document(
        Block("heading", "Orchard", 1),
        paragraph("intro", 30),
        Block("heading", "Watering", 2),
        Block("heading", "Notes", 3),  # no text of its own: not a section, still counted by the site's slugger
        paragraph("first", 30),
        Block("heading", "Watering {#summer-water}", 2),
        paragraph("custom", 30),
        Block("heading", "Watering", 2),
        Block("heading", "Notes", 3),
        paragraph("second", 30),
        Block("heading", "Über Bäume", 2),
        paragraph("umlaut", 30),
    )
    chunks = split_document(doc, "orchard.md", words, SplitOptions(100, 10, min_section_tokens=5), "orchard")
    by_word = {c.text.split()[0]: c.metadata for c in chunks}
    assert by_word["first"]["anchor"] == "notes"
    # The custom id is used as written and left out of the heading shown; the third "Watering" is the second
    # generated one, so it is watering-1, and its "Notes" is notes-1.
    assert by_word["custom"]["anchor"] == "summer-water"
    assert by_word["custom"]["heading_path"] == ["Orchard", "Watering"]
    assert by_word["second"]["anchor"] == "notes-1"
    assert by_word["second"]["heading_path"] == ["Orchard", "Watering", "Notes"]
    assert by_word["umlaut"]["anchor"] == "über-bäume"


def test_other_site_styles_number_repeats_their_own_way() -> None:
    doc = document(
        Block("heading", "Orchard", 1),
        Block("heading", "Watering", 2),
        paragraph("first", 30),
        Block("heading", "Watering", 2),
        paragraph("second", 30),
    )
    options = SplitOptions(100, 10, min_section_tokens=5)
    mkdocs = split_document(doc, "orchard.md", words, options, "orchard/", style="mkdocs")
    mdbook = split_document(doc, "orchard.md", words, options, "orchard.html", style="mdbook")
    assert [c.metadata["anchor"] for c in mkdocs] == ["watering", "watering_1"]
    assert [c.metadata["anchor"] for c in mdbook] == ["watering", "watering-1"]


def test_html_headings_keep_their_own_ids_or_their_parents() -> None:
    doc = LoadedDocument(
        Path("ch01.xhtml"),
        "Chapter One",
        [
            Block("heading", "Chapter One", 1, anchor="ch01"),
            paragraph("intro", 30),
            Block("heading", "Without an id", 2),
            paragraph("inner", 30),
            Block("heading", "With one", 2, anchor="sec-2"),
            paragraph("own", 30),
        ],
    )
    chunks = split_document(doc, "ch01.xhtml", words, SplitOptions(100, 10, min_section_tokens=5), "ch01.xhtml")
    assert [c.metadata["anchor"] for c in chunks] == ["ch01", "ch01", "sec-2"]


def test_a_document_title_with_a_custom_id_is_shown_without_it() -> None:
    doc = document(Block("heading", "Orchard {#top}", 1), paragraph("intro", 30), title="Orchard {#top}")
    [chunk] = split_document(doc, "orchard.md", words, SplitOptions(100, 10, min_section_tokens=5), "orchard")
    assert chunk.metadata["title"] == "Orchard" and chunk.metadata["heading_path"] == ["Orchard"]
    assert "anchor" not in chunk.metadata  # an H1, even with a custom id, has none on a Docusaurus page
    [mkdocs] = split_document(
        doc, "orchard.md", words, SplitOptions(100, 10, min_section_tokens=5), "orchard/", "mkdocs"
    )
    assert mkdocs.metadata["anchor"] == "top"
