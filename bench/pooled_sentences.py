"""Bench-only prototype: sentence vectors pooled from the chunk's own forward pass instead of a second one.

The model mean-pools its last hidden states over a text's tokens. Pooling (and normalising) only the tokens of each
sentence, found through the tokenizer's offset mapping, gives a contextual sentence vector at no extra model cost:
the ONNX graph (chains/onnx_encoder.py) already outputs the token states. A sentence whose tokens were all cut by
the 256-token truncation falls back to a separate embedding (counted). The product's re-scoring
(chains/sentence_rescore.py) is run unchanged over a copy of each cached store whose `sentence_vectors` payloads
were replaced by the pooled ones, and compared with the cached store itself (separately embedded sentences), by
bench/eval_retrieval.py's hit rules and refusal threshold. Also the CPU seconds of embedding the humanoid book's
chunks and sentences both ways.

    BENCH_CORPUS=../shared/corpus .venv/bin/python -m bench.pooled_sentences --variants separate,pooled,pooled+specials
    BENCH_CORPUS=../shared/corpus .venv/bin/python -m bench.pooled_sentences --variants separate,int8-sentences --no-cpu

The stores are found as bench.eval_retrieval names them, else the newest cached one of the book. Numbers:
docs/retrieval.md, "Sentence vectors pooled from the chunk's own pass": pooled vectors give a lower MRR on every book.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient

from bench.common import bench_embeddings
from bench.eval_retrieval import (
    DATASETS,
    DEFAULT_CONFIG,
    OUT_OF_BOOK,
    STORES,
    Outcome,
    Question,
    best_score,
    configurations,
    evaluate,
    load_questions,
    store_folder,
    threshold,
    unanswerable_path,
)
from chains.embeddings import LocalEmbeddings, packaged_model_path
from chains.highlights import split_sentences
from chains.onnx_encoder import OnnxEncoder, length_buckets
from chains.retrieval import limit_blas_threads
from chains.sentence_rescore import SENTENCE_KEY, decode, encode, sentences_of
from chains.settings import Settings
from chains.vectorstore import build_qdrant_client

COLLECTION = "eval_bookrag"
# label, [CLS]/[SEP] pooled with each sentence (None: today's separate vectors, untouched), chunk mean subtracted
VARIANTS = [
    ("separate", None, False),
    ("pooled", False, False),
    ("pooled+specials", True, False),
    ("pooled-centred", False, True),
]
# Not pooled: the sentences embedded on their own by the int8 graph (EMBEDDING_QUANTIZE=int8), the chunks' own
# vectors left float. Half the sentences' CPU (docs/benchmarks.md, "Ingest").
INT8_SENTENCES = "int8-sentences"
BATCH = 64  # LocalEmbeddings' default batch


def embed_text_of(payload: dict[str, Any]) -> tuple[str, str]:
    """The stored chunk's text and the text its dense vector was embedded from (ingest/splitter.py)."""
    text = str(payload.get("page_content", ""))
    path = (payload.get("metadata") or {}).get("heading_path") or []
    return text, (f"{' > '.join(path)}\n\n{text}" if path else text)


def pooled_vectors(
    encoder: OnnxEncoder,
    texts: Sequence[str],
    spans: Sequence[Sequence[tuple[int, int]]],
    specials: bool = False,
    centred: bool = False,
) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Each text's pooled vector and, from the same run, each of its character spans' (the mean of the token states
    overlapping the span, normalised; a NaN row for a span with no token left after truncation). Uses the
    encoder's session and tokenizer directly: a prototype. `specials`: the [CLS] and [SEP] states are pooled with
    each sentence's tokens, as a sentence embedded on its own has them. `centred`: the chunk's own mean state is
    subtracted first, so that what every sentence of the chunk shares (its context) does not repeat its dense score."""
    prepared = [str(t).strip() for t in texts]
    leads = [len(str(t)) - len(str(t).lstrip()) for t in texts]
    encodings = encoder._tokenizer.encode_batch(prepared)
    dense = np.empty((len(texts), encoder.dimension), dtype=np.float32)
    out: list[np.ndarray] = [np.empty((0, encoder.dimension), dtype=np.float32)] * len(texts)
    uncovered = 0
    for batch in length_buckets([len(e.ids) for e in encodings], BATCH):
        width = max(len(encodings[i].ids) for i in batch)
        feeds = {name: np.zeros((len(batch), width), dtype=np.int64) for name in encoder._inputs}
        for row, i in enumerate(batch):
            e = encodings[i]
            values = {"input_ids": e.ids, "attention_mask": e.attention_mask, "token_type_ids": e.type_ids}
            for name in encoder._inputs:
                feeds[name][row, : len(e.ids)] = values[name]
        (tokens,) = encoder._session.run(None, feeds)
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        pooled = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        dense[batch] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        for row, i in enumerate(batch):
            offsets = np.asarray(encodings[i].offsets, dtype=np.int64)  # (tokens, 2); specials are (0, 0)
            real = offsets[:, 1] > offsets[:, 0]
            special = np.asarray(encodings[i].special_tokens_mask, dtype=bool)
            rows = np.full((len(spans[i]), encoder.dimension), np.nan, dtype=np.float32)
            for j, (start, end) in enumerate(spans[i]):
                start, end = start - leads[i], end - leads[i]
                chosen = real & (offsets[:, 0] < end) & (offsets[:, 1] > start)
                if not chosen.any():
                    uncovered += 1
                    continue
                if specials:
                    chosen = chosen | special
                vector = tokens[row, : len(offsets)][chosen].mean(axis=0)
                if centred:
                    vector = vector - pooled[row]
                rows[j] = vector / max(float(np.linalg.norm(vector)), 1e-12)
            out[i] = rows
    return dense, out, uncovered


def read_chunks(client: QdrantClient) -> list[tuple[Any, str, str]]:
    """(point id, text, embed text) of every stored chunk."""
    found = []
    offset = None
    while True:
        records, offset = client.scroll(COLLECTION, limit=512, offset=offset, with_payload=True, with_vectors=False)
        found += [(r.id, *embed_text_of(r.payload or {})) for r in records]
        if offset is None:
            return found


def sentence_spans(text: str, embed_text: str) -> list[tuple[int, int]]:
    """The chunk's sentences (as re-scoring splits them) as spans of its embed text."""
    shift = len(embed_text) - len(text)
    return [(s.start + shift, s.end + shift) for s in split_sentences(text)]


def write_pooled(
    client: QdrantClient, embeddings: LocalEmbeddings, encoder: OnnxEncoder, specials: bool, centred: bool = False
) -> dict[str, float]:
    """Replace every chunk's sentence vectors by pooled ones; returns counts and their agreement with the old."""
    chunks = read_chunks(client)
    spans = [sentence_spans(text, embed) for _, text, embed in chunks]
    _, pooled, uncovered = pooled_vectors(encoder, [embed for _, _, embed in chunks], spans, specials, centred)
    missing = [(i, j) for i, rows in enumerate(pooled) for j in range(len(rows)) if np.isnan(rows[j, 0])]
    if missing:  # past truncation: embedded on their own, as today
        texts = [chunks[i][2][spans[i][j][0] : spans[i][j][1]] for i, j in missing]
        for (i, j), vector in zip(missing, embeddings.embed_documents(texts), strict=True):
            pooled[i][j] = vector
    old = {r.id: (r.payload or {}).get(SENTENCE_KEY) for r in _all(client)}
    cosines = []
    for (point, _, _), rows in zip(chunks, pooled, strict=True):
        if not len(rows):
            continue
        before = decode(old.get(point))
        if before is not None and before.shape == rows.shape:
            before = before / np.maximum(np.linalg.norm(before, axis=1, keepdims=True), 1e-12)
            cosines.extend((before * rows).sum(axis=1).tolist())
        client.set_payload(COLLECTION, {SENTENCE_KEY: encode(rows.tolist())}, points=[point], wait=True)
    total = sum(len(s) for s in spans)
    return {
        "chunks": len(chunks),
        "sentences": total,
        "uncovered": uncovered,
        "cos_mean": float(np.mean(cosines)) if cosines else float("nan"),
        "cos_p10": float(np.percentile(cosines, 10)) if cosines else float("nan"),
    }


def write_int8(client: QdrantClient, quantised: LocalEmbeddings) -> dict[str, float]:
    """Replace every chunk's sentence vectors by the int8 graph's embedding of the same sentences."""
    records = [r for r in _all(client) if SENTENCE_KEY in (r.payload or {})]
    split = [sentences_of(str((r.payload or {}).get("page_content", ""))) for r in records]
    distinct = list(dict.fromkeys(s for sentences in split for s in sentences))
    by_text = dict(zip(distinct, quantised.embed_documents(distinct), strict=True))
    cosines: list[float] = []
    for record, sentences in zip(records, split, strict=True):
        rows = np.asarray([by_text[s] for s in sentences], dtype=np.float32)
        before = decode((record.payload or {}).get(SENTENCE_KEY))
        if before is not None and before.shape == rows.shape:
            before = before / np.maximum(np.linalg.norm(before, axis=1, keepdims=True), 1e-12)
            cosines.extend((before * rows).sum(axis=1).tolist())
        client.set_payload(COLLECTION, {SENTENCE_KEY: encode(rows.tolist())}, points=[record.id], wait=True)
    return {
        "sentences": len(distinct),
        "cos_mean": float(np.mean(cosines)),
        "cos_p10": float(np.percentile(cosines, 10)),
        "cos_min": float(np.min(cosines)),
    }


def _all(client: QdrantClient) -> list[Any]:
    found: list[Any] = []
    offset = None
    while True:
        records, offset = client.scroll(COLLECTION, limit=512, offset=offset, with_payload=True, with_vectors=False)
        found += records
        if offset is None:
            return found


def measure(
    folder: Path,
    embeddings: LocalEmbeddings,
    questions: Sequence[Question],
    unanswerable: Sequence[Question],
    out_of_book: Sequence[Question],
) -> Outcome:
    """The product default (DEFAULT_CONFIG: re-scoring, and neighbours since 2026-12-01) over the store in `folder`."""
    settings = Settings(_env_file=None, qdrant_path=folder, qdrant_collection=COLLECTION)  # type: ignore[call-arg]
    client = build_qdrant_client(settings)
    try:
        retriever = configurations(client, embeddings, settings, None)[DEFAULT_CONFIG]
        outcome = evaluate(DEFAULT_CONFIG, retriever.invoke, questions)
        outcome.unanswerable_scores = [best_score(retriever.invoke(q.question)) for q in unanswerable]
        outcome.out_of_domain_scores = [best_score(retriever.invoke(q.question)) for q in out_of_book]
        return outcome
    finally:
        client.close()


def cpu_seconds(folder: Path, embeddings: LocalEmbeddings, encoder: OnnxEncoder) -> tuple[float, float, int, int]:
    """CPU seconds of embedding every chunk of the store plus its sentences: separately (today: one call for the
    chunks and their sentences) and pooled (the chunks' run alone, spans pooled from it)."""
    with tempfile.TemporaryDirectory(prefix="pooled-") as scratch:
        copy = Path(scratch) / folder.name
        shutil.copytree(folder, copy)
        client = build_qdrant_client(Settings(_env_file=None, qdrant_path=copy, qdrant_collection=COLLECTION))  # type: ignore[call-arg]
        try:
            chunks = read_chunks(client)
        finally:
            client.close()
    embeds = [embed for _, _, embed in chunks]
    spans = [sentence_spans(text, embed) for _, text, embed in chunks]
    sentences = [embed[s:e] for embed, row in zip(embeds, spans, strict=True) for s, e in row]
    started = time.process_time()
    embeddings.embed_documents(embeds + sentences)
    separate = time.process_time() - started
    started = time.process_time()
    pooled_vectors(encoder, embeds, spans)
    pooled = time.process_time() - started
    return separate, pooled, len(embeds), len(sentences)


def cached_store(name: str, book: Path) -> Path:
    """The book's cached store: the one bench.eval_retrieval would open, else the newest of that book's (the key
    covers the book's absolute path, so a store made from another worktree has another one)."""
    folder = store_folder(name, book)
    if folder.is_dir():
        return folder
    found = sorted(STORES.glob(f"{name}-*/meta.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no cached store for {name}: run python -m bench.eval_retrieval --books {name} first")
    return found[-1].parent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--books", default="sample_book,humanoid_book,swift_book,walden")
    parser.add_argument("--cpu-book", default="humanoid_book", help="the book whose embedding CPU is measured")
    parser.add_argument("--no-cpu", action="store_true")
    parser.add_argument("--variants", default="separate,pooled,pooled+specials,pooled-centred")
    args = parser.parse_args(argv)
    limit_blas_threads()
    product = Settings(_env_file=None)  # type: ignore[call-arg]
    embeddings = bench_embeddings()
    encoder = embeddings._onnx
    if encoder is None:
        raise SystemExit("the ONNX runtime is needed (token states)")
    quantised: list[LocalEmbeddings] = []

    def int8() -> LocalEmbeddings:
        if not quantised:
            quantised.append(
                LocalEmbeddings(
                    packaged_model_path("all-MiniLM-L6-v2"),
                    cache_size=0,
                    onnx_dir=product.embedding_onnx_dir,
                    quantize=True,
                )
            )
        return quantised[0]

    out_of_book = load_questions(OUT_OF_BOOK)
    cut = threshold()
    lines = [
        f"| book | sentence vectors | hit@1 | hit@5 | MRR@5 | refused: answerable / unanswerable / out-of-domain "
        f"(threshold {cut:.2f}) |",
        "|---|---|---:|---:|---:|---|",
    ]
    notes = []
    for name in [n.strip() for n in args.books.split(",")]:
        book, questions_path = DATASETS[name]
        questions = load_questions(questions_path)
        extra = unanswerable_path(questions_path)
        unanswerable = load_questions(extra) if extra.is_file() else []
        folder = cached_store(name, book)
        with tempfile.TemporaryDirectory(prefix="pooled-") as scratch:
            outcomes: list[Outcome] = []
            variants = [v for v in VARIANTS if v[0] in args.variants.split(",")]
            if INT8_SENTENCES in args.variants.split(","):
                variants.append((INT8_SENTENCES, None, False))
            for label, specials, centred in variants:
                copy = Path(scratch) / f"{folder.name}-{len(outcomes)}"
                shutil.copytree(folder, copy)
                if label == INT8_SENTENCES:
                    client = build_qdrant_client(
                        Settings(_env_file=None, qdrant_path=copy, qdrant_collection=COLLECTION)  # type: ignore[call-arg]
                    )
                    try:
                        stats = write_int8(client, int8())
                    finally:
                        client.close()
                    notes.append(
                        f"{name}, {label}: {stats['sentences']} sentences; cosine to the float ones mean "
                        f"{stats['cos_mean']:.4f}, p10 {stats['cos_p10']:.4f}, min {stats['cos_min']:.4f}"
                    )
                    print(notes[-1], file=sys.stderr, flush=True)
                elif specials is not None:
                    client = build_qdrant_client(
                        Settings(_env_file=None, qdrant_path=copy, qdrant_collection=COLLECTION)  # type: ignore[call-arg]
                    )
                    try:
                        stats = write_pooled(client, embeddings, encoder, specials, centred)
                    finally:
                        client.close()
                    notes.append(
                        f"{name}, {label}: {stats['chunks']} chunks, {stats['sentences']} sentences, "
                        f"{stats['uncovered']} past truncation (embedded on their own); cosine to the separate "
                        f"vectors mean {stats['cos_mean']:.3f}, p10 {stats['cos_p10']:.3f}"
                    )
                    print(notes[-1], file=sys.stderr, flush=True)
                outcome = measure(copy, embeddings, questions, unanswerable, out_of_book)
                outcomes.append(outcome)
                a, u, o = outcome.refusal_rates(cut)
                lines.append(
                    f"| {name} ({len(questions)} q) | {label} | {outcome.hit_at(1):.2f} | {outcome.hit_at(5):.2f} | "
                    f"{outcome.mrr:.3f} | {a:.2f} / {u:.2f} / {o:.2f} |"
                )
                print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))
    print("\n" + "\n".join(notes))
    if not args.no_cpu:
        book, _ = DATASETS[args.cpu_book]
        separate, pooled_cpu, chunks, sentences = cpu_seconds(cached_store(args.cpu_book, book), embeddings, encoder)
        print(
            f"\n{args.cpu_book}: embedding {chunks} chunks + {sentences} sentences separately {separate:.1f} CPU s; "
            f"the chunks alone with pooled sentences {pooled_cpu:.1f} CPU s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
