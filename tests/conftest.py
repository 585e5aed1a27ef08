"""Shared fixtures: settings isolated from the developer's environment, the real local embedding model, and a
real Qdrant (embedded on disk by default; the server at QDRANT_URL when it is set), one fresh collection a test.

Real model calls are impossible here: the OpenAI key is removed and the base URL points at a closed port.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from langchain_core.language_models import BaseChatModel
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings, build_embeddings
from chains.settings import Settings
from rag_api.app import create_app
from rag_api.state import Overrides

QDRANT_URL = os.environ.get("QDRANT_URL")
CLOSED_PORT_URL = "http://127.0.0.1:9/v1"
SERVER_SKIP_REASON = "needs a Qdrant server: set QDRANT_URL=http://127.0.0.1:6333 after `docker compose up -d qdrant`"

SAMPLE_CHAPTER = """---
title: Watering Young Trees
---

# Watering Young Trees

Young fruit trees need deep, infrequent watering. Give each tree about twenty litres once a week in the first
summer, more in a heat wave, so that roots grow down instead of spreading near the surface.

## Mulch

A ring of wood-chip mulch, eight centimetres deep and kept a hand's width from the trunk, holds moisture in the
soil and keeps grass from competing with the tree for water.

## The drip logger

The orchard keeps a tiny moisture logger. Start it with:

```bash
moisture-log --probe A3 --interval 15m
```

It writes one line every fifteen minutes to the log file.
"""


# One chapter of subsections, cut into small chunks (STRINGS_SETTINGS): a question about adding a letter is found by
# "Concatenating strings", and its passage, joined with the nearby chunks of the chapter, is quoted (by the
# question's words) from "Internal representation".
STRINGS_CHAPTER = """# Strings

## Storing text

A string holds text as a growable sequence of bytes, and the bytes are always valid UTF-8. Each string owns its
buffer on the heap, with a length and a capacity, so that pushing more text rarely needs a new allocation.

Creating a string from a literal copies the literal's bytes into that buffer. An empty string allocates nothing
until the first character is pushed, and the capacity doubles as the text grows.

### Internal representation

Inside, a string is a vector of bytes. The word "hola" takes four bytes, one per letter, but the Cyrillic word
"Здравствуйте" takes twenty-four bytes, since each of its letters takes two bytes in UTF-8.

A byte index into such a string would often land in the middle of a letter, and the byte there is not a
character a reader would recognise: it is only half of one.

## Indexing into strings

For this reason the language does not let you write `s[0]` to get the first character of a string: the compiler
rejects indexing a string by an integer. Use the `chars` method to walk its characters, or slice it with a range
of bytes when you know the boundaries.

## Concatenating strings

The `+` operator joins two strings, taking ownership of the first and borrowing the second. The `format!` macro
joins many strings without taking ownership of any of them.
Adding a character at the end is done with `push`, and a whole slice with `push_str`; neither takes ownership of
what it is given, so the slice can still be used afterwards.

## Comparing strings

Two strings are equal when their bytes are equal. Comparison is by byte, not by what a reader would call the same
letter, so an accented letter written in two ways compares as two different strings.
"""
STRINGS_SETTINGS = {"chunk_size": 64, "chunk_overlap": 0, "source_highlights": "lexical"}
STRINGS_QUESTION = "Can I add one letter at the end of a string?"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `qdrant_server` only make sense against a server: skip them, saying how, without one."""
    if QDRANT_URL:
        return
    skip = pytest.mark.skip(reason=SERVER_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("qdrant_server") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_real_model_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tracing stays off too: it would send the tests' questions and passages to LangSmith.
    for name in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_API_URL",
        "CHAT_MODEL",
        "EMBEDDING_PROVIDER",
        "QDRANT_COLLECTION",
        "LANGSMITH_TRACING",
        "LANGSMITH_API_KEY",
        "LANGCHAIN_TRACING_V2",
        "LANGCHAIN_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", CLOSED_PORT_URL)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", CLOSED_PORT_URL.removesuffix("/v1"))


@pytest.fixture(scope="session")
def embeddings() -> LocalEmbeddings:
    """The real packaged embedding model, loaded once for the whole run."""
    model = build_embeddings(Settings(_env_file=None))  # type: ignore[call-arg]
    assert isinstance(model, LocalEmbeddings)
    return model


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for one test: its own collection, on the server at QDRANT_URL or in an embedded store."""
    values: dict[str, Any] = {
        "qdrant_path": tmp_path / "qdrant",
        "qdrant_collection": f"test_{uuid.uuid4().hex[:12]}",
        "openai_base_url": CLOSED_PORT_URL,
        "database_url": f"sqlite:///{tmp_path / 'records.sqlite3'}",
    }
    if QDRANT_URL:
        values["qdrant_url"] = QDRANT_URL
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def qdrant(settings: Settings) -> Iterator[QdrantClient]:
    from chains.vectorstore import build_qdrant_client

    client = build_qdrant_client(settings)
    yield client
    if QDRANT_URL and client.collection_exists(settings.qdrant_collection):
        client.delete_collection(settings.qdrant_collection)
    client.close()


@pytest.fixture
def book_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "book"
    folder.mkdir()
    (folder / "watering.md").write_text(SAMPLE_CHAPTER, encoding="utf-8")
    (folder / "pruning.md").write_text(
        "# Pruning\n\nPrune apple trees in late winter, when they are dormant, cutting just above an outward-facing "
        "bud. Remove the three Ds first: dead, damaged and diseased wood.\n\n## Summer pruning\n\nA light summer "
        "pruning in July slows vigorous growth and lets sunlight reach the ripening fruit.\n",
        encoding="utf-8",
    )
    return folder


def ingest_into(client: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, *paths: Path) -> Any:
    from chains.vectorstore import ensure_collection
    from ingest.indexer import Indexer, discover_files

    ensure_collection(client, settings, embeddings.dimension)
    indexer = Indexer(client, embeddings, settings, embeddings.count_tokens)
    base = paths[0].parent
    return indexer.ingest(list(discover_files(paths)), base)


@pytest.fixture
def indexed_book(qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, book_dir: Path) -> Path:
    report = ingest_into(qdrant, embeddings, settings, book_dir)
    assert not report.failed
    return book_dir


async def vocabulary_ready(app: FastAPI, qdrant: QdrantClient) -> None:
    """Wait until the app has read the book's vocabulary (a background read at start-up and after an ingest)."""
    for _ in range(200):
        if app.state.rag.vocabulary.current(qdrant) is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the book's vocabulary was never read")


async def app_client(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, chat_model: BaseChatModel | None = None
) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    app = create_app(settings, Overrides(chat_model=chat_model, embeddings=embeddings, client=qdrant))
    async with LifespanManager(app) as manager:
        transport = ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client
