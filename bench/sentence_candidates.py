"""Recall ideas for the harder books (issue 19), measured offline on the cached eval stores, same settings for every
book: sentences as their own candidate list, the heading path as its own sparse list, and neighbour passages.

- **Sentence list**: the chunks ranked by their best sentence's cosine to the question (what a Qdrant multivector
  with MAX_SIM gives for a one-vector query) as a third list in the DBSF fusion, then re-scored as today.
- **Heading list**: a sparse vector of each chunk's chapter title and heading path (a temporary collection with
  the IDF modifier), as a third list with weight 1, 0.5 or 0.25.
- **Neighbours joined** to today's top 5 (same file and section, chunk_index +-1): always, for the first two
  passages only, or when the neighbour's best sentence beats the passage's (the product's rule is measured by
  `bench.eval_retrieval`, "hybrid DBSF + sentence re-scoring + neighbours").
- The misses of today's default are printed (stderr), marked when the answer is in a neighbour of a top-5 chunk.

Dense and sentence scores are exact numpy (the eval stores are searched exactly too), the sparse lists are Qdrant's
own queries, the fusion is Qdrant's DBSF rule (`chains.sentence_rescore.dbsf_normalised`, a missing point adds 0). The
first row replays today's default and equals `bench.eval_retrieval`'s. CHUNK_SIZE / CHUNK_OVERLAP in the
environment select (and on first use ingest, without the LangChain baseline) a store of that chunk size.

    BENCH_CORPUS=/work/shared/corpus .venv/bin/python -m bench.sentence_candidates --books sample_book,humanoid_book
    CHUNK_SIZE=160 CHUNK_OVERLAP=30 BENCH_CORPUS=/work/shared/corpus .venv/bin/python -m bench.sentence_candidates
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qdrant_client import models

from bench.common import bench_embeddings
from bench.eval_retrieval import (
    DATASETS,
    K,
    Question,
    ensure_sentence_vectors,
    ingest_project,
    load_questions,
    normalise,
    store_folder,
)
from chains.embeddings import LocalEmbeddings
from chains.retrieval import limit_blas_threads
from chains.sentence_rescore import SENTENCE_KEY, applies_to, dbsf_normalised, decode, rescored_order
from chains.settings import Settings
from chains.sparse import encode_document, encode_query
from chains.vectorstore import DENSE_VECTOR, SPARSE_VECTOR, build_qdrant_client

DEPTH = 20


@dataclass
class Store:
    ids: list[str]
    sources: list[str]
    texts: list[str]
    dense: np.ndarray  # chunks x dim, unit
    sentences: np.ndarray  # all sentences x dim
    starts: np.ndarray  # first sentence row of each chunk
    client: object
    positions: list[int]  # chunk_index in its source
    headings: list[str]  # heading path and chapter title
    sections: list[str]  # the section (heading path) the chunk is in


def load_store(name: str, book: Path, embeddings: LocalEmbeddings) -> Store:
    """The book's cached eval store (CHUNK_SIZE / CHUNK_OVERLAP from the environment are part of its key),
    ingested as `bench.eval_retrieval` ingests it when missing (without the LangChain baseline's collection)."""
    folder = store_folder(name, book)
    folder.mkdir(parents=True, exist_ok=True)
    client = build_qdrant_client(Settings(_env_file=None, qdrant_path=folder, qdrant_collection="eval_bookrag"))  # type: ignore[call-arg]
    started = time.perf_counter()
    ingest_project(client, embeddings, book, "eval_bookrag")
    ensure_sentence_vectors(client, embeddings, "eval_bookrag")
    print(f"{name}: store {folder.name} ready in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    ids, sources, texts, dense, blocks, starts, positions, headings, sections = [], [], [], [], [], [], [], [], []
    offset = None
    row = 0
    while True:
        records, offset = client.scroll(
            "eval_bookrag", limit=512, offset=offset, with_payload=True, with_vectors=[DENSE_VECTOR]
        )
        for r in records:
            payload = r.payload or {}
            matrix = decode(payload.get(SENTENCE_KEY))
            vector = np.asarray(r.vector[DENSE_VECTOR] if isinstance(r.vector, dict) else r.vector, dtype=np.float32)
            if matrix is None:
                matrix = vector[None, :]
            ids.append(str(r.id))
            meta = payload.get("metadata") or {}
            sources.append(str(meta.get("source", "")))
            positions.append(int(meta.get("chunk_index", -1)))
            sections.append(str(meta.get("section", "")))
            headings.append(
                " ".join([str(meta.get("chapter") or ""), *[str(h) for h in meta.get("heading_path") or []]])
            )
            texts.append(normalise(str(payload.get("page_content", ""))))
            dense.append(vector / np.linalg.norm(vector))
            starts.append(row)
            row += len(matrix)
            blocks.append(matrix)
        if offset is None:
            break
    return Store(
        ids,
        sources,
        texts,
        np.stack(dense),
        np.concatenate(blocks),
        np.asarray(starts),
        client,
        positions,
        headings,
        sections,
    )


def heading_client(store: Store, folder: Path) -> object:
    """A sparse-only collection of each chunk's heading path + chapter title (same ids), IDF as the book's own."""
    client = build_qdrant_client(Settings(_env_file=None, qdrant_path=folder, qdrant_collection="headings"))  # type: ignore[call-arg]
    client.create_collection(
        "headings",
        vectors_config={},
        sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
    )
    points = []
    for pid, text in zip(store.ids, store.headings, strict=True):
        encoding = encode_document(text)
        if encoding:
            points.append(
                models.PointStruct(
                    id=pid,
                    vector={SPARSE_VECTOR: models.SparseVector(indices=encoding.indices, values=encoding.values)},
                )
            )
    for i in range(0, len(points), 256):
        client.upsert("headings", points[i : i + 256])
    return client


def top(scores: np.ndarray, n: int) -> list[tuple[int, float]]:
    order = np.argsort(-scores, kind="stable")[:n]
    return [(int(i), float(scores[i])) for i in order]


def dbsf(lists: Sequence[Sequence[tuple[int, float]]], weights: Sequence[float]) -> list[tuple[int, float]]:
    total: dict[int, float] = {}
    for items, weight in zip(lists, weights, strict=True):
        if not items:
            continue
        norm = dbsf_normalised(np.asarray([s for _, s in items], dtype=np.float64))
        for (i, _), v in zip(items, norm, strict=True):
            total[i] = total.get(i, 0.0) + weight * float(v)
    return sorted(total.items(), key=lambda x: -x[1])


def rank_of(
    store: Store, order: Sequence[int], q: Question, extra: Sequence[Sequence[int]] | None = None
) -> int | None:
    """1-based rank of the first passage that holds the answer; `extra`: chunks joined to each passage."""
    want = normalise(q.answer_contains)
    for r, i in enumerate(order[:K], start=1):
        joined = [i, *(extra[r - 1] if extra else ())]
        if store.sources[i] == q.source and any(want in store.texts[j] for j in joined):
            return r
    return None


def split_neighbours(store: Store, i: int) -> list[int]:
    """The chunks before and after `i` in the same file and section (a section split into several chunks)."""
    index = store.__dict__.setdefault(
        "_by_position", {(s, p): n for n, (s, p) in enumerate(zip(store.sources, store.positions, strict=True))}
    )
    out = []
    for d in (-1, 1):
        j = index.get((store.sources[i], store.positions[i] + d))
        if j is not None and store.sections[j] == store.sections[i]:
            out.append(j)
    return out


VARIANTS: dict[str, dict[str, float]] = {
    "today (dense + sparse, re-score 10)": {"sentence": 0.0, "rescore": 10},
    "+ sentence list 20 (re-score 10)": {"sentence": 1.0, "rescore": 10},
    "+ sentence list 20 x0.5": {"sentence": 0.5, "rescore": 10},
    "+ sentence list 20 x0.25": {"sentence": 0.25, "rescore": 10},
    "+ sentence list 5": {"sentence": 1.0, "rescore": 10, "depth": 5},
    "+ sentence list 10": {"sentence": 1.0, "rescore": 10, "depth": 10},
    "+ sentence list 10 x0.5": {"sentence": 0.5, "rescore": 10, "depth": 10},
    "+ sentence list 20, no re-scoring": {"sentence": 1.0, "rescore": 0},
    "sentence list replaces dense": {"sentence": 1.0, "rescore": 10, "dense": 0.0},
    "+ heading list 20 x1": {"sentence": 0.0, "rescore": 10, "heading": 1.0},
    "+ heading list 20 x0.5": {"sentence": 0.0, "rescore": 10, "heading": 0.5},
    "+ heading list 20 x0.25": {"sentence": 0.0, "rescore": 10, "heading": 0.25},
}


def neighbour_of_retrieved(store: Store, order: Sequence[int], q: Question) -> bool:
    """A miss whose answering chunk is next to (chunk_index +-1, same file) one of the top k."""
    want = normalise(q.answer_contains)
    gold = {
        store.positions[i] for i in range(len(store.ids)) if store.sources[i] == q.source and want in store.texts[i]
    }
    near = {store.positions[i] + d for i in order[:K] if store.sources[i] == q.source for d in (-1, 1)}
    return bool(gold & near)


def evaluate(
    store: Store, embeddings: LocalEmbeddings, questions: Sequence[Question], headings: object
) -> dict[str, list[int | None]]:
    ends = np.append(store.starts[1:], len(store.sentences))
    ranks: dict[str, list[int | None]] = {v: [] for v in VARIANTS}
    grown: dict[str, list[int]] = {}
    size: dict[str, list[float]] = {}
    for q in questions:
        v = np.asarray(embeddings.embed_query(q.question), dtype=np.float32)
        v = v / np.linalg.norm(v)
        dense_scores = store.dense @ v
        sent = store.sentences @ v
        best = np.maximum.reduceat(sent, store.starts)
        assert len(best) == len(ends)
        dense_list = top(dense_scores, DEPTH)
        sentence_list = top(best, DEPTH)
        sparse = encode_query(q.question)
        sparse_list: list[tuple[int, float]] = []
        heading_list: list[tuple[int, float]] = []
        if sparse:
            index = {pid: i for i, pid in enumerate(store.ids)}
            points = store.client.query_points(  # type: ignore[attr-defined]
                "eval_bookrag",
                query=models.SparseVector(indices=sparse.indices, values=sparse.values),
                using=SPARSE_VECTOR,
                limit=DEPTH,
                with_payload=False,
            ).points
            sparse_list = [(index[str(p.id)], float(p.score)) for p in points]
            heading_points = headings.query_points(  # type: ignore[attr-defined]
                "headings",
                query=models.SparseVector(indices=sparse.indices, values=sparse.values),
                using=SPARSE_VECTOR,
                limit=DEPTH,
                with_payload=False,
            ).points
            heading_list = [(index[str(p.id)], float(p.score)) for p in heading_points]
        for name, opts in VARIANTS.items():
            lists = [dense_list, sparse_list, sentence_list[: int(opts.get("depth", DEPTH))], heading_list]
            weights = [opts.get("dense", 1.0), 1.0, opts["sentence"], opts.get("heading", 0.0)]
            if not sparse_list:  # dense mode, as the retriever: no fusion
                fused = (
                    dbsf([dense_list, sentence_list], [1.0, opts["sentence"]])
                    if opts["sentence"]
                    else [(i, s) for i, s in dense_list]
                )
                if not opts["sentence"]:
                    order = [i for i, _ in fused]
                    ranks[name].append(rank_of(store, order, q))
                    continue
            else:
                fused = dbsf([lst for lst, w in zip(lists, weights, strict=True) if w], [w for w in weights if w])
            order = [i for i, _ in fused]
            head = int(opts["rescore"])
            if head and applies_to(q.question) and len(order) > 1:
                h = min(head, len(order))
                sub = rescored_order([s for _, s in fused[:h]], [float(best[i]) for i in order[:h]])
                order = [order[j] for j in sub] + order[h:]
            rank = rank_of(store, order, q)
            ranks[name].append(rank)
            if name == next(iter(VARIANTS)):
                always = [split_neighbours(store, i) for i in order[:K]]
                shown = set(order[:K])
                better = [
                    [j for j in n if best[j] > best[i] and j not in shown]
                    for i, n in zip(order[:K], always, strict=True)
                ]
                top2 = [n if r < 2 else [] for r, n in enumerate(always)]
                near = [
                    [j for j in n if best[j] > best[i] - 0.05 and j not in shown]
                    for i, n in zip(order[:K], always, strict=True)
                ]
                mixed = [n if r < 2 else b for r, (n, b) in enumerate(zip(always, better, strict=True))]
                for label, extra in (
                    ("neighbours joined: top 2 always, others better sentence", mixed),
                    ("neighbours joined: always", always),
                    ("neighbours joined: better sentence", better),
                    ("neighbours joined: top 2 passages, always", top2),
                    ("neighbours joined: sentence within 0.05", near),
                ):
                    ranks.setdefault(label, []).append(rank_of(store, order, q, extra))
                    grown.setdefault(label, []).append(sum(len(e) for e in extra))
                    size.setdefault(label, []).append(
                        sum(len(store.texts[j]) for e in extra for j in e) / sum(len(store.texts[i]) for i in order[:K])
                    )
            if name == next(iter(VARIANTS)) and rank is None:
                print(
                    f"  miss{' (neighbour of a top-5 chunk)' if neighbour_of_retrieved(store, order, q) else ''}: "
                    f"{q.question}",
                    file=sys.stderr,
                    flush=True,
                )
    for label, counts in grown.items():
        share = sum(size[label]) / len(size[label])
        print(
            f"  {label}: {sum(counts) / len(counts):.2f} chunks joined per question (k={K}), +{share:.0%} passage text",
            file=sys.stderr,
        )
    return ranks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--books", default="sample_book,humanoid_book,swift_book,walden")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    limit_blas_threads()
    embeddings = bench_embeddings()
    out = {}
    print("| book (q) | variant | hit@1 | hit@5 | MRR@5 |\n|---|---|---:|---:|---:|")
    for name in args.books.split(","):
        book, path = DATASETS[name]
        questions = load_questions(path)
        store = load_store(name, book, embeddings)
        with tempfile.TemporaryDirectory(prefix="headings-") as temporary:
            headings = heading_client(store, Path(temporary))
            ranks = evaluate(store, embeddings, questions, headings)
            headings.close()  # type: ignore[attr-defined]
        store.client.close()  # type: ignore[attr-defined]
        out[name] = ranks
        for variant, rs in ranks.items():
            n = len(rs)
            h1 = sum(1 for r in rs if r == 1) / n
            h5 = sum(1 for r in rs if r) / n
            mrr = sum(1 / r for r in rs if r) / n
            print(f"| {name} ({n}) | {variant} | {h1:.2f} | {h5:.2f} | {mrr:.3f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
