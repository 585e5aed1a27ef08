"""Queries while an admin ingest writes to the embedded store: never a 5xx, and every chunk stored exactly once.

The service runs queries and the admin ingest in worker threads on one client; the embedded store is Qdrant's
engine in-process (`chains.edge_client`), safe under concurrent reads and writes with no lock of ours (the
previous embedded store, qdrant-client's local mode, failed here with `IndexError: index 200 is out of bounds`).
The embedding model here is LangChain's deterministic fake on purpose: what is under test is the store, and the
real model would take minutes to embed the thousands of chunks that make the writes many and long enough for
collisions to be likely.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest
from httpx import AsyncClient
from langchain_core.embeddings import DeterministicFakeEmbedding
from pydantic import SecretStr
from qdrant_client import QdrantClient

from chains.edge_client import EdgeClient
from chains.settings import Settings
from chains.vectorstore import METADATA_KEY
from tests.conftest import QDRANT_URL, app_client

pytestmark = pytest.mark.integration

ADMIN = {"X-API-Key": "admin-key-0123456789abcdef"}
FILES = 40
PARAGRAPHS = 40
CLIENTS = 6


def write_book(root: Path) -> None:
    book = root / "book"
    book.mkdir(parents=True)
    for n in range(FILES):
        paragraphs = [
            f"Paragraph {p} of chapter {n}: the orchard keeps {p} rows of trees, watered every {n + p} days."
            for p in range(PARAGRAPHS)
        ]
        (book / f"chapter-{n:02d}.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")


async def query_until(http: AsyncClient, stop: asyncio.Event, statuses: list[int], errors: list[str]) -> None:
    question = 0
    while not stop.is_set():
        question += 1
        if question % 2:
            response = await http.post("/search", json={"query": f"how often are rows watered {question}", "k": 3})
        else:
            response = await http.post("/ask", json={"question": f"how many rows of trees {question}?"})
        statuses.append(response.status_code)
        if "internal_error" in response.text:
            errors.append(response.text[:300])


@pytest.mark.skipif(QDRANT_URL is not None, reason="the embedded engine; a server is tested by its makers")
async def test_queries_during_an_admin_ingest_never_fail_and_every_chunk_is_stored_once(
    settings: Settings, qdrant: QdrantClient, tmp_path: Path
) -> None:
    assert isinstance(qdrant, EdgeClient)
    root = tmp_path / "root"
    write_book(root)
    admin = settings.model_copy(
        update={
            "ingest_root": root,
            "admin_api_keys": [SecretStr(ADMIN["X-API-Key"])],
            "chunk_size_unit": "chars",
            "chunk_size": 160,
            "chunk_overlap": 0,
            "rate_limit_per_minute": 0,
        }
    )
    embeddings = DeterministicFakeEmbedding(size=64)
    statuses: list[int] = []
    errors: list[str] = []
    async for _, http in app_client(admin, embeddings, qdrant):  # type: ignore[arg-type]
        # A first ingest makes the collection and some points, so that queries read while the second one writes.
        first = await http.post("/admin/ingest", json={"paths": ["book/chapter-00.txt"]}, headers=ADMIN)
        assert first.status_code == 200, first.text
        stop = asyncio.Event()
        queries = [asyncio.create_task(query_until(http, stop, statuses, errors)) for _ in range(CLIENTS)]
        try:
            response = await http.post("/admin/ingest", json={"paths": ["book"]}, headers=ADMIN)
        finally:
            stop.set()
            await asyncio.gather(*queries)
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["failed"] == 0
    assert len(statuses) > 20
    assert [s for s in statuses if s >= 500] == [] and errors == []

    points, offset = [], None
    while True:
        page, offset = qdrant.scroll(settings.qdrant_collection, limit=1000, offset=offset, with_payload=True)
        points.extend(page)
        if offset is None:
            break
    metadata = [p.payload[METADATA_KEY] for p in points if p.payload]  # type: ignore[index]
    positions = Counter((m["source"], m["chunk_index"]) for m in metadata)
    assert max(positions.values()) == 1, "a chunk stored twice"
    per_source = Counter(m["source"] for m in metadata)
    assert len(per_source) == FILES
    expected = {f["source"]: f["added"] + f["updated"] + f["unchanged"] for f in report["files"]}
    assert dict(per_source) == expected
    assert all(m["chunk_count"] == per_source[m["source"]] for m in metadata), json.dumps(metadata[:2])
