"""Retrieval quality and latency: bookrag's retriever in several configurations next to the plain LangChain
baseline, on the same books and questions, in one run.

    .venv/bin/python -m bench.eval_retrieval                 # both development sets, every configuration
    .venv/bin/python -m bench.eval_retrieval --scale 5000    # also: latency on a ~5,000-chunk collection

Each book is ingested once by the project's indexer (heading-aware chunks, dense + sparse vectors) into a fresh
embedded Qdrant in a temporary folder; the configurations differ only at query time. The baseline is what a
LangChain tutorial does: the files read as text, `RecursiveCharacterTextSplitter` (1000 characters, 200
overlap), `QdrantVectorStore.from_documents`, dense `similarity_search` top-k.

A retrieved passage is a hit when it comes from the question's gold file and contains its `answer_contains`
text (case and whitespace ignored): the same rule for every configuration, baseline included. Reported per
configuration: hit@1/3/5, MRR@5 and per-query latency p50/p95 (query embedding + Qdrant query + post-processing;
the query-embedding cache is off so every query pays for its embedding).

Threshold: the out-of-book questions (`bench/questions/out_of_book.jsonl`) go through the default configuration
too; the report shows the best passage's dense cosine for in-book and out-of-book questions and, for candidate
thresholds, how many in-book questions would still be answered and how many out-of-book ones refused.

Scale (`--scale N`): N chunks of real text (the d2l book from ../shared/corpus, split at 1000 characters) with
random unit dense vectors (embedding 5,000 chunks on this machine takes minutes and does not change how long a
query takes) and real sparse vectors; real query embeddings. Reports p50/p95 per retrieval mode.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_qdrant import QdrantVectorStore
from langchain_text_splitters import RecursiveCharacterTextSplitter
from qdrant_client import QdrantClient, models

from chains.embeddings import LocalEmbeddings, packaged_model_path
from chains.local_index import LocalIndex, limit_blas_threads
from chains.rerank import CrossEncoderReranker
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.sparse import encode_document
from chains.vectorstore import DENSE_VECTOR, SPARSE_VECTOR, build_vector_store, ensure_collection, point_id
from ingest.indexer import DEFAULT_EXCLUDES, Indexer, discover_files

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
QUESTIONS = REPO / "bench" / "questions"
DEFAULT_DATASETS = {
    "sample_book": (REPO / "sample_book", QUESTIONS / "sample_book.jsonl"),
    "humanoid_book": (CORPUS / "humanoid-book", QUESTIONS / "humanoid_book.jsonl"),
}
OUT_OF_BOOK = QUESTIONS / "out_of_book.jsonl"
K = 5
DEFAULT_CONFIG = "hybrid DBSF"
SCALE_CONFIGS: dict[str, dict[str, Any]] = {
    "dense": {"mode": "dense"},
    "hybrid DBSF (the default)": {"mode": "hybrid", "fusion": "dbsf"},
    "hybrid DBSF, chapter filter": {"mode": "hybrid", "fusion": "dbsf", "filtered": True},
    "hybrid RRF": {"mode": "hybrid", "fusion": "rrf"},
    "hybrid DBSF + MMR": {"mode": "hybrid", "fusion": "dbsf", "mmr": True},
    "dense, local mode's own search": {"mode": "dense", "memory": False},
    "hybrid DBSF, local mode's own search": {"mode": "hybrid", "fusion": "dbsf", "memory": False},
}
THRESHOLDS = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45)


@dataclass(frozen=True, slots=True)
class Question:
    question: str
    source: str
    answer_contains: str


@dataclass(slots=True)
class Outcome:
    """One configuration over one question set."""

    name: str
    ranks: list[int | None] = field(default_factory=list)  # 1-based rank of the first hit, None if none in top k
    latencies_ms: list[float] = field(default_factory=list)
    top_scores: list[float] = field(default_factory=list)  # dense cosine of the best passage
    hit_scores: list[float | None] = field(default_factory=list)  # dense cosine of the first hit, if any

    def hit_at(self, n: int) -> float:
        return sum(1 for r in self.ranks if r is not None and r <= n) / len(self.ranks)

    @property
    def mrr(self) -> float:
        return sum(1 / r for r in self.ranks if r is not None) / len(self.ranks)

    def latency(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


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
    questions = [Question(r["question"], r.get("source", ""), r.get("answer_contains", "")) for r in rows]
    return questions[:limit] if limit else questions


def is_hit(document: Document, question: Question) -> bool:
    return document.metadata.get("source") == question.source and normalise(question.answer_contains) in normalise(
        document.page_content
    )


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
        outcome.top_scores.append(float(documents[0].metadata.get("score", 0.0)) if documents else 0.0)
    return outcome


def book_files(book: Path) -> list[Path]:
    return list(discover_files([book], (), DEFAULT_EXCLUDES))


def ingest_project(client: QdrantClient, embeddings: Embeddings, book: Path, collection: str) -> Settings:
    settings = Settings(_env_file=None, qdrant_path=Path("unused"), qdrant_collection=collection)  # type: ignore[call-arg]
    ensure_collection(client, settings, len(embeddings.embed_query("dimension")))
    report = Indexer(client, embeddings, settings, getattr(embeddings, "count_tokens", None)).ingest(
        book_files(book), book
    )
    if report.failed:
        raise SystemExit(f"ingest failed: {report.summary()}")
    return settings


def ingest_baseline(client: QdrantClient, embeddings: Embeddings, book: Path, collection: str) -> QdrantVectorStore:
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


def configurations(
    client: QdrantClient, embeddings: Embeddings, settings: Settings, rerank_model: Path | None
) -> dict[str, BookRetriever]:
    store = build_vector_store(client, settings, embeddings)

    def make(**options: Any) -> BookRetriever:
        # As the service runs on the embedded store: searched in the in-memory index (chains.local_index).
        return BookRetriever(vector_store=store, k=K, local_index=index, **options)

    index = LocalIndex(settings.qdrant_collection)

    configs = {
        "dense": make(mode="dense"),
        "hybrid RRF": make(mode="hybrid", fusion="rrf"),
        "hybrid RRF sparse x2": make(mode="hybrid", fusion="rrf", sparse_weight=2.0),
        "hybrid DBSF": make(mode="hybrid", fusion="dbsf"),
        "dense + MMR": make(mode="dense", mmr=True),
        "hybrid DBSF + MMR": make(mode="hybrid", fusion="dbsf", mmr=True),
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


def run_book(
    name: str,
    book: Path,
    questions: Sequence[Question],
    out_of_book: Sequence[Question],
    embeddings: Embeddings,
    default_mode: str,
    rerank_model: Path | None = None,
) -> BookReport:
    with tempfile.TemporaryDirectory(prefix="eval-retrieval-") as folder:
        client = QdrantClient(path=folder)
        try:
            settings = ingest_project(client, embeddings, book, "eval_bookrag")
            baseline = ingest_baseline(client, embeddings, book, "eval_baseline")
            outcomes = [evaluate("LangChain baseline", lambda q: baseline.similarity_search(q, k=K), questions)]
            configs = configurations(client, embeddings, settings, rerank_model)
            for config, retriever in configs.items():
                outcomes.append(evaluate(config, lambda q, r=retriever: r.invoke(q), questions))  # type: ignore[misc]
            default = configs[default_mode]
            out_scores = [
                float(docs[0].metadata["score"]) if (docs := default.invoke(q.question)) else 0.0 for q in out_of_book
            ]
            chunks = client.count("eval_bookrag", exact=True).count
            baseline_chunks = client.count("eval_baseline", exact=True).count
        finally:
            client.close()
    in_book = next(o for o in outcomes if o.name == default_mode)
    return BookReport(name, chunks, baseline_chunks, outcomes, out_scores, in_book)


def quality_table(reports: Sequence[BookReport]) -> str:
    lines = [
        "| book | configuration | chunks | hit@1 | hit@3 | hit@5 | MRR@5 | p50 ms | p95 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for report in reports:
        for outcome in report.outcomes:
            chunks = report.baseline_chunks if outcome.name == "LangChain baseline" else report.chunks
            lines.append(
                f"| {report.name} ({len(outcome.ranks)} q) | {outcome.name} | {chunks} | {outcome.hit_at(1):.2f} | "
                f"{outcome.hit_at(3):.2f} | {outcome.hit_at(5):.2f} | {outcome.mrr:.3f} | "
                f"{outcome.latency(0.5):.1f} | {outcome.latency(0.95):.1f} |"
            )
    return "\n".join(lines)


def threshold_table(reports: Sequence[BookReport]) -> str:
    lines = ["| book | best-passage cosine | min | p10 | median | max |", "|---|---|---:|---:|---:|---:|"]
    for report in reports:
        assert report.in_book is not None
        for label, scores in (("in-book", report.in_book.top_scores), ("out-of-book", report.out_of_book_scores)):
            if scores:
                lines.append(
                    f"| {report.name} | {label} ({len(scores)} q) | {min(scores):.3f} | {percentile(scores, 0.1):.3f} "
                    f"| {percentile(scores, 0.5):.3f} | {max(scores):.3f} |"
                )
    lines += [
        "",
        "In-book questions answered (best passage at or above the threshold), in-book questions whose answering "
        "passage is in the top 5 and itself passes the threshold (it reaches the model), out-of-book questions "
        "refused:",
        "",
        "| threshold | " + " | ".join(f"{r.name}: answered / answer kept / refused" for r in reports) + " |",
        "|---:|" + "---:|" * len(reports),
    ]
    for threshold in THRESHOLDS:
        cells = []
        for report in reports:
            assert report.in_book is not None
            asked = max(1, len(report.in_book.ranks))
            answered = sum(1 for s in report.in_book.top_scores if s >= threshold) / asked
            kept = sum(1 for s in report.in_book.hit_scores if s is not None and s >= threshold) / asked
            refused = sum(1 for s in report.out_of_book_scores if s < threshold) / max(
                1, len(report.out_of_book_scores)
            )
            cells.append(f"{answered:.2f} / {kept:.2f} / {refused:.2f}")
        lines.append(f"| {threshold:.2f} | " + " | ".join(cells) + " |")
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
        client = QdrantClient(path=folder)
        try:
            settings = Settings(_env_file=None, qdrant_path=Path(folder), qdrant_collection="eval_scale")  # type: ignore[call-arg]
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
                    }
                    points.append(
                        models.PointStruct(
                            id=point_id(f"scale-{start + offset}"),
                            vector=vector,
                            payload={"page_content": text, "metadata": metadata},
                        )
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
            default = BookRetriever(vector_store=store, k=K, local_index=LocalIndex("eval_scale"))
            options_default = default._options({})[1]
            default._search(vectors[0], questions[0].question, K, options_default)  # warm-up: reads the index
            search_ms = []
            for question, vector in zip(questions, vectors, strict=True):
                started = time.perf_counter()
                default._search(vector, question.question, K, options_default)
                search_ms.append((time.perf_counter() - started) * 1000)
            lines.append(
                f"| {stored} chunks | query embedding alone | {len(questions)} | {percentile(embed_ms, 0.5):.1f} | "
                f"{percentile(embed_ms, 0.95):.1f} |"
            )
            lines.append(
                f"| {stored} chunks | hybrid DBSF search, vector given | {len(questions)} | "
                f"{percentile(search_ms, 0.5):.1f} | {percentile(search_ms, 0.95):.1f} |"
            )
            for label, options in SCALE_CONFIGS.items():
                options = dict(options)
                index = LocalIndex("eval_scale") if options.pop("memory", True) else None
                filtered = options.pop("filtered", False)
                retriever = BookRetriever(vector_store=store, k=K, local_index=index, **options)
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
) -> tuple[list[BookReport], str]:
    """Evaluate every dataset (name: (book folder, questions file)); returns the reports and the Markdown."""
    out_of_book = load_questions(out_of_book_path, limit) if out_of_book_path.is_file() else []
    reports = []
    all_questions: list[Question] = []
    for name, (book, questions_path) in datasets.items():
        questions = load_questions(questions_path, limit)
        all_questions.extend(questions)
        reports.append(run_book(name, book, questions, out_of_book, embeddings, default_mode, rerank_model))
    parts = [
        "## Retrieval quality (k = 5)",
        "",
        quality_table(reports),
        "",
        f"## Best-passage dense cosine, {default_mode} (in-book vs out-of-book questions)",
        "",
        threshold_table(reports),
    ]
    if scale:
        parts += ["", f"## Latency at scale (k = {K})", "", run_scale(scale, embeddings, all_questions, 384)]
    return reports, "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--book", type=Path, help="a book folder (with --questions); default: both development sets")
    parser.add_argument("--questions", type=Path, help="a JSONL question set for --book")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N questions of each set")
    parser.add_argument("--default", default=DEFAULT_CONFIG, help="the configuration the threshold table uses")
    parser.add_argument("--rerank-model", type=Path, default=None, help="a local cross-encoder directory to add")
    parser.add_argument("--scale", type=int, default=0, help="also measure latency on a collection of N chunks")
    parser.add_argument("--scale-only", action="store_true", help="with --scale: skip the quality runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers to this file")
    args = parser.parse_args(argv)
    if args.book is not None:
        if args.questions is None:
            parser.error("--book needs --questions")
        datasets = {args.book.name: (args.book, args.questions)}
    else:
        datasets = DEFAULT_DATASETS
    limit_blas_threads()  # as `rag-api` does at start-up
    # The product's query path (ONNX Runtime when it can be exported), no query cache: every question embedded.
    onnx_dir = Settings(_env_file=None).embedding_onnx_dir  # type: ignore[call-arg]
    embeddings = LocalEmbeddings(packaged_model_path("all-MiniLM-L6-v2"), cache_size=0, onnx_dir=onnx_dir)
    started = time.perf_counter()
    if args.scale_only:
        questions = [q for _, path in datasets.values() for q in load_questions(path, args.limit)]
        print(run_scale(args.scale, embeddings, questions, embeddings.dimension))
        return 0
    reports, markdown = run(datasets, embeddings, args.limit, args.default, args.rerank_model, args.scale)
    print(markdown)
    print(
        f"\n{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"{time.perf_counter() - started:.0f} s in all",
        file=sys.stderr,
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "book": r.name,
                        "configurations": {
                            o.name: {
                                "ranks": o.ranks,
                                "latencies_ms": o.latencies_ms,
                                "top_scores": o.top_scores,
                                "hit_scores": o.hit_scores,
                            }
                            for o in r.outcomes
                        },
                        "out_of_book_scores": r.out_of_book_scores,
                    }
                    for r in reports
                ],
                indent=1,
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
