"""A file's replacement is all at once for every reader: its new chunks are staged (hidden) while they are written,
then swapped in with the chunks they replace in one operation, even when `rag-ingest` is SIGKILLed mid-file; the
next run removes what a dead one left. Readers of an unchanged store see exactly what they saw before."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient, models

from chains.catalogue import BookCatalogue
from chains.embeddings import LocalEmbeddings
from chains.errors import DependencyUnavailable
from chains.retrieval import BookRetriever, build_filter
from chains.settings import Settings
from chains.vectorstore import (
    DENSE_VECTOR,
    MARKED,
    METADATA_KEY,
    STAGED_AT_KEY,
    STAGED_KEY,
    SWAPPED_KEY,
    VISIBLE,
    build_qdrant_client,
    build_vector_store,
)
from ingest.indexer import Indexer, discover_files
from tests.conftest import QDRANT_URL, ingest_into

pytestmark = pytest.mark.integration

RAG_INGEST = Path(sys.executable).parent / "rag-ingest"
SMALL = {"chunk_size_unit": "chars", "chunk_size": 160, "chunk_overlap": 0}


def long_chapter(fruit: str, parts: int = 36) -> str:
    """A chapter of `parts` chunks (at 160 characters a chunk), each naming `fruit`: every chunk differs by fruit."""
    paragraphs = [
        f"Row {n} of the orchard holds {fruit} trees; the keeper waters row {n} on day {n % 7} and notes it."
        for n in range(parts)
    ]
    return "# The long chapter\n\n" + "\n\n".join(paragraphs) + "\n"


def visible_points(client: QdrantClient, settings: Settings, source: str | None = None) -> dict[str, dict[str, Any]]:
    """What a reader's scroll sees (the product's filter): id -> payload."""
    where = build_filter([source] if source else None)
    points, _ = client.scroll(settings.qdrant_collection, scroll_filter=where, limit=10_000, with_payload=True)
    return {str(p.id): dict(p.payload or {}) for p in points}


def all_points(client: QdrantClient, settings: Settings) -> dict[str, dict[str, Any]]:
    points, _ = client.scroll(settings.qdrant_collection, limit=10_000, with_payload=True)
    return {str(p.id): dict(p.payload or {}) for p in points}


def marked(client: QdrantClient, settings: Settings) -> int:
    return client.count(settings.qdrant_collection, count_filter=MARKED, exact=True).count


@pytest.fixture
def small(settings: Settings) -> Settings:
    return settings.model_copy(update=SMALL)


@pytest.fixture
def book(tmp_path: Path) -> Path:
    folder = tmp_path / "book"
    folder.mkdir()
    (folder / "long.md").write_text(long_chapter("apple"), encoding="utf-8")
    (folder / "short.md").write_text("# Short\n\nA short chapter about mulch and its depth.\n", encoding="utf-8")
    return folder


def run_until_written(command: list[str], env: dict[str, str], at_least: int, below: int) -> tuple[int, str]:
    """Run `command` with stderr on a terminal (so that its progress line is drawn), and SIGKILL it as soon as its
    progress says at least `at_least` (and fewer than `below`) chunks are written. Returns (written, output)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    output = ""
    written = 0
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                output += os.read(leader, 65536).decode(errors="replace")
            except OSError:  # the process closed its terminal
                break
            counts = [int(n) for n in re.findall(r"(\d+) written", output)]
            if counts and counts[-1] >= at_least:
                written = counts[-1]
                os.kill(process.pid, signal.SIGKILL)
                break
    finally:
        if process.poll() is None and not written:
            process.kill()
        process.wait(timeout=60)
        os.close(leader)
    assert written, f"the ingest never reported {at_least} chunks written before it ended:\n{output[-2000:]}"
    assert written < below, f"the kill came too late ({written} of {below} written):\n{output[-2000:]}"
    assert process.returncode == -signal.SIGKILL
    return written, output


@pytest.mark.skipif(QDRANT_URL is not None, reason="the embedded store, opened by the killed process")
def test_rag_ingest_sigkilled_mid_file_leaves_the_old_version_and_the_rerun_finishes(
    small: Settings, embeddings: LocalEmbeddings, book: Path
) -> None:
    client = build_qdrant_client(small)
    try:
        assert not ingest_into(client, embeddings, small, book).failed
        old = visible_points(client, small, "book/long.md")
        assert len(old) > 30
    finally:
        client.close()
    (book / "long.md").write_text(long_chapter("pear"), encoding="utf-8")  # every chunk of the file changes
    env = {
        **os.environ,
        "QDRANT_PATH": str(small.qdrant_path),
        "QDRANT_COLLECTION": small.qdrant_collection,
        "CHUNK_SIZE_UNIT": "chars",
        "CHUNK_SIZE": "160",
        "CHUNK_OVERLAP": "0",
    }
    # Groups of 4 chunks: the file's new version is 9 upserts, each written while the next group is embedded.
    run_until_written([str(RAG_INGEST), str(book), "--batch-size", "4"], env, at_least=4, below=len(old))

    client = build_qdrant_client(small)
    try:
        everything = all_points(client, small)
        staged = [p for p in everything.values() if p.get(STAGED_KEY)]
        assert staged and all("pear" in p["page_content"] for p in staged)  # killed with part of the file staged
        assert len(staged) < len(old)
        # A reader sees the old version whole: the scroll with the product's filter, a search, the catalogue.
        assert visible_points(client, small, "book/long.md") == old
        store = build_vector_store(client, small, embeddings)
        retriever = BookRetriever.from_settings(store, small)
        found = retriever.invoke("which row holds pear trees", k=8)
        assert found and all("pear" not in doc.page_content for doc in found)
        assert {doc.metadata["source"] for doc in found} <= {"book/long.md", "book/short.md"}
        # LangChain's own searches over the same store too (any LangChain code reading the book)
        assert all("pear" not in d.page_content for d in store.similarity_search("which row holds pear trees", k=8))
        mmr = store.max_marginal_relevance_search("which row holds pear trees", k=8, fetch_k=40)
        assert mmr and all("pear" not in d.page_content for d in mmr)
        assert BookCatalogue(small.qdrant_collection).current(client).sources == ("book/long.md", "book/short.md")

        report = ingest_into(client, embeddings, small, book)  # the rerun
        assert not report.failed
        assert any("interrupted" in note for note in report.notes)
        new = visible_points(client, small, "book/long.md")
        assert len(new) == len(old) and all("pear" in p["page_content"] for p in new.values())
        assert not set(new) & set(old)
        assert marked(client, small) == 0  # nothing left staged or marked
        assert all_points(client, small) == visible_points(client, small)  # nothing hidden, nothing duplicated
        again = ingest_into(client, embeddings, small, book)
        assert again.embedded == 0 and again.unchanged == len(all_points(client, small))
    finally:
        client.close()


class FailingDelete:
    """The real store, whose `delete` fails once armed (as a store going down right after the swap would)."""

    def __init__(self, client: QdrantClient) -> None:
        self.client = client
        self.armed = False

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed:
            raise ConnectionError("Qdrant went away after the swap")
        return self.client.delete(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_run_dying_after_the_swap_shows_the_new_version_and_the_next_run_tidies(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, small: Settings, book: Path
) -> None:
    ingest_into(qdrant, embeddings, small, book)
    old = visible_points(qdrant, small, "book/long.md")
    (book / "long.md").write_text(long_chapter("plum"), encoding="utf-8")
    failing = FailingDelete(qdrant)
    failing.armed = True
    indexer = Indexer(failing, embeddings, small, embeddings.count_tokens, batch_size=8)  # type: ignore[arg-type]
    with pytest.raises(DependencyUnavailable, match="deleting stale chunks"):
        indexer.ingest(list(discover_files([book])), book.parent)
    new = visible_points(qdrant, small, "book/long.md")
    assert len(new) == len(old) and all("plum" in p["page_content"] for p in new.values())  # swapped in, whole
    hidden = set(all_points(qdrant, small)) - set(visible_points(qdrant, small))
    assert hidden == set(old)  # the replaced chunks: hidden, waiting to be deleted
    report = ingest_into(qdrant, embeddings, small, book)
    assert report.embedded == 0 and any("interrupted" in note for note in report.notes)
    assert set(all_points(qdrant, small)) == set(visible_points(qdrant, small)) and marked(qdrant, small) == 0
    assert visible_points(qdrant, small, "book/long.md").keys() == new.keys()


class StagedRemovedElsewhere:
    """The real store, where another ingest's clean-up deletes the staged chunks right after each upsert."""

    def __init__(self, client: QdrantClient) -> None:
        self.client = client

    def upsert(self, collection_name: str, points: list[models.PointStruct], **kwargs: Any) -> Any:
        done = self.client.upsert(collection_name, points=points, **kwargs)
        self.client.delete(collection_name, points_selector=models.PointIdsList(points=[p.id for p in points]))
        return done

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_swap_whose_staged_chunks_are_gone_is_refused_and_the_old_version_stays(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, small: Settings, book: Path
) -> None:
    """Two ingests into one collection at once (a server) is not supported; if the other one's clean-up removes
    this run's staged chunks, the swap is refused instead of hiding the old version with nothing to show."""
    ingest_into(qdrant, embeddings, small, book)
    old = visible_points(qdrant, small, "book/long.md")
    (book / "long.md").write_text(long_chapter("medlar"), encoding="utf-8")
    elsewhere = StagedRemovedElsewhere(qdrant)
    indexer = Indexer(elsewhere, embeddings, small, embeddings.count_tokens)  # type: ignore[arg-type]
    with pytest.raises(DependencyUnavailable, match="are gone from the store before they were shown"):
        indexer.ingest(list(discover_files([book])), book.parent)
    assert visible_points(qdrant, small, "book/long.md") == old
    assert all_points(qdrant, small) == visible_points(qdrant, small)


def test_an_unchanged_store_reads_exactly_as_without_the_filter(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    """No reader loses a chunk: on a store with nothing staged, every kind of search with the product's filter
    gives the same points and scores as the same search without it; points written by other LangChain code carry
    no mark and are visible."""
    ingest_into(qdrant, embeddings, settings, book_dir)
    store = build_vector_store(qdrant, settings, embeddings)
    store.add_texts(["Pears ripen off the tree, in a cool room."], [{"source": "notes.md"}], ids=["note-1"])
    name = settings.qdrant_collection
    for question in ["how much water does a young tree need", "the three Ds of pruning", "moisture-log probe"]:
        vector = embeddings.embed_query(question)
        for where, plain in [(build_filter(), None), (build_filter(["book/watering.md"]), "book/watering.md")]:
            plain_filter = (
                None
                if plain is None
                else models.Filter(
                    must=[models.FieldCondition(key=f"{METADATA_KEY}.source", match=models.MatchAny(any=[plain]))]
                )
            )
            a = qdrant.query_points(name, query=vector, using=DENSE_VECTOR, query_filter=where, limit=20)
            b = qdrant.query_points(name, query=vector, using=DENSE_VECTOR, query_filter=plain_filter, limit=20)
            assert [(p.id, p.score) for p in a.points] == [(p.id, p.score) for p in b.points]
        retriever = BookRetriever.from_settings(store, settings)
        assert retriever.invoke(question, k=20)  # the product's hybrid path answers through the filter
    assert visible_points(qdrant, settings) == all_points(qdrant, settings)
    assert qdrant.count(name, count_filter=VISIBLE).count == qdrant.count(name).count
    assert any(p["page_content"].startswith("Pears") for p in visible_points(qdrant, settings).values())


@pytest.mark.skipif(QDRANT_URL is not None, reason="the embedded engine's read gate (a server applies per segment)")
def test_readers_during_replacements_see_one_whole_version_of_a_file(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, small: Settings, book: Path
) -> None:
    """A reader scrolling and searching while a file is replaced again and again always sees exactly one of its
    versions, whole: never some chunks of each, never none."""
    ingest_into(qdrant, embeddings, small, book)
    total = len(visible_points(qdrant, small, "book/long.md"))
    seen: list[set[str]] = []
    wrong: list[str] = []
    stop = threading.Event()
    vector = embeddings.embed_query("which row holds the trees")

    def read() -> None:
        where = build_filter(["book/long.md"])
        while not stop.is_set():
            points, _ = qdrant.scroll(small.qdrant_collection, scroll_filter=where, limit=1000, with_payload=True)
            texts = " ".join(str((p.payload or {}).get("page_content")) for p in points)
            seen.append(set(re.findall(r"holds (\w+) trees", texts)))
            found = qdrant.query_points(
                small.qdrant_collection, query=vector, using=DENSE_VECTOR, query_filter=where, limit=total + 5
            ).points
            if len(points) != total or len(found) != total:
                wrong.append(f"a reader saw {len(points)} (scroll) and {len(found)} (search) of {total} chunks")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for fruit in ["quince", "cherry", "apricot"]:
            (book / "long.md").write_text(long_chapter(fruit), encoding="utf-8")
            Indexer(qdrant, embeddings, small, embeddings.count_tokens, batch_size=4).ingest(
                list(discover_files([book])), book.parent
            )
    finally:
        stop.set()
        reader.join()
    mixed = [fruits for fruits in seen if len(fruits) != 1]
    assert seen and not mixed, f"{len(mixed)} of {len(seen)} reads saw a mix: {mixed[:3]}"
    assert not wrong, wrong[:3]
    assert len({next(iter(f)) for f in seen}) >= 2  # the reads did span replacements
    assert marked(qdrant, small) == 0 and SWAPPED_KEY not in str(all_points(qdrant, small))


def test_on_a_shared_store_a_run_leaves_another_runs_young_staged_chunks_and_removes_a_dead_runs(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path
) -> None:
    """On a Qdrant server two ingests can write into one collection: the second one's start must not delete (or
    show) the chunks the first has staged and is about to swap in, while a dead run's old ones still go."""
    assert not ingest_into(qdrant, embeddings, settings, book_dir).failed
    visible_before = visible_points(qdrant, settings)
    chapter = book_dir / "cider.md"
    chapter.write_text(long_chapter("cider", parts=3), encoding="utf-8")
    writing = Indexer(qdrant, embeddings, settings)  # another run, between staging and its swap
    chunks = writing.chunks_for(chapter, "book/cider.md")
    writing.write(chunks, embeddings.embed_documents([c.embed_text for c in chunks]), staged="the-other-run")
    theirs = models.Filter(must=[models.FieldCondition(key=STAGED_KEY, match=models.MatchValue(value="the-other-run"))])

    starting = Indexer(qdrant, embeddings, settings)
    starting.shared = True  # as against a server (QDRANT_URL); the embedded store is one process's alone
    report = starting.ingest(list(discover_files([book_dir / "pruning.md"])), book_dir.parent)
    assert qdrant.count(settings.qdrant_collection, count_filter=theirs, exact=True).count == len(chunks)
    assert visible_points(qdrant, settings) == visible_before  # still hidden: not unmarked, not shown
    assert any("left in place" in note for note in report.notes)

    hours_ago = int(time.time()) - 2 * 3600  # that run died long ago
    qdrant.set_payload(
        settings.qdrant_collection, {STAGED_AT_KEY: hours_ago}, points=models.FilterSelector(filter=theirs), wait=True
    )
    recovered = starting.recover()
    assert (recovered.deleted, recovered.kept) == (len(chunks), 0)
    assert qdrant.count(settings.qdrant_collection, count_filter=theirs, exact=True).count == 0
    assert visible_points(qdrant, settings) == visible_before
