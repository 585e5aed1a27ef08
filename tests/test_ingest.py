"""Incremental ingest into a real Qdrant with the real embedding model: idempotence, changes, pruning, every
format in a nested folder, and failures midway that must leave the previous version answering."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import Embeddings
from qdrant_client import QdrantClient

from chains.edge_client import EdgeClient
from chains.embeddings import LocalEmbeddings, build_embeddings, packaged_model_path
from chains.errors import DependencyUnavailable
from chains.onnx_encoder import graph_path, quantized_path
from chains.settings import Settings
from chains.vectorstore import build_vector_store, ensure_collection
from ingest.indexer import Indexer, discover_files
from tests.conftest import ingest_into
from tests.test_loaders import minimal_pdf

pytestmark = pytest.mark.integration

NEW_PRUNING = "# Pruning\n\nPrune plum trees only in summer, never in winter, to avoid silver leaf disease.\n"


def stored(client: QdrantClient, settings: Settings) -> dict[str, dict[str, Any]]:
    """Every stored point: id -> payload."""
    points, _ = client.scroll(settings.qdrant_collection, limit=10_000, with_payload=True)
    return {str(p.id): dict(p.payload or {}) for p in points}


def stored_texts(client: QdrantClient, settings: Settings) -> str:
    return "\n".join(str(p["page_content"]) for p in stored(client, settings).values())


def count(client: QdrantClient, settings: Settings) -> int:
    return client.count(settings.qdrant_collection, exact=True).count


def top_passage(client: QdrantClient, settings: Settings, embeddings: Embeddings, question: str) -> str:
    store = build_vector_store(client, settings, embeddings)
    return store.similarity_search(question, k=1)[0].page_content


def indexer(client: QdrantClient, embeddings: Embeddings, settings: Settings, batch_size: int = 64) -> Indexer:
    ensure_collection(client, settings, 384)
    return Indexer(client, embeddings, settings, batch_size=batch_size)


class FailingEmbeddings(Embeddings):
    """The real model, raising on its `fail_on`-th `embed_documents` call (as a model server going away would)."""

    def __init__(self, model: LocalEmbeddings, fail_on: int) -> None:
        self.model, self.fail_on, self.calls = model, fail_on, 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        if self.calls == self.fail_on:
            raise ConnectionError("embedding server went away")
        return self.model.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.model.embed_query(text)


class FlakyClient(EdgeClient):
    """The real embedded store (Qdrant's engine) whose `fail_on`-th upsert after arming raises, as a store going
    down would."""

    fail_on = 0
    upserts = 0

    def upsert(self, *args: Any, **kwargs: Any) -> Any:
        self.upserts += 1
        if self.upserts == self.fail_on:
            raise ConnectionError("Qdrant went away mid-upsert")
        return super().upsert(*args, **kwargs)


def test_reingest_unchanged_book_writes_nothing_and_skips_parsing(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    first = ingest_into(qdrant, embeddings, settings, book_dir)
    before = stored(qdrant, settings)
    assert first.added == len(before) > 0 and first.embedded == len(before)
    second = ingest_into(qdrant, embeddings, settings, book_dir)
    assert (second.added, second.updated, second.removed, second.unchanged) == (0, 0, 0, len(before))
    assert second.embedded == 0
    assert not any(f.parsed for f in second.files)  # the file hashes matched: not even split again
    assert stored(qdrant, settings) == before


def test_changed_chapter_replaces_its_old_chunks(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    ingest_into(qdrant, embeddings, settings, book_dir)
    (book_dir / "pruning.md").write_text(NEW_PRUNING, encoding="utf-8")
    report = ingest_into(qdrant, embeddings, settings, book_dir)
    changed = next(f for f in report.files if f.source.endswith("pruning.md"))
    assert changed.updated == 1 and changed.added + changed.removed >= 0
    untouched = next(f for f in report.files if f.source.endswith("watering.md"))
    assert not untouched.changed and not untouched.parsed
    texts = stored_texts(qdrant, settings)
    assert "silver leaf disease" in texts
    assert "outward-facing bud" not in texts
    assert "twenty litres" in texts
    assert "silver leaf" in top_passage(qdrant, settings, embeddings, "When should plum trees be pruned?")
    again = ingest_into(qdrant, embeddings, settings, book_dir)
    assert again.embedded == 0 and not any(f.parsed for f in again.files)


def test_chunk_unchanged_in_a_changed_file_is_restamped_not_reembedded(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, tmp_path: Path
) -> None:
    book = tmp_path / "book"
    book.mkdir()
    sections = [f"## Part {n}\n\n" + f"Facts about topic number {n} in the orchard. " * 40 for n in range(3)]
    chapter = book / "long.md"
    chapter.write_text("# Long\n\n" + "\n\n".join(sections))
    first = ingest_into(qdrant, embeddings, settings, book)
    chapter.write_text("# Long\n\n" + "\n\n".join([*sections[:2], "## Part 2\n\nRewritten. " * 30]))
    report = ingest_into(qdrant, embeddings, settings, book)
    assert report.unchanged >= 1 and report.embedded == report.added + report.updated < first.added
    hashes = {p["metadata"]["file_hash"] for p in stored(qdrant, settings).values()}
    assert len(hashes) == 1  # every chunk carries the file's new hash, so the next run skips the file
    assert ingest_into(qdrant, embeddings, settings, book).embedded == 0


def test_every_format_in_a_nested_folder(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, tmp_path: Path
) -> None:
    from docx import Document as Docx

    book = tmp_path / "book"
    (book / "part1" / "deep").mkdir(parents=True)
    (book / "part2").mkdir()
    (book / "part1" / "soil.md").write_text("---\ntitle: Soil\ntags: [ground]\n---\n# Soil\n\nLoam drains well.\n")
    (book / "part1" / "deep" / "graft.mdx").write_text(
        "import Tip from './Tip';\n\n# Grafting\n\n<Tip>Whip-and-tongue grafts suit young stems.</Tip>\n"
    )
    (book / "part2" / "harvest.html").write_text("<h1>Harvest</h1><p>Pick apples when the pips turn brown.</p>")
    (book / "part2" / "notes.txt").write_text("Storage\n\nKeep pears at one degree.\n")
    (book / "part2" / "scan.pdf").write_bytes(minimal_pdf(["Roots grow at night.", "Leaves fall in autumn."]))
    docx = Docx()
    docx.add_heading("Pests", 1)
    docx.add_paragraph("Codling moth larvae tunnel into apples.")
    docx.save(str(book / "part2" / "pests.docx"))

    report = ingest_into(qdrant, embeddings, settings, book)
    assert not report.failed and len(report.files) == 6
    points = list(stored(qdrant, settings).values())
    by_source = {p["metadata"]["source"]: p for p in points}
    assert set(by_source) == {
        "book/part1/soil.md",
        "book/part1/deep/graft.mdx",
        "book/part2/harvest.html",
        "book/part2/notes.txt",
        "book/part2/scan.pdf",
        "book/part2/pests.docx",
    }
    assert by_source["book/part1/soil.md"]["metadata"]["front_matter"] == {"title": "Soil", "tags": ["ground"]}
    assert "Whip-and-tongue" in by_source["book/part1/deep/graft.mdx"]["page_content"]
    assert "import" not in by_source["book/part1/deep/graft.mdx"]["page_content"]
    pdf_pages = {p["metadata"]["page"] for p in points if p["metadata"]["source"].endswith(".pdf")}
    assert pdf_pages == {1}  # both short pages fit one chunk, which starts on page 1
    for point in points:
        meta = point["metadata"]
        assert {"title", "heading_path", "chunk_index", "content_hash", "file_hash"} <= meta.keys()


def test_removed_file_is_pruned(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    ingest_into(qdrant, embeddings, settings, book_dir)
    (book_dir / "pruning.md").unlink()
    index = indexer(qdrant, embeddings, settings)
    report = index.ingest(list(discover_files([book_dir])), book_dir.parent, prune=True)
    assert report.pruned_sources == ["book/pruning.md"] and report.removed >= 1
    assert "outward-facing bud" not in stored_texts(qdrant, settings)


def test_dry_run_writes_nothing(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    ingest_into(qdrant, embeddings, settings, book_dir)
    before = stored(qdrant, settings)
    (book_dir / "pruning.md").write_text(NEW_PRUNING, encoding="utf-8")
    (book_dir / "watering.md").unlink()
    (book_dir / "new.md").write_text("# New\n\nA brand new chapter about espaliers.\n")
    index = indexer(qdrant, embeddings, settings)
    report = index.ingest(list(discover_files([book_dir])), book_dir.parent, prune=True, dry_run=True)
    assert report.dry_run and report.embedded == 0
    assert report.added >= 1 and report.updated == 1 and report.pruned_sources == ["book/watering.md"]
    assert "would have" in report.summary()
    assert stored(qdrant, settings) == before


def test_chunk_sizes_in_characters_and_page_paths_not_urls(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    chars = settings.model_copy(
        update={"chunk_size_unit": "chars", "chunk_size": 200, "chunk_overlap": 20, "book_base_url": "https://b.io/"}
    )
    ingest_into(qdrant, embeddings, chars, book_dir)
    points = list(stored(qdrant, chars).values())
    assert all(len(p["page_content"]) <= 200 for p in points)
    assert {p["metadata"]["page_path"] for p in points} == {"book/watering", "book/pruning"}
    assert not any("url" in p["metadata"] for p in points)
    assert "summer-pruning" in {p["metadata"].get("anchor") for p in points}


def test_a_new_base_url_needs_no_reingest_but_a_new_site_style_does(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    ingest_into(qdrant, embeddings, settings, book_dir)
    before = stored(qdrant, settings)
    rebased = settings.model_copy(update={"book_base_url": "https://elsewhere.example/book/"})
    again = ingest_into(qdrant, embeddings, rebased, book_dir)
    assert again.updated_files == 0 and again.embedded == 0 and stored(qdrant, settings) == before

    mkdocs = settings.model_copy(update={"book_site_style": "mkdocs"})
    restyled = ingest_into(qdrant, embeddings, mkdocs, book_dir)
    assert restyled.updated_files == 2
    assert {p["metadata"]["page_path"] for p in stored(qdrant, settings).values()} == {
        "book/watering/",
        "book/pruning/",
    }


def test_embedding_failure_during_second_file_keeps_previous_version(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    ingest_into(qdrant, embeddings, settings, book_dir)
    old_watering = {i for i, p in stored(qdrant, settings).items() if p["metadata"]["source"] == "book/watering.md"}
    (book_dir / "pruning.md").write_text(NEW_PRUNING, encoding="utf-8")
    watering = book_dir / "watering.md"
    watering.write_text(watering.read_text().replace("twenty litres", "thirty litres").replace("Mulch", "Bark"))
    # One chunk a batch: call 1 embeds pruning.md (written, then its old chunk goes), call 2 fails on watering.md.
    failing = FailingEmbeddings(embeddings, fail_on=2)
    with pytest.raises(DependencyUnavailable, match="run the same ingest again"):
        indexer(qdrant, failing, settings, batch_size=1).ingest(list(discover_files([book_dir])), book_dir.parent)
    now = stored(qdrant, settings)
    assert old_watering <= now.keys()  # the previous complete version of the second file is all there
    assert "thirty litres" not in stored_texts(qdrant, settings)  # and nothing of its new one
    assert "twenty litres" in top_passage(qdrant, settings, embeddings, "How much water does a young tree need?")
    assert "silver leaf" in stored_texts(qdrant, settings)  # the first file was finished

    ingest_into(qdrant, embeddings, settings, book_dir)  # running again completes it
    texts = stored_texts(qdrant, settings)
    assert "thirty litres" in texts and "twenty litres" not in texts
    sources = [p["metadata"]["source"] for p in stored(qdrant, settings).values()]
    assert ingest_into(qdrant, embeddings, settings, book_dir).embedded == 0
    assert len(sources) == count(qdrant, settings)


def test_store_failure_during_an_upsert_keeps_previous_version(
    embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    client = FlakyClient(settings.qdrant_path / "edge")
    try:
        ingest_into(client, embeddings, settings, book_dir)
        before = stored(client, settings)
        old_watering = {i for i, p in before.items() if p["metadata"]["source"] == "book/watering.md"}
        for chapter in book_dir.iterdir():
            chapter.write_text(chapter.read_text().replace("tree", "sapling"))
        client.upserts, client.fail_on = 0, 2  # one file an upsert: the second file's upsert fails
        with pytest.raises(DependencyUnavailable, match="Qdrant failed while writing chunks"):
            indexer(client, embeddings, settings, batch_size=1).ingest(
                list(discover_files([book_dir])), book_dir.parent
            )
        after = stored(client, settings)
        assert old_watering <= after.keys()  # the second file's previous version is whole
        assert [p["metadata"]["source"] for p in after.values() if "sapling" in str(p["page_content"])] == [
            "book/pruning.md"  # the first file was finished; nothing of the second file's new version
        ]
        client.fail_on = 0
        report = ingest_into(client, embeddings, settings, book_dir)
        assert not report.failed
        texts = stored_texts(client, settings)
        assert "sapling" in texts and " tree " not in texts
    finally:
        client.close()


def test_bad_file_is_reported_and_the_rest_ingested(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    (book_dir / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (book_dir / "empty.md").write_text("")
    report = ingest_into(qdrant, embeddings, settings, book_dir)
    assert sorted(f.source for f in report.failed) == ["book/broken.pdf", "book/empty.md"]
    assert "2 failed" in report.summary()
    assert "twenty litres" in stored_texts(qdrant, settings)


def test_chunks_embedded_in_small_overlapping_groups_get_the_same_vectors_as_in_one_group(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    """Groups of 3 (2 when the model is idle) span files and are embedded while later files are parsed: every
    point still gets its own chunk's vector, as when the whole book is one group."""
    for n in range(5):
        parts = [
            f"## Part {k}\n\n"
            + " ".join(f"Fact {n}.{k}.{m}: chapter {n} tells of orchard {m} here." for m in range(20))
            for k in range(4)
        ]
        (book_dir / f"chapter{n}.md").write_text(f"# Chapter {n}\n\n" + "\n\n".join(parts) + "\n", encoding="utf-8")
    files = list(discover_files([book_dir]))
    whole = settings.model_copy(update={"qdrant_collection": settings.qdrant_collection + "_whole"})
    small = indexer(qdrant, embeddings, settings, batch_size=3).ingest(files, book_dir.parent)
    one = indexer(qdrant, embeddings, whole, batch_size=10_000).ingest(files, book_dir.parent)
    assert small.embedded == one.embedded > 20

    def vectors(collection: str) -> dict[str, list[float]]:
        points, _ = qdrant.scroll(collection, limit=10_000, with_vectors=True)
        return {str(p.id): p.vector["dense"] for p in points}  # type: ignore[index,call-overload]

    grouped, reference = vectors(settings.qdrant_collection), vectors(whole.qdrant_collection)
    assert grouped.keys() == reference.keys()
    worst = min(sum(a * b for a, b in zip(grouped[i], reference[i], strict=True)) for i in grouped)
    assert worst > 0.9999


def test_an_upsert_failing_midway_through_a_file_withdraws_the_new_chunks_it_wrote(
    embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    small = settings.model_copy(update={"chunk_size_unit": "chars", "chunk_size": 120, "chunk_overlap": 0})
    client = FlakyClient(small.qdrant_path / "edge")
    try:
        ingest_into(client, embeddings, small, book_dir)
        before = stored(client, small)
        sentences = [f"Sentence {n} about cider apples, pressed in October by the orchard keeper." for n in range(8)]
        (book_dir / "cider.md").write_text("# Cider\n\n" + "\n\n".join(sentences), encoding="utf-8")
        client.upserts, client.fail_on = 0, 3  # one point an upsert: two of the new chapter's chunks go in, then not
        with pytest.raises(DependencyUnavailable, match="Qdrant failed while writing chunks"):
            indexer(client, embeddings, small, batch_size=1).ingest(list(discover_files([book_dir])), book_dir.parent)
        assert client.upserts == 3
        assert stored(client, small) == before  # the two written chunks were deleted again: nothing half in
        client.fail_on = 0
        report = ingest_into(client, embeddings, small, book_dir)  # the next run puts the chapter in whole
        assert not report.failed
        cider = [p for p in stored(client, small).values() if p["metadata"]["source"] == "book/cider.md"]
        assert len(cider) > 2
    finally:
        client.close()


def test_switching_embedding_quantize_re_embeds_every_chunk_and_a_rerun_skips_all(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path, tmp_path: Path
) -> None:
    """EMBEDDING_QUANTIZE=int8 makes other vectors, so it is part of a chunk's identity: turning it on re-embeds
    the whole stored book (no float vector left beside int8 ones), and the next run skips every file."""
    first = ingest_into(qdrant, embeddings, settings, book_dir)
    total = first.added
    assert embeddings._onnx is not None and total >= 2
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    float_graph = graph_path(packaged_model_path(settings.embedding_model), onnx_dir)
    shutil.copyfile(embeddings._onnx._graph, float_graph)  # the float graph already exported: no PyTorch needed
    quantized = settings.model_copy(update={"embedding_quantize": "int8", "embedding_onnx_dir": onnx_dir})
    int8 = build_embeddings(quantized)
    assert isinstance(int8, LocalEmbeddings) and int8._onnx is not None
    assert int8._onnx._graph == quantized_path(float_graph)
    before = stored(qdrant, settings)

    second = ingest_into(qdrant, int8, quantized, book_dir)
    assert second.embedded == total and (second.updated, second.added, second.unchanged) == (total, 0, 0)
    after = stored(qdrant, settings)
    assert len(after) == total and not after.keys() & before.keys()  # every chunk rewritten, none twice
    third = ingest_into(qdrant, int8, quantized, book_dir)
    assert (third.embedded, third.unchanged, third.added, third.updated) == (0, total, 0, 0)
    assert not any(f.parsed for f in third.files)
    back = ingest_into(qdrant, embeddings, settings, book_dir)  # and switching it off re-embeds again
    assert back.embedded == total and set(stored(qdrant, settings)) == set(before)
