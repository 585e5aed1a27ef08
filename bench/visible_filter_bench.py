"""What the readers' visibility filter (chains.vectorstore.VISIBLE, which hides an ingest's staged and replaced
chunks) costs a search: the product's hybrid query (`BookRetriever._query_points`) with and without it, the two
interleaved question by question, on the embedded engine at the given sizes (the humanoid book and noisy copies of
it, as bench.edge_bench builds them, written through the product's client and collection layout).

    .venv/bin/python -m bench.visible_filter_bench --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qdrant_client import models

from bench.edge_bench import DATASETS, SCALE_BOOK, book_points, embeddings_model, scale_questions, scaled_points
from chains.edge_client import EdgeClient
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import DENSE_VECTOR, SPARSE_VECTOR, build_vector_store, ensure_collection


class _NoEmbeddings:
    """The questions' vectors are computed once beforehand; the store never embeds."""

    def embed_query(self, text: str) -> list[float]:
        raise AssertionError("not used")

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise AssertionError("not used")


def run(sizes: Sequence[int], queries: int) -> list[dict[str, Any]]:
    base = book_points(SCALE_BOOK, DATASETS[SCALE_BOOK][0], embeddings_model)
    questions, vectors = scale_questions(embeddings_model, queries)
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="visible-bench-") as folder:
            settings = Settings(_env_file=None, qdrant_path=Path(folder), qdrant_collection="visible_bench")  # type: ignore[call-arg]
            client = EdgeClient(Path(folder) / "edge")
            try:
                ensure_collection(client, settings, len(base[0].dense))  # type: ignore[arg-type]
                points = scaled_points(base, size)
                started = time.perf_counter()
                for start in range(0, len(points), 1000):
                    client.upsert(
                        settings.qdrant_collection,
                        [
                            models.PointStruct(
                                id=p.id,
                                vector={DENSE_VECTOR: p.dense, **({SPARSE_VECTOR: p.sparse} if p.sparse else {})},
                                payload=p.payload,
                            )
                            for p in points[start : start + 1000]
                        ],
                    )
                client.optimize(settings.qdrant_collection)
                written = time.perf_counter() - started
                store = build_vector_store(client, settings, _NoEmbeddings())  # type: ignore[arg-type]
                retriever = BookRetriever.from_settings(store, settings)
                _, with_filter = retriever._options({})
                without = dataclasses.replace(with_filter, filter=None)  # type: ignore[arg-type]
                timings: dict[str, list[float]] = {"with VISIBLE": [], "without": []}
                same = 0
                for _ in range(2):  # the first round warms the caches
                    for label in timings:
                        timings[label].clear()
                    same = 0
                    for question in questions:
                        results = {}
                        for label, options in (("with VISIBLE", with_filter), ("without", without)):
                            began = time.perf_counter()
                            found = retriever._query_points(vectors[question], question, 5, options)
                            timings[label].append((time.perf_counter() - began) * 1000)
                            results[label] = [(p.id, p.score) for p in found]
                        same += results["with VISIBLE"] == results["without"]
                row: dict[str, Any] = {"chunks": size, "written_s": round(written, 1), "same_results": same}
                for label, values in timings.items():
                    ordered = sorted(values)
                    row[label] = {
                        "p50_ms": round(statistics.median(ordered), 2),
                        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
                    }
                row["queries"] = len(questions)
            finally:
                client.close()
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10_000])
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.sizes, args.queries), indent=2))


if __name__ == "__main__":
    main()
