"""Retrieval quality, refusals and latency: bookrag's retriever in several configurations next to the plain
LangChain baseline, on the same books and questions, in one run.

    .venv/bin/python -m bench.eval_retrieval                 # the two development sets, every configuration
    .venv/bin/python -m bench.books --mirror-root DIR        # once: export swift_book and walden (see its help)
    .venv/bin/python -m bench.eval_retrieval --books all --prototypes --json bench/results/x.json
    .venv/bin/python -m bench.eval_retrieval --scale 5000    # also: latency on a ~5,000-chunk collection

Each book is ingested once by the project's indexer (heading-aware chunks, dense + sparse vectors) into an
embedded Qdrant kept under `.bench-cache/eval-retrieval/<book>-<key>/` (the key covers the book's files, the split
version and the chunk settings, so a later run reuses it and embeds nothing); the configurations differ only at
query time. The baseline is what a LangChain tutorial does: the files read as text,
`RecursiveCharacterTextSplitter` (1000 characters, 200 overlap), `QdrantVectorStore`, dense `similarity_search`.

A retrieved passage is a hit when it comes from the question's gold file and contains its `answer_contains`
text (case and whitespace ignored): the same rule for every configuration, baseline included. Reported per book
and configuration: hit@1/3/5, MRR@5, per-query latency p50 (query embedding + search + post-processing; the
query-embedding cache is off so every query pays for its embedding), and refusal rates on three sets: the
answerable questions (should be ~0), the book's in-domain unanswerable ones (`<book>_unanswerable.jsonl`,
should be high) and the out-of-domain ones (`bench/questions/out_of_book.jsonl`). A question is refused as
`chains/answer.py` refuses it: no passage's dense cosine reaches `RETRIEVAL_SCORE_THRESHOLD` (or, for a
prototype, its own signal says so). The threshold table shows the best cosine per set and the rates at other
thresholds for the default configuration. Every run also checks the sets against the stored chunks (stderr).

`--prototypes` adds the bench-only configurations of `bench/prototypes.py` (issue 19); product defaults are
untouched.

Scale (`--scale N`): N chunks of real text (the d2l book from ../shared/corpus, split at 1000 characters) with
random unit dense vectors (embedding 5,000 chunks on this machine takes minutes and does not change how long a
query takes) and real sparse vectors; real query embeddings. Reports p50/p95 per retrieval mode.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_qdrant import QdrantVectorStore
from langchain_text_splitters import RecursiveCharacterTextSplitter
from qdrant_client import QdrantClient, models

from bench.books import book_dir
from bench.common import CACHE_DIR, bench_embeddings
from chains.rerank import CrossEncoderReranker
from chains.retrieval import BookRetriever, limit_blas_threads
from chains.sentence_rescore import SENTENCE_KEY, encode, sentence_payloads, sentences_of
from chains.settings import Settings
from chains.sparse import encode_document
from chains.vectorstore import (
    DENSE_VECTOR,
    SPARSE_VECTOR,
    build_qdrant_client,
    build_vector_store,
    ensure_collection,
    point_id,
)
from ingest.indexer import DEFAULT_EXCLUDES, SPLIT_VERSION, Indexer, discover_files

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("BENCH_CORPUS", REPO.parent / "shared" / "corpus"))  # ../shared beside the repository
QUESTIONS = REPO / "bench" / "questions"
# name: (book folder, answerable questions); a book's in-domain unanswerable questions are `<name>_unanswerable.jsonl`.
# swift_book and walden are exported by `python -m bench.books` (bench/questions/SOURCES.md).
DATASETS = {
    "sample_book": (REPO / "sample_book", QUESTIONS / "sample_book.jsonl"),
    "humanoid_book": (CORPUS / "humanoid-book", QUESTIONS / "humanoid_book.jsonl"),
    "swift_book": (book_dir("swift_book"), QUESTIONS / "swift_book.jsonl"),
    "walden": (book_dir("walden"), QUESTIONS / "walden.jsonl"),
    "d2l": (CORPUS / "d2l", QUESTIONS / "d2l.jsonl"),  # 4,900 chunks: the first run embeds them for many minutes
    "rust_book": (book_dir("rust_book"), QUESTIONS / "rust_book.jsonl"),
    "origin_of_species": (book_dir("origin_of_species"), QUESTIONS / "origin_of_species.jsonl"),
    # Added after the defaults were chosen, and measured once (docs/retrieval.md, "Two books no default was chosen on")
    "elixir_guide": (book_dir("elixir_guide"), QUESTIONS / "elixir_guide.jsonl"),
    "on_liberty": (book_dir("on_liberty"), QUESTIONS / "on_liberty.jsonl"),
    # Added once the two above were development books, and measured once (docs/retrieval.md, "Two more books no
    # default was chosen on")
    "crystal_book": (book_dir("crystal_book"), QUESTIONS / "crystal_book.jsonl"),
    "leisure_class": (book_dir("leisure_class"), QUESTIONS / "leisure_class.jsonl"),
    # Added once those two were development books too, and measured once (docs/retrieval.md, "Two books measured
    # once, after every default was chosen")
    "scala3_book": (book_dir("scala3_book"), QUESTIONS / "scala3_book.jsonl"),
    "voyage_of_the_beagle": (book_dir("voyage_of_the_beagle"), QUESTIONS / "voyage_of_the_beagle.jsonl"),
}
DEFAULT_DATASETS = {name: DATASETS[name] for name in ("sample_book", "humanoid_book")}
OUT_OF_BOOK = QUESTIONS / "out_of_book.jsonl"
STORES = CACHE_DIR / "eval-retrieval"
K = 5
# The product default (RETRIEVAL_SENTENCE_RESCORE=20, RETRIEVAL_JOIN_NEIGHBOURS=1, RETRIEVAL_SECTION_WHOLE_UP_TO=8,
# RETRIEVAL_JOIN_NEARBY=8)
DEFAULT_CONFIG = "hybrid DBSF + sentence re-scoring + neighbours"
SENTENCE_RESCORE = Settings(_env_file=None).retrieval_sentence_rescore or 20  # type: ignore[call-arg]
SECTION_WHOLE_UP_TO = Settings(_env_file=None).retrieval_section_whole_up_to  # type: ignore[call-arg]
JOIN_NEARBY = Settings(_env_file=None).retrieval_join_nearby  # type: ignore[call-arg]
SCALE_CONFIGS: dict[str, dict[str, Any]] = {
    "dense": {"mode": "dense"},
    "hybrid DBSF (no re-scoring)": {"mode": "hybrid", "fusion": "dbsf"},
    "hybrid DBSF, chapter filter": {"mode": "hybrid", "fusion": "dbsf", "filtered": True},
    "hybrid RRF": {"mode": "hybrid", "fusion": "rrf"},
    "hybrid DBSF + MMR": {"mode": "hybrid", "fusion": "dbsf", "mmr": True},
    "hybrid DBSF + sentence re-scoring": {"mode": "hybrid", "fusion": "dbsf", "sentence_rescore": 10},
    "hybrid DBSF + sentence re-scoring + neighbours (the default)": {
        "mode": "hybrid",
        "fusion": "dbsf",
        "sentence_rescore": 10,
        "join_neighbours": True,
        "section_whole_up_to": SECTION_WHOLE_UP_TO,
        "join_nearby": JOIN_NEARBY,
    },
}
THRESHOLDS = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45)


@dataclass(frozen=True, slots=True)
class Question:
    question: str
    source: str
    answer_contains: str
    absent: tuple[str, ...] = ()  # unanswerable questions: the terms the book never uses


@dataclass(slots=True)
class Outcome:
    """One configuration over one book's question sets."""

    name: str
    ranks: list[int | None] = field(default_factory=list)  # 1-based rank of the first hit, None if none in top k
    latencies_ms: list[float] = field(default_factory=list)
    top_scores: list[float] = field(default_factory=list)  # the best dense cosine among the k passages
    hit_scores: list[float | None] = field(default_factory=list)  # dense cosine of the first hit, if any
    unanswerable_scores: list[float] = field(default_factory=list)  # best cosine, in-domain unanswerable questions
    out_of_domain_scores: list[float] = field(default_factory=list)  # best cosine, out-of-book questions
    # Refusals decided by another signal than the threshold (a prototype's), per question of each set; empty: none.
    refused_answerable: list[bool] = field(default_factory=list)
    refused_unanswerable: list[bool] = field(default_factory=list)
    refused_out_of_domain: list[bool] = field(default_factory=list)

    def hit_at(self, n: int) -> float:
        return sum(1 for r in self.ranks if r is not None and r <= n) / max(1, len(self.ranks))

    @property
    def mrr(self) -> float:
        return sum(1 / r for r in self.ranks if r is not None) / max(1, len(self.ranks))

    def latency(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def refusal_rates(self, threshold: float) -> tuple[float, float, float]:
        """Share refused of the answerable, in-domain unanswerable and out-of-domain questions: no passage at or
        above the threshold (what `chains/answer.py` does), or another signal said so."""

        def rate(scores: Sequence[float], other: Sequence[bool]) -> float:
            flags = [s < threshold or (bool(other) and other[i]) for i, s in enumerate(scores)]
            return sum(flags) / len(flags) if flags else float("nan")

        return (
            rate(self.top_scores, self.refused_answerable),
            rate(self.unanswerable_scores, self.refused_unanswerable),
            rate(self.out_of_domain_scores, self.refused_out_of_domain),
        )


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def load_questions(path: Path, limit: int | None = None) -> list[Question]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    questions = [
        Question(r["question"], r.get("source", ""), r.get("answer_contains", ""), tuple(r.get("absent", ())))
        for r in rows
    ]
    return questions[:limit] if limit else questions


def unanswerable_path(questions_path: Path) -> Path:
    return questions_path.with_name(questions_path.stem + "_unanswerable.jsonl")


def is_hit(document: Document, question: Question) -> bool:
    return document.metadata.get("source") == question.source and normalise(question.answer_contains) in normalise(
        document.page_content
    )


def best_score(documents: Sequence[Document]) -> float:
    """The best dense cosine among the passages (in hybrid mode the first passage need not have it)."""
    return max((float(d.metadata.get("score", 0.0)) for d in documents), default=0.0)


def evaluate(name: str, search: Callable[[str], list[Document]], questions: Sequence[Question]) -> Outcome:
    outcome = Outcome(name)
    search(questions[0].question)  # warm-up: first-call costs are not a query's latency
    for question in questions:
        started = time.perf_counter()
        documents = search(question.question)
        outcome.latencies_ms.append((time.perf_counter() - started) * 1000)
        rank = next((i for i, d in enumerate(documents, start=1) if is_hit(d, question)), None)
        outcome.ranks.append(rank)
        outcome.hit_scores.append(None if rank is None else float(documents[rank - 1].metadata.get("score", 0.0)))
        outcome.top_scores.append(best_score(documents))
    return outcome


def book_files(book: Path) -> list[Path]:
    return list(discover_files([book], (), DEFAULT_EXCLUDES))


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store_folder(name: str, book: Path, stores: Path = STORES, settings: Settings | None = None) -> Path:
    """The cached embedded store for a book: a new folder when a file, the split, the chunk settings or the
    embedding model change (`settings`: the environment's by default).

    Keyed by the files' contents rather than the book's path or mtimes, so a copied or re-exported book (another
    worktree, another checkout) finds its store instead of embedding the whole book again. The model counts only
    when it is not all-MiniLM-L6-v2, so the stores cached before it counted keep their folders.
    """
    settings = settings or Settings(_env_file=None)  # type: ignore[call-arg]
    key = hashlib.sha256(
        json.dumps(
            [
                SPLIT_VERSION,
                settings.chunk_size,
                settings.chunk_overlap,
                settings.chunk_size_unit,
                settings.embedding_quantize,
                *([] if settings.embedding_model == "all-MiniLM-L6-v2" else [settings.embedding_model]),
                [(f.relative_to(book).as_posix(), file_digest(f)) for f in book_files(book)],
            ]
        ).encode()
    ).hexdigest()[:12]
    return stores / f"{name}-{key}"


@contextlib.contextmanager
def product_store(name: str, embeddings: Embeddings) -> Iterator[tuple[QdrantClient, Settings]]:
    """Book `name`'s cached store (the one this harness keeps, ingested the first time) opened, with the settings
    its chunks were ingested with: for the other benchmarks that read the product's passages."""
    book, _ = DATASETS[name]
    folder = store_folder(name, book)
    folder.mkdir(parents=True, exist_ok=True)
    client = build_qdrant_client(Settings(_env_file=None, qdrant_path=folder, qdrant_collection="eval_bookrag"))  # type: ignore[call-arg]
    try:
        yield client, ingest_project(client, embeddings, book, "eval_bookrag")
    finally:
        client.close()


def ingest_project(client: QdrantClient, embeddings: Embeddings, book: Path, collection: str) -> Settings:
    settings = Settings(_env_file=None, qdrant_path=Path("unused"), qdrant_collection=collection)  # type: ignore[call-arg]
    if client.collection_exists(collection) and client.count(collection, exact=True).count:
        return settings  # a cached store: its key covers the book's files and the split
    ensure_collection(client, settings, len(embeddings.embed_query("dimension")))
    report = Indexer(client, embeddings, settings, getattr(embeddings, "count_tokens", None)).ingest(
        book_files(book), book
    )
    if report.failed:
        raise SystemExit(f"ingest failed: {report.summary()}")
    return settings


def ensure_sentence_vectors(client: QdrantClient, embeddings: Embeddings, collection: str) -> int:
    """Give every stored chunk without them its sentence vectors (chains.sentence_rescore), as ingest now stores
    them: a store cached before re-scoring existed gains them without re-embedding its chunks. Returns how many."""
    added = 0
    offset = None
    while True:
        records, offset = client.scroll(collection, limit=256, offset=offset, with_payload=True, with_vectors=False)
        lacking = [r for r in records if SENTENCE_KEY not in (r.payload or {})]
        values = sentence_payloads(
            [str((r.payload or {}).get("page_content", "")) for r in lacking], embeddings.embed_documents
        )
        for record, value in zip(lacking, values, strict=True):
            if value is not None:
                client.set_payload(collection, {SENTENCE_KEY: value}, points=[record.id], wait=True)
                added += 1
        if offset is None:
            return added


def ingest_baseline(client: QdrantClient, embeddings: Embeddings, book: Path, collection: str) -> QdrantVectorStore:
    if client.collection_exists(collection) and client.count(collection, exact=True).count:
        return QdrantVectorStore(client=client, collection_name=collection, embedding=embeddings)
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)
    documents = [
        Document(page_content=path.read_text(encoding="utf-8"), metadata={"source": path.relative_to(book).as_posix()})
        for path in book_files(book)
    ]
    chunks = splitter.split_documents(documents)
    dimension = len(embeddings.embed_query("dimension"))
    client.create_collection(
        collection, vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE)
    )
    store = QdrantVectorStore(client=client, collection_name=collection, embedding=embeddings)
    store.add_documents(chunks)
    return store


def baseline_search(store: QdrantVectorStore) -> Callable[[str], list[Document]]:
    """Dense `similarity_search` top-k, with each passage's cosine in `metadata.score` as bookrag's have it."""

    def search(query: str) -> list[Document]:
        found = store.similarity_search_with_score(query, k=K)
        return [Document(d.page_content, metadata={**d.metadata, "score": score}) for d, score in found]

    return search


def configurations(
    client: QdrantClient, embeddings: Embeddings, settings: Settings, rerank_model: Path | None
) -> dict[str, BookRetriever]:
    store = build_vector_store(client, settings, embeddings)

    def make(**options: Any) -> BookRetriever:
        return BookRetriever(vector_store=store, k=K, **options)

    configs = {
        "dense": make(mode="dense"),
        "hybrid RRF": make(mode="hybrid", fusion="rrf"),
        "hybrid RRF sparse x2": make(mode="hybrid", fusion="rrf", sparse_weight=2.0),
        "hybrid DBSF": make(mode="hybrid", fusion="dbsf"),
        "dense + MMR": make(mode="dense", mmr=True),
        "hybrid DBSF + MMR": make(mode="hybrid", fusion="dbsf", mmr=True),
        "hybrid DBSF + sentence re-scoring": make(mode="hybrid", fusion="dbsf", sentence_rescore=SENTENCE_RESCORE),
        "hybrid DBSF + sentence re-scoring + neighbours (first passage's neighbours only)": make(
            mode="hybrid", fusion="dbsf", sentence_rescore=SENTENCE_RESCORE, join_neighbours=True
        ),
        "hybrid DBSF + sentence re-scoring + neighbours, no nearby passages joined": make(
            mode="hybrid",
            fusion="dbsf",
            sentence_rescore=SENTENCE_RESCORE,
            join_neighbours=True,
            section_whole_up_to=SECTION_WHOLE_UP_TO,
        ),
        DEFAULT_CONFIG: make(
            mode="hybrid",
            fusion="dbsf",
            sentence_rescore=SENTENCE_RESCORE,
            join_neighbours=True,
            section_whole_up_to=SECTION_WHOLE_UP_TO,
            join_nearby=JOIN_NEARBY,
        ),
    }
    if rerank_model is not None:
        reranker = CrossEncoderReranker(rerank_model)
        configs["hybrid DBSF + rerank"] = make(mode="hybrid", fusion="dbsf", reranker=reranker)
    return configs


@dataclass(slots=True)
class BookReport:
    name: str
    chunks: int
    baseline_chunks: int
    outcomes: list[Outcome]
    out_of_book_scores: list[float]
    in_book: Outcome | None = None
    missing_answers: list[str] = field(default_factory=list)  # questions whose answer text no chunk of the source has
    present_terms: list[str] = field(default_factory=list)  # unanswerable questions' "absent" terms the book has


def check_sets(
    client: QdrantClient, collection: str, questions: Sequence[Question], unanswerable: Sequence[Question]
) -> tuple[list[str], list[str]]:
    """The question sets against the stored chunks: every answer text in some chunk of its source file, and no
    unanswerable question's `absent` term anywhere in the book."""
    texts: dict[str, list[str]] = {}
    offset = None
    while True:
        records, offset = client.scroll(collection, limit=1000, offset=offset, with_payload=True)
        for record in records:
            payload = record.payload or {}
            source = str((payload.get("metadata") or {}).get("source", ""))
            texts.setdefault(source, []).append(normalise(str(payload.get("page_content", ""))))
        if offset is None:
            break
    missing = [
        q.question
        for q in questions
        if not any(normalise(q.answer_contains) in text for text in texts.get(q.source, []))
    ]
    everything = " ".join(text for chunks in texts.values() for text in chunks)
    present = [
        f"{term!r} ({q.question})"
        for q in unanswerable
        for term in q.absent
        if re.search(rf"\b{re.escape(term.lower())}", everything)
    ]
    return missing, present


Search = Callable[[str], list[Document]]
Refuse = Callable[[str], bool]
# A prototype (bench/refusal_terms.py...): given the book's store and the configurations, more configurations,
# each a search and optionally its own refusal signal (refuse the question whatever the passages' cosine).
Prototype = Callable[
    [QdrantClient, Settings, Embeddings, dict[str, BookRetriever]], dict[str, tuple[Search, Refuse | None]]
]


def run_book(
    name: str,
    book: Path,
    questions: Sequence[Question],
    out_of_book: Sequence[Question],
    embeddings: Embeddings,
    default_mode: str,
    rerank_model: Path | None = None,
    unanswerable: Sequence[Question] = (),
    prototypes: Sequence[Prototype] = (),
    stores: Path | None = STORES,
) -> BookReport:
    """Ingest (or reuse the store cached under `stores`; None: a temporary one), then every configuration over
    the book's three question sets."""
    with contextlib.ExitStack() as stack:
        if stores is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="eval-retrieval-")))
        else:
            folder = store_folder(name, book, stores)
            folder.mkdir(parents=True, exist_ok=True)
        return _run_book(
            name, book, questions, out_of_book, embeddings, default_mode, rerank_model, unanswerable, prototypes, folder
        )
    raise AssertionError("unreachable")


def _run_book(
    name: str,
    book: Path,
    questions: Sequence[Question],
    out_of_book: Sequence[Question],
    embeddings: Embeddings,
    default_mode: str,
    rerank_model: Path | None,
    unanswerable: Sequence[Question],
    prototypes: Sequence[Prototype],
    folder: Path,
) -> BookReport:
    # The service's embedded store (Qdrant's engine); a cached store of an older run is migrated on this open.
    client = build_qdrant_client(Settings(_env_file=None, qdrant_path=folder, qdrant_collection="eval_bookrag"))  # type: ignore[call-arg]
    try:
        settings = ingest_project(client, embeddings, book, "eval_bookrag")
        ensure_sentence_vectors(client, embeddings, "eval_bookrag")
        baseline = ingest_baseline(client, embeddings, book, "eval_baseline")
        missing, present = check_sets(client, "eval_bookrag", questions, unanswerable)
        configs = configurations(client, embeddings, settings, rerank_model)
        searches: dict[str, tuple[Search, Refuse | None]] = {"LangChain baseline": (baseline_search(baseline), None)}
        searches.update({config: (retriever.invoke, None) for config, retriever in configs.items()})
        for make in prototypes:
            searches.update(make(client, settings, embeddings, configs))
        outcomes = []
        for config, (search, refuse) in searches.items():
            outcome = evaluate(config, search, questions)
            outcome.unanswerable_scores = [best_score(search(q.question)) for q in unanswerable]
            outcome.out_of_domain_scores = [best_score(search(q.question)) for q in out_of_book]
            if refuse is not None:
                outcome.refused_answerable = [refuse(q.question) for q in questions]
                outcome.refused_unanswerable = [refuse(q.question) for q in unanswerable]
                outcome.refused_out_of_domain = [refuse(q.question) for q in out_of_book]
            outcomes.append(outcome)
        chunks = client.count("eval_bookrag", exact=True).count
        baseline_chunks = client.count("eval_baseline", exact=True).count
    finally:
        client.close()
    in_book = next(o for o in outcomes if o.name == default_mode)
    return BookReport(name, chunks, baseline_chunks, outcomes, in_book.out_of_domain_scores, in_book, missing, present)


def threshold() -> float:
    return Settings(_env_file=None).retrieval_score_threshold  # type: ignore[call-arg]


def quality_table(reports: Sequence[BookReport]) -> str:
    cut = threshold()
    lines = [
        "| book | configuration | chunks | hit@1 | hit@3 | hit@5 | MRR@5 | refused: answerable | in-domain "
        "unanswerable | out-of-domain | p50 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for report in reports:
        for outcome in report.outcomes:
            chunks = report.baseline_chunks if outcome.name == "LangChain baseline" else report.chunks
            answerable, unanswerable, out_of_domain = outcome.refusal_rates(cut)
            sizes = f"{len(outcome.ranks)}/{len(outcome.unanswerable_scores)}/{len(outcome.out_of_domain_scores)} q"
            lines.append(
                f"| {report.name} ({sizes}) | {outcome.name} | {chunks} | {outcome.hit_at(1):.2f} | "
                f"{outcome.hit_at(3):.2f} | {outcome.hit_at(5):.2f} | {outcome.mrr:.3f} | {answerable:.2f} | "
                f"{unanswerable:.2f} | {out_of_domain:.2f} | {outcome.latency(0.5):.1f} |"
            )
    return "\n".join(lines)


def threshold_table(reports: Sequence[BookReport]) -> str:
    lines = ["| book | best-passage cosine | min | p10 | median | max |", "|---|---|---:|---:|---:|---:|"]
    for report in reports:
        assert report.in_book is not None
        for label, scores in (
            ("answerable", report.in_book.top_scores),
            ("in-domain unanswerable", report.in_book.unanswerable_scores),
            ("out-of-book", report.out_of_book_scores),
        ):
            if scores:
                lines.append(
                    f"| {report.name} | {label} ({len(scores)} q) | {min(scores):.3f} | {percentile(scores, 0.1):.3f} "
                    f"| {percentile(scores, 0.5):.3f} | {max(scores):.3f} |"
                )
    lines += [
        "",
        "Answerable questions answered (best passage at or above the threshold), answerable questions whose "
        "answering passage is in the top 5 and itself passes the threshold (it reaches the model), in-domain "
        "unanswerable and out-of-book questions refused:",
        "",
        "| threshold | "
        + " | ".join(f"{r.name}: answered / kept / in-domain refused / out refused" for r in reports)
        + " |",
        "|---:|" + "---:|" * len(reports),
    ]
    for cut in THRESHOLDS:
        cells = []
        for report in reports:
            assert report.in_book is not None
            asked = max(1, len(report.in_book.ranks))
            answered = sum(1 for s in report.in_book.top_scores if s >= cut) / asked
            kept = sum(1 for s in report.in_book.hit_scores if s is not None and s >= cut) / asked
            inside = report.in_book.unanswerable_scores
            refused_in = sum(1 for s in inside if s < cut) / max(1, len(inside))
            refused = sum(1 for s in report.out_of_book_scores if s < cut) / max(1, len(report.out_of_book_scores))
            cells.append(f"{answered:.2f} / {kept:.2f} / {refused_in:.2f} / {refused:.2f}")
        lines.append(f"| {cut:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scale_texts(count: int) -> list[str]:
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)
    texts: list[str] = []
    for path in sorted((CORPUS / "d2l").rglob("*.md")):
        texts.extend(splitter.split_text(path.read_text(encoding="utf-8")))
        if len(texts) >= count:
            return texts[:count]
    for path in sorted((CORPUS / "humanoid-book").rglob("*.md")):
        texts.extend(splitter.split_text(path.read_text(encoding="utf-8")))
    if not texts:  # no shared corpus beside the repository: made-up passages do for a latency measurement
        texts = [f"Passage {i} on topic {i % 97}: rclpy node_{i % 13} publishes at {i % 50} Hz." for i in range(count)]
    while len(texts) < count:  # a small corpus: repeat it (the store does not care)
        texts.extend(texts[: count - len(texts)])
    return texts[:count]


def run_scale(count: int, embeddings: Embeddings, questions: Sequence[Question], dimension: int) -> str:
    texts = scale_texts(count)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="eval-scale-") as folder:
        settings = Settings(_env_file=None, qdrant_path=Path(folder), qdrant_collection="eval_scale")  # type: ignore[call-arg]
        client = build_qdrant_client(settings)
        try:
            ensure_collection(client, settings, dimension)
            for start in range(0, len(texts), 256):
                points = []
                for offset, text in enumerate(texts[start : start + 256]):
                    raw = [rng.gauss(0, 1) for _ in range(dimension)]
                    norm = sum(x * x for x in raw) ** 0.5
                    sparse = encode_document(text)
                    vector: dict[str, Any] = {DENSE_VECTOR: [x / norm for x in raw]}
                    if sparse:
                        vector[SPARSE_VECTOR] = models.SparseVector(indices=sparse.indices, values=sparse.values)
                    number = start + offset
                    metadata = {
                        "source": f"scale/{number // 40}.md",
                        "chapter": f"scale chapter {number // 500}",
                        "chunk_index": number,
                        "section": f"scale section {number // 4}",  # sections of 4 chunks: neighbours to join
                    }
                    # Random sentence vectors, as many as the text has sentences: what re-scoring decodes.
                    sentences = [[rng.gauss(0, 1) for _ in range(dimension)] for _ in sentences_of(text)]
                    payload: dict[str, Any] = {"page_content": text, "metadata": metadata}
                    if sentences:
                        payload[SENTENCE_KEY] = encode(sentences)
                    points.append(
                        models.PointStruct(id=point_id(f"scale-{start + offset}"), vector=vector, payload=payload)
                    )
                client.upsert("eval_scale", points=points, wait=True)
            store = build_vector_store(client, settings, embeddings)
            lines = [
                "| collection | mode | queries | p50 ms | p95 ms |",
                "|---|---|---:|---:|---:|",
            ]
            stored = client.count("eval_scale", exact=True).count
            # Where the time goes: the query embedding alone, then the default search given the vector.
            vectors = []
            embed_ms = []
            for question in questions:
                started = time.perf_counter()
                vectors.append(embeddings.embed_query(question.question))
                embed_ms.append((time.perf_counter() - started) * 1000)
            default = BookRetriever(vector_store=store, k=K)
            options_default = default._options({})[1]
            default._search(vectors[0], questions[0].question, K, options_default)  # warm-up
            search_ms = []
            for question, vector in zip(questions, vectors, strict=True):
                started = time.perf_counter()
                default._search(vector, question.question, K, options_default)
                search_ms.append((time.perf_counter() - started) * 1000)
            rescoring = default.model_copy(update={"sentence_rescore": 10})
            rescore_ms = []
            for question, vector in zip(questions, vectors, strict=True):
                started = time.perf_counter()
                rescoring._search(vector, question.question, K, options_default)
                rescore_ms.append((time.perf_counter() - started) * 1000)
            joining = rescoring.model_copy(
                update={"join_neighbours": True, "section_whole_up_to": SECTION_WHOLE_UP_TO, "join_nearby": JOIN_NEARBY}
            )
            join_ms = []
            for question, vector in zip(questions, vectors, strict=True):
                started = time.perf_counter()
                joining._search(vector, question.question, K, options_default)
                join_ms.append((time.perf_counter() - started) * 1000)
            lines.append(
                f"| {stored} chunks | query embedding alone | {len(questions)} | {percentile(embed_ms, 0.5):.1f} | "
                f"{percentile(embed_ms, 0.95):.1f} |"
            )
            lines.append(
                f"| {stored} chunks | hybrid DBSF search, vector given | {len(questions)} | "
                f"{percentile(search_ms, 0.5):.1f} | {percentile(search_ms, 0.95):.1f} |"
            )
            lines.append(
                f"| {stored} chunks | hybrid DBSF + sentence re-scoring search, vector given | {len(questions)} | "
                f"{percentile(rescore_ms, 0.5):.1f} | {percentile(rescore_ms, 0.95):.1f} |"
            )
            lines.append(
                f"| {stored} chunks | hybrid DBSF + sentence re-scoring + neighbours search, vector given | "
                f"{len(questions)} | {percentile(join_ms, 0.5):.1f} | {percentile(join_ms, 0.95):.1f} |"
            )
            for label, options in SCALE_CONFIGS.items():
                options = dict(options)
                filtered = options.pop("filtered", False)
                retriever = BookRetriever(vector_store=store, k=K, **options)
                call: dict[str, Any] = {"chapter": "scale chapter 3"} if filtered else {}
                outcome = evaluate(label, lambda q, r=retriever, c=call: r.invoke(q, **c), questions)  # type: ignore[misc]
                lines.append(
                    f"| {stored} chunks | {label} | {len(questions)} | {outcome.latency(0.5):.1f} | "
                    f"{outcome.latency(0.95):.1f} |"
                )
        finally:
            client.close()
    return "\n".join(lines)


def run(
    datasets: dict[str, tuple[Path, Path]],
    embeddings: Embeddings,
    limit: int | None = None,
    default_mode: str = DEFAULT_CONFIG,
    rerank_model: Path | None = None,
    scale: int = 0,
    out_of_book_path: Path = OUT_OF_BOOK,
    prototypes: Sequence[Prototype] = (),
    stores: Path | None = STORES,
) -> tuple[list[BookReport], str]:
    """Evaluate every dataset (name: (book folder, questions file)); returns the reports and the Markdown."""
    out_of_book = load_questions(out_of_book_path, limit) if out_of_book_path.is_file() else []
    reports = []
    all_questions: list[Question] = []
    for name, (book, questions_path) in datasets.items():
        questions = load_questions(questions_path, limit)
        extra = unanswerable_path(questions_path)
        unanswerable = load_questions(extra, limit) if extra.is_file() else []
        all_questions.extend(questions)
        report = run_book(
            name, book, questions, out_of_book, embeddings, default_mode, rerank_model, unanswerable, prototypes, stores
        )
        reports.append(report)
        for problem in report.missing_answers:
            print(f"{name}: no chunk of the gold file holds the answer text: {problem}", file=sys.stderr)
        for problem in report.present_terms:
            print(f"{name}: an unanswerable question's term is in the book: {problem}", file=sys.stderr)
    parts = [
        f"## Retrieval quality and refusals (k = 5, threshold {threshold():.2f})",
        "",
        "Sizes: answerable / in-domain unanswerable / out-of-domain questions. Refused: no passage's dense cosine "
        "reaches the threshold (or a prototype's own signal refused).",
        "",
        quality_table(reports),
        "",
        f"## Best-passage dense cosine, {default_mode}",
        "",
        threshold_table(reports),
    ]
    if scale:
        parts += ["", f"## Latency at scale (k = {K})", "", run_scale(scale, embeddings, all_questions, 384)]
    return reports, "\n".join(parts)


def results_json(reports: Sequence[BookReport]) -> list[dict[str, Any]]:
    cut = threshold()
    books = []
    for r in reports:
        configurations = {}
        for o in r.outcomes:
            answerable, unanswerable, out_of_domain = o.refusal_rates(cut)
            configurations[o.name] = {
                "hit@1": o.hit_at(1),
                "hit@5": o.hit_at(5),
                "mrr@5": o.mrr,
                "refused_answerable": answerable,
                "refused_in_domain_unanswerable": unanswerable,
                "refused_out_of_domain": out_of_domain,
                "p50_ms": o.latency(0.5),
                "ranks": o.ranks,
                "latencies_ms": o.latencies_ms,
                "top_scores": o.top_scores,
                "hit_scores": o.hit_scores,
                "unanswerable_scores": o.unanswerable_scores,
                "out_of_domain_scores": o.out_of_domain_scores,
                "refused_by_signal": {
                    "answerable": o.refused_answerable,
                    "unanswerable": o.refused_unanswerable,
                    "out_of_domain": o.refused_out_of_domain,
                },
            }
        books.append(
            {
                "book": r.name,
                "chunks": r.chunks,
                "baseline_chunks": r.baseline_chunks,
                "threshold": cut,
                "configurations": configurations,
                "out_of_book_scores": r.out_of_book_scores,
            }
        )
    return books


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--book", type=Path, help="a book folder (with --questions); default: both development sets")
    parser.add_argument("--questions", type=Path, help="a JSONL question set for --book")
    parser.add_argument(
        "--books", default=None, help=f"comma-separated, of {', '.join(DATASETS)}, or 'all' (default: the first two)"
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N questions of each set")
    parser.add_argument("--default", default=DEFAULT_CONFIG, help="the configuration the threshold table uses")
    parser.add_argument("--rerank-model", type=Path, default=None, help="a local cross-encoder directory to add")
    parser.add_argument(
        "--prototypes", action="store_true", help="also the bench-only prototypes (bench/prototypes.py)"
    )
    parser.add_argument("--scale", type=int, default=0, help="also measure latency on a collection of N chunks")
    parser.add_argument("--scale-only", action="store_true", help="with --scale: skip the quality runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers to this file")
    args = parser.parse_args(argv)
    if args.book is not None:
        if args.questions is None:
            parser.error("--book needs --questions")
        datasets = {args.book.name: (args.book, args.questions)}
    elif args.books:
        names = list(DATASETS) if args.books == "all" else [n.strip() for n in args.books.split(",")]
        unknown = [n for n in names if n not in DATASETS]
        if unknown:
            parser.error(f"unknown book(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}")
        missing = [n for n in names if not DATASETS[n][0].is_dir()]
        if missing:
            parser.error(f"no folder for {', '.join(missing)}: export it first (python -m bench.books --help)")
        datasets = {n: DATASETS[n] for n in names}
    else:
        datasets = DEFAULT_DATASETS
    prototypes: list[Prototype] = []
    if args.prototypes:
        from bench.prototypes import PROTOTYPES

        prototypes = list(PROTOTYPES)
    limit_blas_threads()  # as `rag-api` does at start-up
    # The product's query path (ONNX Runtime when it can be exported), no query cache: every question embedded.
    # EMBEDDING_QUANTIZE from the environment: the int8 graph for documents and questions, in a store of its own.
    embeddings = bench_embeddings()
    started = time.perf_counter()
    if args.scale_only:
        questions = [q for _, path in datasets.values() for q in load_questions(path, args.limit)]
        print(run_scale(args.scale, embeddings, questions, embeddings.dimension))
        return 0
    reports, markdown = run(
        datasets, embeddings, args.limit, args.default, args.rerank_model, args.scale, prototypes=prototypes
    )
    print(markdown)
    print(
        f"\n{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"{time.perf_counter() - started:.0f} s in all",
        file=sys.stderr,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results_json(reports), indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
