"""Two packaged embedding models side by side on the same chunks and questions (measured, not adopted):

    BENCH_CORPUS=../shared/corpus .venv/bin/python -m bench.two_models --books all

all-MiniLM-L6-v2 (the default) and bge-small-en-v1.5 (the `bge` extra) each have their store cached by
`bench.eval_retrieval` (run it once with and once without EMBEDDING_MODEL=bge-small-en-v1.5); the chunks are the
same, matched by source and position. Per question, the top 20 of each dense list (exact, from the stored vectors)
and of the sparse list (the engine's) are fused by Qdrant's DBSF rule, with and without the sentence re-scoring of
`chains.sentence_rescore` (the first 10 fused, each model's stored sentence vectors, or both averaged). No
neighbour passages: the rows compare the lists, not the whole product path. Hits as `bench.eval_retrieval` counts
them (gold file and answer text), hit@1 / hit@5 / MRR@5.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from bench.common import report_books
from bench.eval_retrieval import DATASETS, Question, load_questions, normalise, store_folder
from chains.embeddings import build_embeddings
from chains.sentence_rescore import SENTENCE_KEY, applies_to, dbsf_normalised, decode
from chains.settings import Settings
from chains.sparse import encode_query
from chains.vectorstore import VISIBLE, build_qdrant_client

MODELS = ("all-MiniLM-L6-v2", "bge-small-en-v1.5")
DEPTH = 20
RESCORED = 10
Key = tuple[str, int]
Ranked = tuple[list[Key], np.ndarray]


def model_settings(model: str, folder: Path | None = None) -> Settings:
    values: dict[str, Any] = {"embedding_model": model, "embedding_cache_size": 0}
    if folder is not None:
        values.update(qdrant_path=folder, qdrant_collection="eval_bookrag")
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def read_store(folder: Path) -> tuple[QdrantClient, dict[Key, Any]]:
    client = build_qdrant_client(model_settings(MODELS[0], folder))
    points: list[Any] = []
    offset = None
    while True:
        page, offset = client.scroll(
            "eval_bookrag", limit=512, offset=offset, with_payload=True, with_vectors=["dense"]
        )
        points += page
        if offset is None:
            break
    return client, {(p.payload["metadata"]["source"], p.payload["metadata"]["chunk_index"]): p for p in points}


def best_sentence(point: Any, vector: np.ndarray) -> float:
    return float((decode(point.payload[SENTENCE_KEY]) @ vector).max())


def dbsf(lists: Sequence[Ranked]) -> tuple[list[Key], dict[Key, float]]:
    total: dict[Key, float] = {}
    for keys, scores in lists:
        for key, score in zip(keys, dbsf_normalised(np.asarray(scores, np.float64)), strict=True):
            total[key] = total.get(key, 0.0) + float(score)
    return sorted(total, key=lambda k: -total[k]), total


def rank(order: Sequence[Key], question: Question, points: dict[Key, Any]) -> int | None:
    for position, key in enumerate(order[:5], start=1):
        payload = points[key].payload
        if payload["metadata"]["source"] == question.source and normalise(question.answer_contains) in normalise(
            payload["page_content"]
        ):
            return position
    return None


def summary(ranks: Sequence[int | None]) -> str:
    n = len(ranks)
    hit1 = sum(r == 1 for r in ranks) / n
    hit5 = sum(r is not None for r in ranks) / n
    mrr = sum(1 / r for r in ranks if r) / n
    return f"{hit1:.2f} / {hit5:.2f} / {mrr:.3f}"


def run_book(name: str) -> dict[str, str]:
    book, questions_path = DATASETS[name]
    embedders = [build_embeddings(model_settings(m)) for m in MODELS]
    stores = [read_store(store_folder(name, book, settings=model_settings(m))) for m in MODELS]
    try:
        keys = [k for k in stores[0][1] if k in stores[1][1]]
        if len(keys) != len(stores[0][1]) or len(keys) != len(stores[1][1]):
            raise SystemExit(f"{name}: the two stores do not hold the same chunks; run bench.eval_retrieval again")
        matrices = [np.array([points[k].vector["dense"] for k in keys], np.float32) for _, points in stores]
        configs = {
            "MiniLM + sparse": ((0, 2), None),
            "bge + sparse": ((1, 2), None),
            "MiniLM + bge + sparse": ((0, 1, 2), None),
            "MiniLM + sparse, re-scored (MiniLM sentences)": ((0, 2), (0,)),
            "MiniLM + sparse, re-scored (bge sentences)": ((0, 2), (1,)),
            "MiniLM + sparse, re-scored (both)": ((0, 2), (0, 1)),
            "bge + sparse, re-scored (bge sentences)": ((1, 2), (1,)),
            "MiniLM + bge + sparse, re-scored (both)": ((0, 1, 2), (0, 1)),
        }
        ranks: dict[str, list[int | None]] = {c: [] for c in configs}
        for question in load_questions(questions_path):
            vectors = [np.array(e.embed_query(question.question), np.float32) for e in embedders]
            lists: list[Ranked] = []
            for matrix, vector in zip(matrices, vectors, strict=True):
                scores = matrix @ vector
                top = np.argsort(-scores)[:DEPTH]
                lists.append(([keys[i] for i in top], scores[top]))
            sparse = encode_query(question.question)
            hits = (
                stores[0][0]
                .query_points(
                    "eval_bookrag",
                    query=models.SparseVector(indices=sparse.indices, values=sparse.values),
                    using="sparse",
                    limit=DEPTH,
                    query_filter=VISIBLE,
                    with_payload=["metadata"],
                )
                .points
            )
            lists.append(
                (
                    [(h.payload["metadata"]["source"], h.payload["metadata"]["chunk_index"]) for h in hits],
                    np.array([h.score for h in hits]),
                )
            )
            for config, (used, sentence_models) in configs.items():
                order, total = dbsf([lists[i] for i in used if lists[i][0]])
                if sentence_models and applies_to(question.question):
                    top = order[:RESCORED]
                    best = np.array(
                        [
                            [
                                float((decode(stores[m][1][k].payload[SENTENCE_KEY]) @ vectors[m]).max())
                                for m in sentence_models
                            ]
                            for k in top
                        ]
                    )
                    sentence = sum(dbsf_normalised(best[:, j]) for j in range(best.shape[1])) / best.shape[1]
                    score = dbsf_normalised(np.array([total[k] for k in top])) + sentence
                    order = [top[i] for i in sorted(range(len(top)), key=lambda i: (-score[i], i))]
                ranks[config].append(rank(order, question, stores[0][1]))
        return {config: summary(r) for config, r in ranks.items()}
    finally:
        for client, _ in stores:
            client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--books", default="sample_book,humanoid_book", help="comma-separated, or 'all'")
    parser.add_argument("--json", type=Path, help="also write the table's figures here")
    args = parser.parse_args(argv)
    names = list(DATASETS) if args.books == "all" else args.books.split(",")
    results = {name: run_book(name) for name in names}
    report_books(results, "lists fused (DBSF)", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
