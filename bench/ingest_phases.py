"""Where a first ingest's time goes: each phase alone, in CPU and wall seconds, bookrag next to the plain recipe.

    .venv/bin/python -m bench.ingest_phases /work/shared/corpus/humanoid-book

CPU seconds (user + system of this process, every thread) move less with the machine's load than wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from langchain_core.documents import Document
from langchain_text_splitters import RecursiveCharacterTextSplitter

from bench.ingest_bench import MARKDOWN, SentenceTransformerEmbeddings
from chains.embeddings import build_embeddings, packaged_model_path
from chains.settings import Settings
from chains.vectorstore import build_qdrant_client, ensure_collection
from ingest.indexer import Indexer, discover_files, source_key

_T = TypeVar("_T")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def phase(name: str, run: Callable[[], _T]) -> _T:
    cpu, wall = cpu_seconds(), time.perf_counter()
    result = run()
    print(f"| {name} | {cpu_seconds() - cpu:.1f} | {time.perf_counter() - wall:.1f} | {os.getloadavg()[0]:.1f} |")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("book", type=Path)
    book: Path = parser.parse_args().book.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(_env_file=None, qdrant_path=Path(tmp) / "q", qdrant_collection="phases")  # type: ignore[call-arg]
        embeddings = build_embeddings(settings)
        embeddings.embed_documents(["warm up"])
        plain = SentenceTransformerEmbeddings(packaged_model_path(settings.embedding_model))
        plain.embed_documents(["warm up"])
        client = build_qdrant_client(settings)
        ensure_collection(client, settings, 384)
        indexer = Indexer(client, embeddings, settings)
        files = list(discover_files([book]))
        print("| phase | CPU s | wall s | load average after |")
        print("|---|---|---|---|")
        with indexer.parsing():  # one parse child for every file, as `Indexer.ingest` does
            chunks = phase(
                "bookrag: parse and split",
                lambda: [c for f in files for c in indexer.chunks_for(f, source_key(f, book.parent))],
            )
        vectors = phase(
            "bookrag: embed (ONNX Runtime)", lambda: embeddings.embed_documents([c.embed_text for c in chunks])
        )
        phase("bookrag: sparse vectors and upserts", lambda: indexer.write(chunks, vectors))
        client.close()
        documents = [
            Document(page_content=p.read_text(encoding="utf-8"))
            for p in sorted(book.rglob("*"))
            if p.suffix in MARKDOWN
        ]
        split = phase(
            "plain: split",
            lambda: RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200).split_documents(documents),
        )
        texts = [c.page_content for c in split]
        phase(
            "plain: embed (PyTorch, blocks of 64)",
            lambda: [v for i in range(0, len(texts), 64) for v in plain.embed_documents(texts[i : i + 64])],
        )
        print(f"\n{len(chunks)} bookrag chunks, {len(texts)} plain chunks")


if __name__ == "__main__":
    main()
