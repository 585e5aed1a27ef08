"""Ingest throughput: bookrag's indexer next to the plain LangChain way, on one Markdown book, in one run.

    .venv/bin/python -m bench.ingest_bench /work/shared/corpus/humanoid-book

Both ways use the same packaged embedding model (each loaded once, before any timing; for a model that ships only
an ONNX graph, EMBEDDING_MODEL=bge-small-en-v1.5, the plain recipe runs all-MiniLM-L6-v2, what the tutorials use,
and the int8 row is left out: that graph is int8 already) and a fresh embedded
Qdrant in a temporary folder. bookrag embeds documents through ONNX Runtime (`chains.onnx_encoder`: length-bucketed
batches, every core); the plain recipe runs the model as LangChain's `HuggingFaceEmbeddings` does, through
sentence-transformers on PyTorch (`SentenceTransformer.encode`, normalised), in the batches of 64 that
`QdrantVectorStore.add_texts` hands it. Measured:

- bookrag: `Indexer.ingest` (load with unstructured, heading-aware split, batch embed, upsert), first ingest and
  an unchanged re-ingest in the same process; then an unchanged re-ingest through the `rag-ingest` command in a
  new process (what an author runs: it includes Python start-up, imports and opening the store).
- LangChain: the files read as text, `RecursiveCharacterTextSplitter` (1000 characters, 200 overlap: about the
  same size as 256 MiniLM tokens), `QdrantVectorStore.from_documents`; run twice, since that is what an author
  would do without an indexer (the second run embeds everything again and stores every chunk twice).

Also bookrag with EMBEDDING_QUANTIZE=int8 (the int8 graph, made once beside the float one), same book, same run.

Prints a Markdown table (for docs/ingest.md), the ratio of the first ingests, and the machine and its load
average (the machine may be shared: ratios within one run are what count). CPU seconds are this process's, every
thread (bookrag's parse child is a separate process: not in them), and move less with the load than wall time.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_qdrant import QdrantVectorStore
from langchain_text_splitters import RecursiveCharacterTextSplitter

from chains.embeddings import build_embeddings, packaged_model_path, shipped_layout
from chains.settings import Settings
from chains.vectorstore import build_qdrant_client, ensure_collection
from ingest.indexer import DEFAULT_EXCLUDES, Indexer, discover_files

MARKDOWN = (".md", ".mdx", ".markdown")


class SentenceTransformerEmbeddings(Embeddings):
    """The plain recipe's embeddings: what `langchain_huggingface.HuggingFaceEmbeddings` does with
    `encode_kwargs={"normalize_embeddings": True}` (that package is not a dependency; the call is the same)."""

    def __init__(self, model_dir: Path) -> None:
        from sentence_transformers import SentenceTransformer

        self.client = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors = self.client.encode(texts, normalize_embeddings=True, show_progress_bar=False)
        return [[float(x) for x in row] for row in vectors]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bookrag_runs(book: Path, store: Path, embeddings: object, cli: bool = True) -> dict[str, float]:
    settings = Settings(_env_file=None, qdrant_path=store, qdrant_collection="bench_bookrag")  # type: ignore[call-arg]
    client = build_qdrant_client(settings)
    files = list(discover_files([book], (), DEFAULT_EXCLUDES))
    try:
        ensure_collection(client, settings, 384)
        indexer = Indexer(client, embeddings, settings)  # type: ignore[arg-type]
        cpu = cpu_seconds()
        first = indexer.ingest(files, book.parent)
        first_cpu = cpu_seconds() - cpu
        again = indexer.ingest(files, book.parent)
        points = client.count(settings.qdrant_collection, exact=True).count
    finally:
        client.close()
    assert not first.failed, first.summary()
    assert again.embedded == 0, again.summary()
    result = {
        "files": len(files),
        "chunks": first.added,
        "first_s": first.seconds,
        "first_cpu": first_cpu,
        "again_s": again.seconds,
        "points_after_two": points,
    }
    if not cli:
        return result
    env = {**os.environ, "QDRANT_PATH": str(store), "QDRANT_COLLECTION": "bench_bookrag"}
    started = time.perf_counter()
    cli = subprocess.run(
        [sys.executable, "-m", "ingest.cli", book.name, "-q"],
        cwd=book.parent,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    cli_seconds = time.perf_counter() - started
    assert "0 added, 0 updated" in cli.stdout, cli.stdout + cli.stderr
    return {**result, "cli_again_s": cli_seconds}


def langchain_runs(book: Path, store: Path, embeddings: object) -> dict[str, float]:
    def run() -> tuple[int, float, float]:
        started, cpu = time.perf_counter(), cpu_seconds()
        documents = [
            Document(page_content=path.read_text(encoding="utf-8"), metadata={"source": str(path)})
            for path in sorted(book.rglob("*"))
            if path.suffix in MARKDOWN
        ]
        chunks = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200).split_documents(documents)
        store_ = QdrantVectorStore.from_documents(
            chunks, embeddings, path=str(store), collection_name="bench_langchain"
        )
        seconds, used = time.perf_counter() - started, cpu_seconds() - cpu
        store_.client.close()
        return len(chunks), seconds, used

    chunks, first_s, first_cpu = run()
    _, again_s, _ = run()
    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(store))
    points = client.count("bench_langchain", exact=True).count
    client.close()
    return {
        "chunks": chunks,
        "first_s": first_s,
        "first_cpu": first_cpu,
        "again_s": again_s,
        "points_after_two": points,
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, load average {load:.1f} at start"


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("book", type=Path, help="a folder of Markdown/MDX chapters")
    args = parser.parse_args()
    book: Path = args.book.resolve()
    print(f"machine: {machine()}")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    started = time.perf_counter()
    embeddings = build_embeddings(settings)
    embeddings.embed_documents(["warm up"])
    print(f"model load, bookrag (ONNX Runtime): {time.perf_counter() - started:.1f}s (not in the figures below)")
    started = time.perf_counter()
    shipped = shipped_layout(settings) is not None
    plain_model = "all-MiniLM-L6-v2" if shipped else settings.embedding_model
    plain_embeddings = SentenceTransformerEmbeddings(packaged_model_path(plain_model))
    plain_embeddings.embed_documents(["warm up"])
    loaded = time.perf_counter() - started
    print(f"model load, plain (PyTorch, {plain_model}): {loaded:.1f}s (not in the figures below)")
    int8_embeddings = None
    if not shipped:
        started = time.perf_counter()
        int8_embeddings = build_embeddings(settings.model_copy(update={"embedding_quantize": "int8"}))
        int8_embeddings.embed_documents(["warm up"])
        print(f"model load, bookrag int8: {time.perf_counter() - started:.1f}s (not in the figures below)")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"load average (1/5/15 min) before bookrag: {load_average()}")
        ours = bookrag_runs(book, Path(tmp) / "bookrag", embeddings)
        int8 = None
        if int8_embeddings is not None:
            print(f"load average before bookrag int8: {load_average()}")
            int8 = bookrag_runs(book, Path(tmp) / "bookrag-int8", int8_embeddings, cli=False)
        print(f"load average before the plain recipe: {load_average()}")
        plain = langchain_runs(book, Path(tmp) / "langchain", plain_embeddings)
        print(f"load average at the end: {load_average()}")
    print()
    print(f"book: {book.name} ({ours['files']} files)")
    print()
    print("| way | chunks | first ingest | CPU s | chunks/s | unchanged re-ingest | points after two runs |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| bookrag `Indexer` | {ours['chunks']} | {ours['first_s']:.1f} s | {ours['first_cpu']:.1f} | "
        f"{ours['chunks'] / ours['first_s']:.1f} | "
        f"{ours['again_s']:.2f} s in process; {ours['cli_again_s']:.1f} s as `rag-ingest` | "
        f"{ours['points_after_two']} |"
    )
    if int8 is not None:
        print(
            f"| bookrag `Indexer`, EMBEDDING_QUANTIZE=int8 | {int8['chunks']} | {int8['first_s']:.1f} s | "
            f"{int8['first_cpu']:.1f} | {int8['chunks'] / int8['first_s']:.1f} | {int8['again_s']:.2f} s in process | "
            f"{int8['points_after_two']} |"
        )
    print(
        f"| LangChain `from_documents` | {plain['chunks']} | {plain['first_s']:.1f} s | {plain['first_cpu']:.1f} | "
        f"{plain['chunks'] / plain['first_s']:.1f} | {plain['again_s']:.1f} s (embeds all again) | "
        f"{plain['points_after_two']} (duplicates) |"
    )
    print()
    for name, way in (("bookrag", ours), ("bookrag int8", int8)):
        if way is None:
            continue
        print(
            f"first ingest, {name} / plain recipe: {way['first_s'] / plain['first_s']:.2f} wall, "
            f"{way['first_cpu'] / plain['first_cpu']:.2f} CPU"
        )


if __name__ == "__main__":
    main()
