"""The benchmark book: real chapters ingested by `rag-ingest` into an embedded store kept in a cache folder,
padded with synthetic chunks to the size asked for.

    python -m bench.book_store                                   # humanoid-book (502 chunks) padded to 5,000
    python -m bench.book_store /work/shared/corpus/d2l --pad-to 0  # 4,910 real chunks (embedding: 8+ minutes)

The real part is the product's own ingest (`rag-ingest`, default chunk settings), so questions find real passages.
The padding is on purpose: embedding 5,000 real chunks takes 8 minutes on a quiet 2-core machine and close to an
hour on a busy one, while the embedded store searches by brute force, so its latency depends on how many vectors
it holds, not on what they mean. Padding chunks have random unit dense vectors (cosine near 0 to any question: they
never pass the score threshold), payloads shaped like real ones (under the source prefix `_bench_padding/`) and
the sparse vectors of their text, so that hybrid retrieval searches as many sparse vectors as a real book's.

The store lives in `BENCH_CACHE_DIR` (default `.bench-cache/` in the repository); `rag-ingest` is incremental,
so a later run finds every file unchanged and takes a couple of seconds. Delete the folder to start again.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import CACHE_DIR, ROOT

DEFAULT_BOOK = Path(os.environ.get("BENCH_BOOK", "/work/shared/corpus/humanoid-book"))
DEFAULT_SIZE = 5000
COLLECTION = "bench_book"
# Part of the cache key: a store written by an older layout (before sparse vectors) is not reused.
STORE_LAYOUT = "dense+sparse-1"
PADDING_PREFIX = "_bench_padding/"
_PADDING_NAMESPACE = uuid.UUID("0b5c3f7e-2d1a-4c8e-9f6b-7a1e5d3c2b10")
_TEXT = (
    "model training layer network gradient loss weight vector matrix tensor function value input output data batch "
    "learning rate optimizer parameter attention sequence token embedding feature image convolution"
)
WORDS = _TEXT.split()


@dataclass(frozen=True)
class BookStore:
    book: Path
    qdrant_path: Path
    collection: str
    chunks: int
    real_chunks: int
    ingest_seconds: float
    headings: tuple[str, ...]

    def env(self) -> dict[str, str]:
        """The environment a server needs to read this store."""
        return {"QDRANT_PATH": str(self.qdrant_path), "QDRANT_COLLECTION": self.collection}


def synthetic_payload(index: int, rng: random.Random, prefix: str = "") -> dict[str, Any]:
    """A payload shaped like an ingested chunk's: about 1,000 characters of text and the usual metadata."""
    text = " ".join(rng.choice(WORDS) for _ in range(160))
    chapter = f"{prefix}chapter_{index // 500:03d}"
    return {
        "page_content": text,
        "metadata": {
            "source": f"{chapter}/section_{index // 50:04d}.md",
            "title": f"Section {index // 50}",
            "chapter": chapter,
            "heading_path": [f"Chapter {index // 500}", f"Section {index // 50}"],
            "section": f"Section {index // 50}",
            "chunk_index": index % 50,
            "content_hash": uuid.UUID(int=rng.getrandbits(128)).hex,
            "file_hash": "0" * 64,
            "chunk_count": 50,
            "doc_id": f"synthetic-{prefix}{index}",
            "synthetic": True,
        },
    }


def add_synthetic_points(client: Any, collection: str, start: int, count: int, dimension: int, prefix: str) -> None:
    """Points `start`..`start + count - 1` with random unit vectors (seeded: the same every run)."""
    import numpy as np
    from qdrant_client import models

    from chains.sparse import encode_document
    from chains.vectorstore import DENSE_VECTOR, SPARSE_VECTOR

    def vectors_of(dense: list[float], text: str) -> dict[str, Any]:
        sparse = encode_document(text)
        if not sparse.indices:
            return {DENSE_VECTOR: dense}
        return {DENSE_VECTOR: dense, SPARSE_VECTOR: models.SparseVector(indices=sparse.indices, values=sparse.values)}

    batch = 2000
    for first in range(start, start + count, batch):
        size = min(batch, start + count - first)
        generator = np.random.default_rng(first)
        rng = random.Random(first)
        vectors = generator.standard_normal((size, dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        payloads = [synthetic_payload(first + i, rng, prefix) for i in range(size)]
        points = [
            models.PointStruct(
                id=str(uuid.uuid5(_PADDING_NAMESPACE, f"{prefix}{first + i}")),
                vector=vectors_of(vectors[i].tolist(), payloads[i]["page_content"]),
                payload=payloads[i],
            )
            for i in range(size)
        ]
        client.upsert(collection, points, wait=True)


def pad_and_describe(qdrant_path: Path, collection: str, pad_to: int) -> tuple[int, int, tuple[str, ...]]:
    """Add padding up to `pad_to` points; the total, the real chunks and the real chunks' headings."""
    from qdrant_client import models

    from chains.settings import Settings
    from chains.vectorstore import build_qdrant_client

    settings = Settings(_env_file=None, qdrant_path=qdrant_path, qdrant_collection=collection)  # type: ignore[call-arg]
    client = build_qdrant_client(settings)
    try:
        padding = models.Filter(
            must=[models.FieldCondition(key="metadata.synthetic", match=models.MatchValue(value=True))]
        )
        total = client.count(collection, exact=True).count
        padded = client.count(collection, count_filter=padding, exact=True).count
        real = total - padded
        if pad_to > total:
            dimension = _dimension(client, collection)
            add_synthetic_points(client, collection, padded, pad_to - total, dimension, PADDING_PREFIX)
            total = pad_to
        headings: set[str] = set()
        offset = None
        while True:
            records, offset = client.scroll(collection, limit=1000, offset=offset, with_payload=True)
            for record in records:
                meta = (record.payload or {}).get("metadata") or {}
                path = meta.get("heading_path") or []
                if path and not str(meta.get("source", "")).startswith(PADDING_PREFIX):
                    headings.add(str(path[-1]))
            if offset is None:
                break
        return total, real, tuple(sorted(headings))
    finally:
        client.close()


def _dimension(client: Any, collection: str) -> int:
    from chains.vectorstore import DENSE_VECTOR

    vectors = client.get_collection(collection).config.params.vectors
    return int(vectors[DENSE_VECTOR].size)


def ingest_in_process(book: Path, qdrant_path: Path, embeddings: Any) -> None:
    """The same ingest as `rag-ingest`, with an embedding model already loaded (the smoke test's)."""
    from chains.settings import Settings
    from chains.vectorstore import build_qdrant_client, ensure_collection
    from ingest.indexer import Indexer, discover_files

    settings = Settings(_env_file=None, qdrant_path=qdrant_path, qdrant_collection=COLLECTION)  # type: ignore[call-arg]
    client = build_qdrant_client(settings)
    try:
        ensure_collection(client, settings, embeddings.dimension)
        report = Indexer(client, embeddings, settings, embeddings.count_tokens).ingest(
            list(discover_files([book])), book.parent
        )
    finally:
        client.close()
    if report.failed:
        raise RuntimeError(report.summary())


def ensure_book_store(
    book: Path = DEFAULT_BOOK,
    pad_to: int = DEFAULT_SIZE,
    cache_dir: Path = CACHE_DIR,
    quiet: bool = True,
    embeddings: Any = None,
) -> BookStore:
    """Ingest `book` into its cached store (quick when nothing changed), pad it to `pad_to` points, describe it.

    `rag-ingest` does the ingest, unless a loaded local embedding model is given (`embeddings`)."""
    book = book.resolve()
    key = hashlib.sha256(f"{book}:{STORE_LAYOUT}".encode()).hexdigest()[:10]
    qdrant_path = cache_dir / f"book-{book.name}-{key}" / "qdrant"
    qdrant_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if embeddings is not None:
        ingest_in_process(book, qdrant_path, embeddings)
    else:
        env = {**os.environ, "QDRANT_PATH": str(qdrant_path), "QDRANT_COLLECTION": COLLECTION}
        env.pop("QDRANT_URL", None)
        # No --prune: it would delete the padding, whose sources are not files of the book.
        argv = [sys.executable, "-m", "ingest.cli", str(book), "--base-dir", str(book.parent)]
        subprocess.run(argv + (["-q"] if quiet else []), cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    total, real, headings = pad_and_describe(qdrant_path, COLLECTION, pad_to)
    return BookStore(book, qdrant_path, COLLECTION, total, real, seconds, headings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("book", type=Path, nargs="?", default=DEFAULT_BOOK)
    parser.add_argument("--pad-to", type=int, default=DEFAULT_SIZE, help="points in all, padding included")
    args = parser.parse_args()
    store = ensure_book_store(args.book, args.pad_to, quiet=False)
    print(
        f"{store.chunks} chunks ({store.real_chunks} real, {len(store.headings)} headings) in {store.qdrant_path} "
        f"(ingest {store.ingest_seconds:.1f} s)"
    )


if __name__ == "__main__":
    main()
