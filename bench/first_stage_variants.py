"""First-stage recall variants for issue 19, measured against the product retriever on the cached stores of
`bench.eval_retrieval` (measured, not adopted: docs/retrieval.md, "Fusion with every candidate's two scores"):

    BENCH_CORPUS=../shared/corpus .venv/bin/python -m bench.first_stage_variants --books all

- **Score completion**: Qdrant's DBSF sums each list's normalised score, and a candidate missing from one list
  (the sparse list's 4th passage at the dense list's 30th place) gets nothing from it. Here both prefetch lists
  are read (the same depth as the product's), each candidate's missing score is filled in (its dense cosine from
  its stored vector; its BM25 score by a sparse query restricted to it), and the union is fused by the same rule
  (each list's mean ± 3 standard deviations, from its own top candidates, mapped to 0-1), then goes through the
  product's re-scoring and joins unchanged. Variants: only the dense or the sparse side filled in, the
  normalisation taken over the union, twice the depth. "no fill" reproduces the product's fusion, as a check.
- **Content-word query vector**: the dense query is the mean of the question's vector and that of its content
  words (stop words dropped), at weights 0.3 and 0.5, or the content words alone.
- **Pool**: the share of questions whose answering chunk is among the first 1 / 5 / 10 / 20 fused candidates,
  before re-scoring and joins: whether a variant finds more, rather than re-orders what the product finds.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from qdrant_client import models

from bench.eval_retrieval import DATASETS, Question, is_hit, load_questions, normalise, product_store
from chains.embeddings import build_embeddings
from chains.retrieval import BookRetriever, _Options, build_filter
from chains.settings import Settings
from chains.sparse import _STOPWORDS, encode_query
from chains.vectorstore import DENSE_VECTOR, SPARSE_VECTOR, build_vector_store

POOL_DEPTHS = (1, 5, 10, 20)


def dbsf_bounds(scores: Sequence[float]) -> tuple[float, float]:
    """Qdrant's distribution-based normalisation: a list's mean ± 3 standard deviations."""
    mean = statistics.fmean(scores)
    spread = statistics.pstdev(scores) if len(scores) > 1 else 0.0
    return mean - 3 * spread, mean + 3 * spread


def dbsf_normalised(score: float, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return 0.5 if high <= low else min(1.0, max(0.0, (score - low) / (high - low)))


class CompletedFusion(BookRetriever):
    """The product retriever with the fusion done here, over the union of both lists, missing scores filled in."""

    fill_dense: bool = True
    fill_sparse: bool = True
    union_bounds: bool = False
    depth_factor: int = 1

    def _query_points(
        self, vector: list[float], text: str, limit: int, options: _Options, depth: int | None = None
    ) -> list[models.ScoredPoint]:
        sparse = encode_query(text)
        if not sparse:
            return super()._query_points(vector, text, limit, options, depth)
        client, name = self.vector_store.client, self.vector_store.collection_name
        count = (depth or self.candidate_count(limit)) * self.depth_factor
        sparse_query = models.SparseVector(indices=sparse.indices, values=sparse.values)

        def search(query: Any, using: str, size: int, where: models.Filter | None) -> list[models.ScoredPoint]:
            return client.query_points(
                name, query=query, using=using, limit=size, query_filter=where, with_payload=True,
                with_vectors=[DENSE_VECTOR],
            ).points  # fmt: skip

        dense_points = search(vector, DENSE_VECTOR, count, options.filter)
        sparse_points = search(sparse_query, SPARSE_VECTOR, count, options.filter)
        dense = {p.id: p.score for p in dense_points}
        lexical = {p.id: p.score for p in sparse_points}
        bounds = dbsf_bounds(list(dense.values())), dbsf_bounds(list(lexical.values()))
        points = {p.id: p for p in (*sparse_points, *dense_points)}
        if self.fill_dense:
            query = np.asarray(vector, dtype=np.float32)
            query /= np.linalg.norm(query)
            for point in sparse_points:
                if point.id not in dense and isinstance(point.vector, dict):
                    stored = np.asarray(point.vector[DENSE_VECTOR], dtype=np.float32)
                    dense[point.id] = float(stored @ query / np.linalg.norm(stored))
        missing = [i for i in dense if i not in lexical] if self.fill_sparse else []
        if missing:
            only = models.Filter(must=[models.HasIdCondition(has_id=missing)])
            lexical.update({p.id: p.score for p in search(sparse_query, SPARSE_VECTOR, len(missing), only)})
            lexical.update({i: 0.0 for i in missing if i not in lexical})  # no query word in it
        if self.union_bounds:
            bounds = dbsf_bounds(list(dense.values())), dbsf_bounds(list(lexical.values()))
        fused = {
            i: sum(dbsf_normalised(s[i], b) for s, b in zip((dense, lexical), bounds, strict=True) if i in s)
            for i in points
        }
        ranked = sorted(points, key=lambda i: -fused[i])[:limit]
        return [
            models.ScoredPoint(
                id=i, version=points[i].version, score=fused[i], payload=points[i].payload, vector=points[i].vector
            )
            for i in ranked
        ]


class ContentWordQuery:
    """Embeddings whose query vector mixes in the vector of the question's content words (`weight` of it)."""

    def __init__(self, inner: Embeddings, weight: float) -> None:
        self.inner, self.weight = inner, weight

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed_query(self, text: str) -> list[float]:
        content = " ".join(w for w in re.findall(r"[\w'!?.-]+", text) if w.lower().strip("?.!") not in _STOPWORDS)
        whole = np.asarray(self.inner.embed_query(text))
        words = np.asarray(self.inner.embed_query(content or text))
        mixed = (1 - self.weight) * whole / np.linalg.norm(whole) + self.weight * words / np.linalg.norm(words)
        return [float(x) for x in mixed / np.linalg.norm(mixed)]


def first_hit(documents: Sequence[Document], question: Question) -> int | None:
    return next((rank for rank, d in enumerate(documents, 1) if is_hit(d, question)), None)


def pool_rank(retriever: BookRetriever, embeddings: Embeddings, question: Question) -> int | None:
    """Where the answering chunk is among the first fused candidates (before re-scoring and joins)."""
    depth = POOL_DEPTHS[-1]
    points = retriever._query_points(
        embeddings.embed_query(question.question), question.question, depth, _Options(build_filter(), None, None), depth
    )
    wanted = normalise(question.answer_contains)
    return next(
        (
            rank
            for rank, p in enumerate(points, 1)
            if (p.payload or {}).get("metadata", {}).get("source") == question.source
            and wanted in normalise(str((p.payload or {}).get("page_content", "")))
        ),
        None,
    )


def completed(**fields: Any) -> Callable[[Any, Settings], BookRetriever]:
    """A `CompletedFusion` with the product's settings and these fields."""

    def make(store: Any, settings: Settings) -> BookRetriever:
        retriever = CompletedFusion.from_settings(store, settings, None)
        for field, value in fields.items():
            setattr(retriever, field, value)
        return retriever

    return make


VARIANTS: dict[str, Callable[[Any, Settings], BookRetriever]] = {
    "product": lambda store, settings: BookRetriever.from_settings(store, settings, None),
    "no fill (the product's fusion, here)": completed(fill_dense=False, fill_sparse=False),
    "completed": completed(),
    "completed, dense side only": completed(fill_sparse=False),
    "completed, sparse side only": completed(fill_dense=False),
    "completed, bounds over the union": completed(union_bounds=True),
    "completed, twice the depth": completed(depth_factor=2),
}
QUERY_WEIGHTS = {"content words 0.3": 0.3, "content words 0.5": 0.5, "content words only": 1.0}


def run_book(name: str, embeddings: Embeddings) -> list[dict[str, Any]]:
    questions = load_questions(DATASETS[name][1])
    rows: list[dict[str, Any]] = []
    with product_store(name, embeddings) as (client, settings):
        store = build_vector_store(client, settings, embeddings)
        retrievers = {label: make(store, settings) for label, make in VARIANTS.items()}
        for label, weight in QUERY_WEIGHTS.items():
            mixed = build_vector_store(client, settings, ContentWordQuery(embeddings, weight))  # type: ignore[arg-type]
            retrievers[label] = BookRetriever.from_settings(mixed, settings, None)
        for label, retriever in retrievers.items():
            query_embeddings = retriever.vector_store.embeddings
            assert query_embeddings is not None
            ranks = [first_hit(retriever.invoke(q.question), q) for q in questions]
            pool = [pool_rank(retriever, query_embeddings, q) for q in questions]
            rows.append(
                {
                    "book": name,
                    "variant": label,
                    "questions": len(questions),
                    "hit@5": sum(1 for r in ranks if r) / len(questions),
                    "mrr@5": sum(1 / r for r in ranks if r) / len(questions),
                    "pool": {d: sum(1 for r in pool if r and r <= d) for d in POOL_DEPTHS},
                }
            )
            print(
                f"{name:18} {label:38} hit@5 {rows[-1]['hit@5']:.2f}  MRR {rows[-1]['mrr@5']:.3f}  pool "
                + " ".join(f"@{d} {n}" for d, n in rows[-1]["pool"].items()),
                flush=True,
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--books", default="sample_book,humanoid_book", help="comma-separated, or 'all'")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    names = list(DATASETS) if args.books == "all" else args.books.split(",")
    embeddings = build_embeddings(Settings(_env_file=None))  # type: ignore[call-arg]
    rows = [row for name in names for row in run_book(name, embeddings)]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print("\n| variant | hit@5 questions (of all books) | MRR@5 sum | pool @1 / @5 / @10 / @20 |\n|---|---:|---:|---|")
    for label in dict.fromkeys(row["variant"] for row in rows):
        mine = [row for row in rows if row["variant"] == label]
        hits = round(sum(row["hit@5"] * row["questions"] for row in mine))
        mrr = sum(row["mrr@5"] * row["questions"] for row in mine)
        pool = " / ".join(str(sum(row["pool"][d] for row in mine)) for d in POOL_DEPTHS)
        print(f"| {label} | {hits} / {sum(row['questions'] for row in mine)} | {mrr:.1f} | {pool} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
