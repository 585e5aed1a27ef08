"""Retrieval latency in the embedded Qdrant store at 1k, 10k and 100k chunks.

    .venv/bin/python -m bench.retrieval_bench                    # --sizes 1000,10000,100000

The stores hold synthetic chunks: random unit vectors of the embedding model's size with payloads shaped like
ingested ones (about 1,000 characters of text and the usual metadata), because embedding 100,000 real chunks on
this CPU would take hours (random vectors are HNSW's easy case: recall is measured by `bench.edge_bench --parts
hnsw` on real chunks). Each store is written once into the cache folder (`BENCH_CACHE_DIR`) and reused.

Measured per size: opening the store (Qdrant's engine in-process loads its segments), and the product's
retriever (`BookRetriever.ainvoke`: Qdrant query, documents with scores) p50/p95 over `--queries` questions whose
embeddings are already cached, so that the figure is the store's: hybrid (the default: dense + sparse prefetches
fused), hybrid with a `sources` filter, and dense only. The synthetic chunks carry the sparse vectors of their
text. Once: the query embedding itself for a new question (the real local model), p50/p95.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import common
from bench.book_store import add_synthetic_points
from chains.retrieval import limit_blas_threads

COLLECTION = "bench_retrieval"


def ensure_store(size: int, dimension: int, cache_dir: Path) -> tuple[Path, float | None]:
    """The cached store of `size` synthetic chunks; the seconds it took to write it, when written now."""
    from chains.settings import Settings
    from chains.vectorstore import build_qdrant_client, ensure_collection

    path = cache_dir / f"retrieval-edge-{size}-{dimension}" / "qdrant"
    done = path.parent / "complete"
    if done.exists():
        return path, None
    started = time.perf_counter()
    path.mkdir(parents=True, exist_ok=True)
    settings = Settings(_env_file=None, qdrant_path=path, qdrant_collection=COLLECTION)  # type: ignore[call-arg]
    client = build_qdrant_client(settings)
    try:
        if client.collection_exists(COLLECTION):
            client.delete_collection(COLLECTION)
        ensure_collection(client, settings, dimension)
        add_synthetic_points(client, COLLECTION, 0, size, dimension, "")
    finally:
        client.close()
    done.touch()
    return path, time.perf_counter() - started


TOPICS = [
    "gradient descent", "dropout", "batch normalization", "attention", "a transformer", "a convolution",
    "pooling", "a recurrent neural network", "an LSTM", "softmax regression", "weight decay", "the learning rate",
    "backpropagation", "overfitting", "a residual network", "word embeddings", "beam search", "ROS 2 topics",
    "a URDF model", "Gazebo", "Isaac Sim", "visual SLAM", "bipedal locomotion", "inverse kinematics",
]  # fmt: skip


def question_list(count: int) -> list[str]:
    from bench.stream_bench import TEMPLATES, take

    return take([t.format(topic) for t in TEMPLATES for topic in TOPICS], count)


async def timed_retrievals(retriever: Any, questions: Sequence[str], **options: Any) -> list[float]:
    times = []
    for question in questions:
        started = time.perf_counter()
        await retriever.ainvoke(question, **options)
        times.append(time.perf_counter() - started)
    return times


def bench_size(size: int, embeddings: Any, questions: Sequence[str], cache_dir: Path) -> dict[str, Any]:
    from chains.retrieval import BookRetriever
    from chains.settings import Settings
    from chains.vectorstore import build_qdrant_client, build_vector_store

    path, write_s = ensure_store(size, embeddings.dimension, cache_dir)
    settings = Settings(_env_file=None, qdrant_path=path, qdrant_collection=COLLECTION)  # type: ignore[call-arg]
    started = time.perf_counter()
    client = build_qdrant_client(settings)
    open_s = time.perf_counter() - started
    try:
        store = build_vector_store(client, settings, embeddings)
        hybrid = BookRetriever.from_settings(store, settings)  # the product's default (RETRIEVAL_MODE=hybrid)
        dense = BookRetriever.from_settings(store, settings.model_copy(update={"retrieval_mode": "dense"}))
        with common.new_event_loop_runner() as runner:
            # The first query after opening (the engine's files into the page cache): timed apart.
            first_query_s = sum(runner.run(timed_retrievals(hybrid, questions[:1])))
            runner.run(timed_retrievals(hybrid, questions[:3]))  # warm-up
            runner.run(timed_retrievals(dense, questions[:3]))
            plain = runner.run(timed_retrievals(hybrid, questions))
            filtered = runner.run(timed_retrievals(hybrid, questions, sources=["chapter_000/section_0000.md"]))
            dense_only = runner.run(timed_retrievals(dense, questions))
    finally:
        client.close()
    return {
        "chunks": size,
        "written_s": None if write_s is None else round(write_s, 1),
        "open_s": round(open_s, 2),
        "first_query_s": round(first_query_s, 2),
        "p50_ms": round(common.percentile(plain, 50) * 1000, 2),
        "p95_ms": round(common.percentile(plain, 95) * 1000, 2),
        "filtered_p50_ms": round(common.percentile(filtered, 50) * 1000, 2),
        "filtered_p95_ms": round(common.percentile(filtered, 95) * 1000, 2),
        "dense_p50_ms": round(common.percentile(dense_only, 50) * 1000, 2),
        "dense_p95_ms": round(common.percentile(dense_only, 95) * 1000, 2),
    }


def query_embedding_ms(embeddings: Any, questions: Sequence[str]) -> dict[str, float]:
    times = []
    for question in questions:
        started = time.perf_counter()
        embeddings.embed_query(question)
        times.append(time.perf_counter() - started)
    return {
        "runtime": getattr(embeddings, "query_runtime", "the provider"),
        "p50_ms": round(common.percentile(times, 50) * 1000, 2),
        "p95_ms": round(common.percentile(times, 95) * 1000, 2),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [common.machine_markdown(report["machine"]), ""]
    lines += [
        "| chunks | hybrid (default) p50 / p95 ms | hybrid + `sources` filter p50 / p95 ms | dense only p50 / p95 ms "
        "| opening the store s | first query (index read) s | writing it s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["sizes"]:
        written = "cached" if row["written_s"] is None else row["written_s"]
        lines.append(
            f"| {row['chunks']:,} | {row['p50_ms']} / {row['p95_ms']} | {row['filtered_p50_ms']} / "
            f"{row['filtered_p95_ms']} | {row['dense_p50_ms']} / {row['dense_p95_ms']} | {row['open_s']} "
            f"| {row['first_query_s']} | {written} |"
        )
    emb = report["query_embedding"]
    lines.append("")
    lines.append(
        f"Query embedding of a new question (local model through {emb['runtime']}, CPU): "
        f"p50 {emb['p50_ms']} ms, p95 {emb['p95_ms']} ms."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, embeddings: Any = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--cache-dir", type=Path, default=common.CACHE_DIR)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    info = common.machine()
    limit_blas_threads()  # as `rag-api` does at start-up
    if embeddings is None:
        from chains.embeddings import build_embeddings
        from chains.settings import Settings

        embeddings = build_embeddings(Settings(_env_file=None))  # type: ignore[call-arg]
    questions = question_list(args.queries)
    report: dict[str, Any] = {"machine": info, "query_embedding": query_embedding_ms(embeddings, questions)}
    # The questions' embeddings are cached now: what follows measures the store.
    report["sizes"] = [bench_size(size, embeddings, questions, args.cache_dir) for size in args.sizes]
    report["load_average_end"] = common.load_average()
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return report


if __name__ == "__main__":
    main()
