"""Highlights from the sentence vectors stored at ingest against highlights that embed the passages' sentences:
the cost per answer and whether the same sentences are chosen, over the same retrieved passages.

    BENCH_CORPUS=/work/shared/corpus .venv/bin/python -m bench.highlight_vectors --books sample_book,humanoid_book

Uses the stores `bench.eval_retrieval` caches under .bench-cache/ (ingesting a book the first time). For each
answerable question: the passages the answer chain would cite (the retriever, the score threshold), then
`highlight_passages` both ways, timed (CPU and wall) without the answer chain's sentence cache: "embedded" runs the
model on every sentence of the k passages, "stored" reads the points' `sentence_vectors` by id
(`chains.answer.stored_sentence_vectors`, one request) and embeds nothing. Also how often each way's extractive
answer holds `answer_contains`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace

from bench.eval_retrieval import DATASETS, ingest_project, load_questions, normalise, store_folder
from chains.answer import PassageRef, Source, extractive_answer, stored_sentence_vectors
from chains.embeddings import build_embeddings
from chains.highlights import highlight_passages
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import build_qdrant_client, build_vector_store


def _cpu() -> float:
    return time.process_time()  # every thread: a batch past 64 sentences runs in the pool


def measure(name: str) -> dict[str, object]:
    book, questions_path = DATASETS[name]
    questions = load_questions(questions_path)
    embeddings = build_embeddings(Settings(_env_file=None, embedding_cache_size=0))  # type: ignore[call-arg]
    folder = store_folder(name, book)
    folder.mkdir(parents=True, exist_ok=True)
    client = build_qdrant_client(Settings(_env_file=None, qdrant_path=folder, qdrant_collection="eval_bookrag"))  # type: ignore[call-arg]
    timings: dict[str, list[float]] = {"embedded wall": [], "embedded cpu": [], "stored wall": [], "stored cpu": []}
    same_sources = sources_total = same_answers = answered = 0
    holds = {"embedded": 0, "stored": 0}
    sentences = 0
    try:
        settings = ingest_project(client, embeddings, book, "eval_bookrag")
        store = build_vector_store(client, settings, embeddings)
        retriever = BookRetriever.from_settings(store, settings, None)
        for question in questions:
            documents = [
                d
                for d in retriever.invoke(question.question)
                if d.metadata["score"] >= settings.retrieval_score_threshold
            ]
            if not documents:
                continue
            answered += 1
            texts = [d.page_content for d in documents]
            vector = embeddings.embed_query(question.question)
            wall, cpu = time.perf_counter(), _cpu()
            embedded = highlight_passages(question.question, vector, texts, embeddings.embed_documents)
            timings["embedded wall"].append(time.perf_counter() - wall)
            timings["embedded cpu"].append(_cpu() - cpu)
            wall, cpu = time.perf_counter(), _cpu()
            passages = [PassageRef.of(d) for d in documents]
            stored_vectors = stored_sentence_vectors(client, "eval_bookrag", passages, len(vector))
            stored = highlight_passages(question.question, vector, texts, embeddings.embed_documents, stored_vectors)
            timings["stored wall"].append(time.perf_counter() - wall)
            timings["stored cpu"].append(_cpu() - cpu)
            assert all(v is not None for v in stored_vectors), "a passage without stored sentence vectors"
            sentences += sum(len(v or []) for v in stored_vectors)
            same_sources += sum(a == b for a, b in zip(embedded, stored, strict=True))
            sources_total += len(documents)
            same_answers += embedded[:3] == stored[:3]
            wanted = normalise(question.answer_contains)
            for way, spans in (("embedded", embedded), ("stored", stored)):
                sources = [
                    _source(n, d.page_content, s)
                    for n, (d, s) in enumerate(zip(documents, spans, strict=True), start=1)
                ]
                holds[way] += wanted in normalise(extractive_answer(sources))
    finally:
        client.close()
    row: dict[str, object] = {
        "book": name,
        "answered": answered,
        "sentences a question": sentences / max(1, answered),
        "same spans (sources)": f"{same_sources}/{sources_total}",
        "same extractive passages (questions)": f"{same_answers}/{answered}",
        "holds the answer: embedded": holds["embedded"],
        "holds the answer: stored": holds["stored"],
    }
    for key, values in timings.items():
        row[f"{key} p50 ms"] = round(statistics.median(values) * 1000, 1)
        row[f"{key} p95 ms"] = round(statistics.quantiles(values, n=20)[-1] * 1000, 1)
    return row


def _source(number: int, text: str, spans: Sequence[tuple[int, int]]) -> Source:
    blank = Source(number, text, 0.0, "", None, [], None, None, None)
    return replace(blank, highlights=list(spans))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--books", default="sample_book,humanoid_book")
    args = parser.parse_args(argv)
    import os

    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    for name in args.books.split(","):
        print(measure(name))
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
