"""Sources link to their section on the book's site: the repository's sample book ingested by the real CLI (from
the repository folder, as `make ingest` does), real embeddings, an embedded Qdrant, then every face of the API.
BOOK_BASE_URL is applied per answer: a new base on the same store, with no re-ingest, shows up at once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from httpx import AsyncClient
from httpx_sse import aconnect_sse
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from chains.vectorstore import build_qdrant_client
from ingest.cli import main as ingest_main
from tests.conftest import (
    QDRANT_URL,
    STRINGS_CHAPTER,
    STRINGS_QUESTION,
    STRINGS_SETTINGS,
    app_client,
    ingest_into,
)
from tests.test_ingest_cli import cli_env

pytestmark = pytest.mark.integration

SAMPLE_BOOK = Path(__file__).resolve().parent.parent / "sample_book"
QUESTION = "How deep should the planting hole be?"
BASE = "https://x/docs/"
EXPECTED = "https://x/docs/planting#depth-and-width"


@pytest.fixture
def sample_store(settings: Settings) -> Iterator[QdrantClient]:
    """The sample book ingested by `rag-ingest sample_book` run from the repository, then the store opened."""
    result = CliRunner().invoke(ingest_main, [str(SAMPLE_BOOK), "-q"], env=cli_env(settings), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = build_qdrant_client(settings)
    yield client
    if QDRANT_URL and client.collection_exists(settings.qdrant_collection):
        client.delete_collection(settings.qdrant_collection)
    client.close()


async def serve(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, base: str | None
) -> AsyncIterator[AsyncClient]:
    configured = settings.model_copy(update={"book_base_url": base})
    # No chat model: extractive answers carry the same sources as generated ones, and no model is faked.
    async for _, http in app_client(configured, embeddings, qdrant, None):
        yield http


def depth_and_width(sources: list[dict[str, Any]]) -> dict[str, Any]:
    return next(s for s in sources if s["heading_path"][-1:] == ["Depth and Width"])


async def test_every_face_links_the_planting_hole_to_its_section(
    settings: Settings, embeddings: LocalEmbeddings, sample_store: QdrantClient
) -> None:
    stored, _ = sample_store.scroll(settings.qdrant_collection, limit=10_000, with_payload=True)
    sources = {str((p.payload or {})["metadata"]["source"]) for p in stored}
    assert "03-planting.md" in sources and not any(s.startswith("sample_book/") for s in sources)

    async for http in serve(settings, embeddings, sample_store, BASE):
        found = (await http.post("/search", json={"query": QUESTION, "k": 3})).json()["results"]
        top = found[0]["metadata"]
        assert top["heading_path"][-1] == "Depth and Width"
        assert (top["url"], top["page_path"], top["anchor"]) == (EXPECTED, "planting", "depth-and-width")

        answer = (await http.post("/ask", json={"question": QUESTION, "stream": False})).json()
        source = depth_and_width(answer["sources"])
        assert (source["url"], source["page_path"], source["anchor"]) == (EXPECTED, "planting", "depth-and-width")

        events = []
        async with aconnect_sse(http, "POST", "/ask", json={"question": QUESTION, "stream": True}) as stream:
            async for sse in stream.aiter_sse():
                events.append((sse.event, json.loads(sse.data)))
        streamed = next(data for event, data in events if event == "sources")["sources"]
        assert depth_and_width(streamed)["url"] == EXPECTED

        chat = {
            "id": "c1",
            "trigger": "submit-message",
            "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": QUESTION}]}],
        }
        parts = []
        async with aconnect_sse(http, "POST", "/api/chat", json=chat) as stream:
            async for sse in stream.aiter_sse():
                if sse.data != "[DONE]":
                    parts.append(json.loads(sse.data))
        documents = [p["providerMetadata"]["bookrag"] for p in parts if p["type"] == "source-document"]
        linked = next(d for d in documents if d["headingPath"][-1:] == ["Depth and Width"])
        assert (linked["url"], linked["pagePath"], linked["anchor"]) == (EXPECTED, "planting", "depth-and-width")

        completion = await http.post(
            "/v1/chat/completions", json={"model": "bookrag", "messages": [{"role": "user", "content": QUESTION}]}
        )
        assert depth_and_width(completion.json()["sources"])["url"] == EXPECTED


async def test_a_new_base_url_shows_up_without_a_reingest(
    settings: Settings, embeddings: LocalEmbeddings, sample_store: QdrantClient
) -> None:
    before = sample_store.scroll(settings.qdrant_collection, limit=10_000, with_payload=True)[0]
    async for http in serve(settings, embeddings, sample_store, BASE):
        first = (await http.post("/ask", json={"question": QUESTION, "stream": False})).json()
        assert depth_and_width(first["sources"])["url"] == EXPECTED
    async for http in serve(settings, embeddings, sample_store, "https://books.example.org/orchard"):
        moved = (await http.post("/ask", json={"question": QUESTION, "stream": False})).json()
        found = (await http.post("/search", json={"query": QUESTION, "k": 1})).json()["results"][0]
        assert depth_and_width(moved["sources"])["url"] == "https://books.example.org/orchard/planting#depth-and-width"
        assert found["metadata"]["url"] == "https://books.example.org/orchard/planting#depth-and-width"
    async for http in serve(settings, embeddings, sample_store, None):
        unset = (await http.post("/ask", json={"question": QUESTION, "stream": False})).json()
        source = depth_and_width(unset["sources"])
        assert source["url"] is None and (source["page_path"], source["anchor"]) == ("planting", "depth-and-width")
    after = sample_store.scroll(settings.qdrant_collection, limit=10_000, with_payload=True)[0]
    assert {p.id for p in after} == {p.id for p in before}  # the same points: nothing was written again


def test_the_sample_books_pages_are_where_docusaurus_puts_them(settings: Settings, sample_store: QdrantClient) -> None:
    stored, _ = sample_store.scroll(settings.qdrant_collection, limit=10_000, with_payload=True)
    pages = {(p.payload or {})["metadata"]["source"]: (p.payload or {})["metadata"]["page_path"] for p in stored}
    assert pages == {
        "01-site-and-soil.md": "site-and-soil",
        "02-choosing-trees.md": "choosing-trees",
        "03-planting.md": "planting",
        "04-pruning-and-pollination.mdx": "pruning-and-pollination",
        "05-pests-harvest-and-storage.md": "pests-harvest-and-storage",
    }
    anchors = {(p.payload or {})["metadata"].get("anchor") for p in stored}
    assert {"depth-and-width", "is-it-ripe", "rootstocks-the-hidden-half-of-the-tree"} <= anchors


async def test_a_passage_joined_across_subsections_links_its_quote_to_the_subsection_holding_it(
    tmp_path: Path, settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    book = tmp_path / "book"
    book.mkdir()
    (book / "strings.md").write_text(STRINGS_CHAPTER, encoding="utf-8")
    small = settings.model_copy(update={**STRINGS_SETTINGS, "book_base_url": BASE})
    assert not ingest_into(qdrant, embeddings, small, book / "strings.md").failed  # the book's folder as its root
    async for _, http in app_client(small, embeddings, qdrant, None):
        answer = (await http.post("/ask", json={"question": STRINGS_QUESTION, "stream": False})).json()
        found = (await http.post("/search", json={"query": STRINGS_QUESTION})).json()["results"][0]
    spanned = found["metadata"]["sections"]  # /search shows them too, each with its link
    assert spanned[1]["url"] == BASE + "strings#internal-representation"
    source = answer["sources"][0]
    assert source["heading_path"] == ["Strings", "Concatenating strings"]  # the chunk it was found by
    assert source["url"] == BASE + "strings#concatenating-strings"
    # It spans the chapter's subsections; each starts where its text does and links to its own heading.
    text, sections = source["text"], source["sections"]
    assert [s["heading_path"][-1] for s in sections] == [
        "Storing text",
        "Internal representation",
        "Indexing into strings",
        "Concatenating strings",
    ]
    assert text[sections[1]["start"] :].startswith("Inside, a string is a vector of bytes.")
    assert text[sections[3]["start"] :].startswith("The + operator joins two strings")
    assert sections[1]["url"] == BASE + "strings#internal-representation"
    # The quote is from "Internal representation" alone, and the answer names that section, not the one it was
    # found by.
    (start, end), *_ = source["highlights"]
    assert sections[1]["start"] <= start < end <= sections[2]["start"]
    assert "**Strings > Storing text > Internal representation**" in answer["answer"]
    assert "**Strings > Concatenating strings**" not in answer["answer"]
