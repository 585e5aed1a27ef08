"""Query-side term expansion for the sparse list with the packaged embedding model (issue 19), measured offline on
the cached eval stores, the same settings for every book. Measured, not adopted: docs/retrieval.md.

Every distinct plain word of the book (lower-case letters, three or more, not a stop word; the surface form, whose
indexed term is `chains.sparse.stem` of it) is embedded once with the packaged model (timed: what an ingest or a
start-up would pay; cached here under `.bench-cache/term-vectors/`). A question word's vector is the book's when
the book has the word, else embedded. Which book words a question adds ("how" of `VARIANTS`):

- **missing**: its content words whose term the book does not use, each adding its `n` nearest book words with a
  cosine of at least `cut`;
- **every**: every content word does (terms of the question itself excluded); "other" also skips book words
  sharing the question word's first four letters (its own forms: "maps", "mapping" for "map"), "english" keeps
  book words the model's WordPiece vocabulary holds whole, "common" (a Zipf cut, `wordfreq`) expands no question
  word and adds no book word that common in general English;
- **question**: the book words nearest the whole question's vector.

"query:" variants add them to the question's own sparse query with weight cosine x factor (the question's terms
keep 1; Qdrant's IDF multiplies both); "3rd list:" variants send them as a sparse query of their own (weight:
the cosine), a third list of the DBSF fusion with the given list weight. The dense list, the DBSF fusion, the
sentence re-scoring of the first 10 and the neighbour rule ("top 2 always, others by a better sentence", the
second column group) are `bench.sentence_candidates`'s replay of today's default; only the sparse side changes.
Stderr: each book's vocabulary and its embedding time, today's misses, the questions whose rank `BEST` changes
with the terms it added, and the per-question cost of the expansion (also as a product would compute it:
`FastExpander`).

    BENCH_CORPUS=/work/shared/corpus .venv/bin/python -m bench.term_expansion \
        --json bench/results/term-expansion-2026-12-01.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from qdrant_client import models

from bench.common import CACHE_DIR, bench_embeddings
from bench.eval_retrieval import DATASETS, K, Question, load_questions
from bench.sentence_candidates import DEPTH, Store, dbsf, load_store, rank_of, split_neighbours, top
from chains.book_terms import STOP_WORDS, english_words, word_frequency
from chains.embeddings import LocalEmbeddings
from chains.retrieval import limit_blas_threads
from chains.sentence_rescore import applies_to, rescored_order
from chains.sparse import encode_query, stem, term_index, terms
from chains.vectorstore import SPARSE_VECTOR

WORD = re.compile(r"[a-z]+")


def book_words(store: Store) -> list[str]:
    """The book's distinct plain words, sorted (the texts are lower-cased by `normalise`)."""
    found: set[str] = set()
    for text in store.texts:
        found.update(w for w in WORD.findall(text) if len(w) >= 3 and w not in STOP_WORDS)
    return sorted(found)


def word_vectors(name: str, words: list[str], embeddings: LocalEmbeddings) -> tuple[np.ndarray, float]:
    """Unit vectors of `words` (cached by the word list's hash) and the seconds embedding them took (0 if cached)."""
    key = hashlib.sha1("\n".join(words).encode()).hexdigest()[:12]
    path = CACHE_DIR / "term-vectors" / f"{name}-{key}.npy"
    if path.exists():
        return np.load(path), 0.0
    started = time.perf_counter()
    matrix = np.asarray(embeddings.embed_documents(words), dtype=np.float32)
    took = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, matrix)
    return matrix, took


def question_words(question: str) -> list[str]:
    return [w for w in dict.fromkeys(WORD.findall(question.lower())) if len(w) >= 3 and w not in STOP_WORDS]


class Expander:
    def __init__(self, store: Store, words: list[str], vectors: np.ndarray, embeddings: LocalEmbeddings) -> None:
        self.words = words
        self.vectors = vectors
        self.stems = [stem(w) for w in words]
        self.book_terms = {t for text in store.texts for t in terms(text)}
        self.embeddings = embeddings
        self._cache: dict[str, np.ndarray] = {}
        self._row = {w: i for i, w in enumerate(words)}
        self._allowed: dict[tuple[bool, float | None], np.ndarray | None] = {}

    def vector(self, word: str) -> np.ndarray:
        row = self._row.get(word)
        if row is not None:  # a book word: its vector is computed already
            return np.asarray(self.vectors[row])
        if word not in self._cache:
            self._cache[word] = np.asarray(self.embeddings.embed_documents([word])[0], dtype=np.float32)
        return self._cache[word]

    def nearest(
        self, v: np.ndarray, cut: float, n: int, exclude: set[str], allowed: np.ndarray | None = None
    ) -> list[tuple[str, float]]:
        scores = self.vectors @ v
        if allowed is not None:
            scores = np.where(allowed, scores, -1.0)
        out: list[tuple[str, float]] = []
        seen: set[str] = set()
        for i in np.argsort(-scores)[: 4 * n + 20]:
            s = float(scores[i])
            if s < cut or len(out) >= n:
                break
            term = self.stems[i]
            if term in exclude or term in seen:
                continue
            seen.add(term)
            out.append((self.words[i], s))
        return out

    def allowed(self, english: bool, common: float | None) -> np.ndarray | None:
        key = (english, common)
        if key not in self._allowed:
            keep = np.ones(len(self.words), dtype=bool)
            if english:
                vocabulary = english_words()
                keep &= np.asarray([w in vocabulary for w in self.words])
            if common is not None:
                keep &= np.asarray([word_frequency(w) < common for w in self.words])
            self._allowed[key] = keep
        return self._allowed[key]

    def expansion(self, question: str, qvec: np.ndarray, opts: dict[str, object]) -> list[tuple[str, float]]:
        how, cut, n = str(opts["how"]), float(opts["cut"]), int(opts["n"])  # type: ignore[arg-type, call-overload]
        common = opts.get("common")
        allowed = self.allowed(bool(opts.get("english")), None if common is None else float(common))  # type: ignore[arg-type]
        own = set(terms(question))
        picked: dict[str, float] = {}
        if how == "question":
            candidates = self.nearest(qvec, cut, n, own, allowed)
        else:
            candidates = []
            for w in question_words(question):
                if how == "missing" and stem(w) in self.book_terms:
                    continue
                if common is not None and word_frequency(w) >= float(common):  # type: ignore[arg-type]
                    continue
                if opts.get("book_only") and w not in self._row:
                    continue
                near = self.nearest(self.vector(w), cut, 3 * n if opts.get("other") else n, own, allowed)
                if opts.get("other"):  # other words, not forms of the question's own word
                    near = [(b, c) for b, c in near if b[:4] != w[:4]][:n]
                if opts.get("share") and near:  # one question word's expansions share its weight
                    total = sum(c for _, c in near)
                    near = [(b, c * c / total) for b, c in near]
                candidates += near
        for w, s in candidates:
            t = stem(w)
            picked[t] = max(picked.get(t, 0.0), s)
        return sorted(picked.items(), key=lambda x: -x[1])


class FastExpander:
    """What a product implementation of `BEST` would do per question, timed: the allowed book words' vectors as one
    matrix, the question words' vectors looked up (book words) or embedded in one model call (the others), one
    matrix product, the few best per word."""

    def __init__(self, expander: Expander, common: float) -> None:
        keep = expander.allowed(False, common)
        assert keep is not None
        self.matrix = np.ascontiguousarray(expander.vectors[keep])
        self.words = [w for w, k in zip(expander.words, keep, strict=True) if k]
        self.stems = [stem(w) for w in self.words]
        self.rows = expander._row
        self.all_vectors = expander.vectors
        self.embeddings = expander.embeddings
        self.common = common

    def expansion(self, question: str, cut: float, n: int) -> dict[str, float]:
        words = [w for w in question_words(question) if word_frequency(w) < self.common]
        if not words:
            return {}
        unknown = [w for w in words if w not in self.rows]
        embedded = dict(zip(unknown, self.embeddings.embed_documents(unknown), strict=True)) if unknown else {}
        q = np.stack(
            [self.all_vectors[self.rows[w]] if w in self.rows else np.asarray(embedded[w], np.float32) for w in words]
        )
        scores = q @ self.matrix.T
        own = set(terms(question))
        picked: dict[str, float] = {}
        width = min(scores.shape[1] - 1, 3 * n + 20)
        for w, row in zip(words, scores, strict=True):
            head = np.argpartition(-row, width)[: width + 1]
            found = 0
            seen: set[str] = set()
            for i in head[np.argsort(-row[head])]:
                if row[i] < cut or found >= n:
                    break
                term = self.stems[i]
                if term in own or term in seen or self.words[i][:4] == w[:4]:
                    continue
                seen.add(term)
                found += 1
                picked[term] = max(picked.get(term, 0.0), float(row[i]))
        return picked


def sparse_query(question: str, extra: Sequence[tuple[str, float]], factor: float) -> models.SparseVector | None:
    base = encode_query(question)
    weights = dict(zip(base.indices, base.values, strict=True))
    for term, cosine in extra:
        index = term_index(term)
        if index not in weights:
            weights[index] = cosine * factor
    if not weights:
        return None
    indices = sorted(weights)
    return models.SparseVector(indices=indices, values=[weights[i] for i in indices])


# how, cut, n (a word), factor, options: "english" (book words the model's WordPiece vocabulary holds whole),
# "common" (Zipf cut: neither a question word this common is expanded nor a book word this common added).
def expansion_query(extra: Sequence[tuple[str, float]]) -> models.SparseVector | None:
    """The expansion terms alone, weighted by their cosine."""
    weights: dict[int, float] = {}
    for term, cosine in extra:
        weights[term_index(term)] = max(weights.get(term_index(term), 0.0), cosine)
    if not weights:
        return None
    indices = sorted(weights)
    return models.SparseVector(indices=indices, values=[weights[i] for i in indices])


BEST = "3rd list: other, zipf<5.5, 0.6, 3 each, x0.35"
VARIANTS: dict[str, dict[str, object]] = {
    "query: missing words, 0.5, 3 each, x1": {"how": "missing", "cut": 0.5, "n": 3, "factor": 1.0},
    "query: every word, 0.6, 3 each, x0.5": {"how": "every", "cut": 0.6, "n": 3, "factor": 0.5},
    "query: every word, 0.7, 2 each, x0.5": {"how": "every", "cut": 0.7, "n": 2, "factor": 0.5},
    "query: other words, 0.6, 2 each, x0.5": {"how": "every", "cut": 0.6, "n": 2, "factor": 0.5, "other": True},
    "query: every, english, zipf<5.5, 0.6, 3 each, x0.5": {
        "how": "every", "cut": 0.6, "n": 3, "factor": 0.5, "english": True, "common": 5.5},
    "query: question vector, 0.4, 10, x0.5": {"how": "question", "cut": 0.4, "n": 10, "factor": 0.5},
    "query: question vector, 0.3, 5, x1": {"how": "question", "cut": 0.3, "n": 5, "factor": 1.0},
    "3rd list: every word, 0.6, 3 each, x0.25": {"how": "every", "cut": 0.6, "n": 3, "factor": 1.0, "list": 0.25},
    "3rd list: other words, 0.6, 3 each, x0.5": {
        "how": "every", "cut": 0.6, "n": 3, "factor": 1.0, "other": True, "list": 0.5},
    "3rd list: question vector, 0.4, 10, x0.25": {"how": "question", "cut": 0.4, "n": 10, "factor": 1.0, "list": 0.25},
    BEST: {"how": "every", "cut": 0.6, "n": 3, "factor": 1.0, "other": True, "common": 5.5, "list": 0.35},
    "3rd list: other, zipf<5.5, 0.6, 3 each, x0.25": {
        "how": "every", "cut": 0.6, "n": 3, "factor": 1.0, "other": True, "common": 5.5, "list": 0.25},
    "3rd list: other, zipf<5.5, 0.6, 3 each, x0.5": {
        "how": "every", "cut": 0.6, "n": 3, "factor": 1.0, "other": True, "common": 5.5, "list": 0.5},
    "3rd list: other, zipf<5.5, 0.6, 2 each, x0.35": {
        "how": "every", "cut": 0.6, "n": 2, "factor": 1.0, "other": True, "common": 5.5, "list": 0.35},
    "3rd list: other, zipf<5.5, 0.65, 3 each, x0.35": {
        "how": "every", "cut": 0.65, "n": 3, "factor": 1.0, "other": True, "common": 5.5, "list": 0.35},
    "3rd list: other, zipf<6, 0.6, 3 each, x0.35": {
        "how": "every", "cut": 0.6, "n": 3, "factor": 1.0, "other": True, "common": 6.0, "list": 0.35},
    "3rd list: other, zipf<5.5, 0.6, 3 each, x0.35, book words only": {
        "how": "every", "cut": 0.6, "n": 3, "factor": 1.0, "other": True, "common": 5.5, "list": 0.35,
        "book_only": True},
}  # fmt: skip


SHOWN = (BEST,)


def sparse_list(store: Store, sparse: models.SparseVector | None) -> list[tuple[int, float]]:
    if sparse is None:
        return []
    index = store.__dict__.setdefault("_index", {pid: i for i, pid in enumerate(store.ids)})
    points = store.client.query_points(  # type: ignore[attr-defined]
        "eval_bookrag", query=sparse, using=SPARSE_VECTOR, limit=DEPTH, with_payload=False
    ).points
    return [(index[str(p.id)], float(p.score)) for p in points]


def ranked(
    store: Store,
    q: Question,
    best: np.ndarray,
    dense_list: list[tuple[int, float]],
    sparse: models.SparseVector | None,
    third: tuple[models.SparseVector | None, float] | None = None,
) -> list[int]:
    """Today's default order (DBSF of dense and sparse, the first 10 re-scored by their best sentence); `third`:
    the expansion terms' own sparse query and its list's weight."""
    lexical = sparse_list(store, sparse)
    lists, weights = [dense_list, lexical], [1.0, 1.0]
    if third is not None and third[0] is not None and lexical:
        lists.append(sparse_list(store, third[0]))
        weights.append(third[1])
    fused = dbsf(lists, weights) if lexical else list(dense_list)
    order = [i for i, _ in fused]
    if lexical and applies_to(q.question) and len(order) > 1:
        h = min(10, len(order))
        sub = rescored_order([s for _, s in fused[:h]], [float(best[i]) for i in order[:h]])
        order = [order[j] for j in sub] + order[h:]
    return order


def with_neighbours(store: Store, order: list[int], best: np.ndarray, q: Question) -> int | None:
    always = [split_neighbours(store, i) for i in order[:K]]
    shown = set(order[:K])
    mixed = [
        n if r < 2 else [j for j in n if best[j] > best[i] and j not in shown]
        for r, (i, n) in enumerate(zip(order[:K], always, strict=True))
    ]
    return rank_of(store, order, q, mixed)


def evaluate(store: Store, expander: Expander, questions: Sequence[Question]) -> dict[str, list[list[int | None]]]:
    out: dict[str, list[list[int | None]]] = {}
    timings: dict[str, list[float]] = {}
    fast = FastExpander(expander, 5.5)
    names = ["today", *VARIANTS]
    for q in questions:
        v = np.asarray(expander.embeddings.embed_query(q.question), dtype=np.float32)
        v = v / np.linalg.norm(v)
        best = np.maximum.reduceat(store.sentences @ v, store.starts)
        dense_list = top(store.dense @ v, DEPTH)
        base_order = None
        started = time.perf_counter()
        quick = fast.expansion(q.question, 0.6, 3)
        timings.setdefault(f"{BEST} (matrix product, book words looked up)", []).append(time.perf_counter() - started)
        slow = dict(expander.expansion(q.question, v, VARIANTS[BEST]))
        if quick.keys() != slow.keys():
            print(f"  fast and slow expansion differ: {sorted(quick)} / {sorted(slow)}", file=sys.stderr)
        for name in names:
            extra: list[tuple[str, float]] = []
            third = None
            if name == "today":
                sparse = sparse_query(q.question, [], 0.0)
            else:
                opts = VARIANTS[name]
                expander._cache.clear()
                started = time.perf_counter()
                extra = expander.expansion(q.question, v, opts)
                if "list" in opts:
                    third = (expansion_query(extra), float(opts["list"]))  # type: ignore[arg-type]
                    sparse = sparse_query(q.question, [], 0.0)
                else:
                    third = None
                    sparse = sparse_query(q.question, extra, float(opts["factor"]))  # type: ignore[arg-type]
                timings.setdefault(name, []).append(time.perf_counter() - started)
            order = ranked(store, q, best, dense_list, sparse, third)
            plain, joined = rank_of(store, order, q), with_neighbours(store, order, best, q)
            out.setdefault(name, []).append([plain, joined])
            if name == "today":
                base_order = joined
            elif joined != base_order and name in SHOWN:
                shown = ", ".join(f"{t} {s:.2f}" for t, s in extra[:12])
                print(f"    {base_order} -> {joined} [{name}] {q.question}: {shown}", file=sys.stderr, flush=True)
            if name == "today" and joined is None:
                print(f"  miss: {q.question}", file=sys.stderr, flush=True)
    for name, seconds in timings.items():
        ms = sorted(1000 * x for x in seconds)
        print(
            f"  {name}: expansion {ms[len(ms) // 2]:.1f} ms p50, {ms[int(0.95 * len(ms))]:.1f} p95 (words embedded)",
            file=sys.stderr,
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--books", default="sample_book,humanoid_book,swift_book,walden,d2l")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    limit_blas_threads()
    embeddings = bench_embeddings()
    result: dict[str, object] = {}
    print("| book (q) | variant | hit@1 | hit@5 | MRR@5 | with neighbours: hit@1 | hit@5 | MRR@5 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.books.split(","):
        book, path = DATASETS[name]
        questions = load_questions(path)
        store = load_store(name, book, embeddings)
        words = book_words(store)
        vectors, took = word_vectors(name, words, embeddings)
        print(
            f"{name}: {len(words)} words, embedded in {took:.1f} s ({'cached' if not took else 'now'}), "
            f"{vectors.nbytes / 1e6:.1f} MB float32",
            file=sys.stderr,
            flush=True,
        )
        ranks = evaluate(store, Expander(store, words, vectors, embeddings), questions)
        store.client.close()  # type: ignore[attr-defined]
        result[name] = {"words": len(words), "embed_seconds": took, "ranks": ranks}
        for variant, rs in ranks.items():
            n = len(rs)
            cells = []
            for col in (0, 1):
                col_ranks = [r[col] for r in rs]
                cells += [
                    f"{sum(1 for r in col_ranks if r == 1) / n:.2f}",
                    f"{sum(1 for r in col_ranks if r) / n:.2f}",
                    f"{sum(1 / r for r in col_ranks if r) / n:.3f}",
                ]
            print(f"| {name} ({n}) | {variant} | {' | '.join(cells)} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
