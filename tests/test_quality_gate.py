"""Retrieval and refusal quality as a check: the default configuration over the question sets in bench/questions
must stay above floors a little under today's figures (docs/retrieval.md), so a change that hurts retrieval fails.

The sample book always runs; the humanoid book runs where ../shared/corpus is present (skipped otherwise, with the
reason). Real embedding model, real embedded Qdrant, the product's own chain without a chat model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from bench.eval_retrieval import DATASETS, OUT_OF_BOOK, evaluate, load_questions, unanswerable_path
from chains.answer import build_answer_chain
from chains.book_terms import BookVocabulary
from chains.embeddings import LocalEmbeddings
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import build_vector_store, ensure_collection
from ingest.indexer import DEFAULT_EXCLUDES, Indexer, discover_files

pytestmark = pytest.mark.integration

# book: (hit@5, MRR, answerable refused at most, in-domain unanswerable refused at least, out-of-domain refused at
# least). Today (2026-12-03, 20 candidates re-scored, nearby passages of a chapter joined and the term check):
# sample 1.00 / 0.961 / 0 / 0.17 / 0.94; humanoid 1.00 / 0.983 / 0 / 1.00 / 0.88. The sample book's unanswerable
# questions name what it lacks in English words ("fire blight", "cider"), which the check reads as missing only
# when no passage comes near the question: on two books it had not seen, it refused a third of the answerable
# questions for such words (docs/retrieval.md, "Two books no default was chosen on"). The out-of-domain floor is
# what a model with crowded cosines loses first (bge-small-en-v1.5: humanoid 0.81, docs/retrieval.md).
FLOORS = {
    "sample_book": (0.97, 0.93, 0.05, 0.08, 0.87),
    "humanoid_book": (0.95, 0.93, 0.05, 0.75, 0.87),
}


@pytest.mark.parametrize("name", sorted(FLOORS))
async def test_the_default_configuration_stays_above_its_floors(
    name: str, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    book, questions_path = DATASETS[name]
    if not book.is_dir():
        pytest.skip(f"{book} is not here (the shared corpus sits beside the repository in CI and for developers)")
    hit5_floor, mrr_floor, answerable_ceiling, refusal_floor, out_of_domain_floor = FLOORS[name]
    ensure_collection(qdrant, settings, embeddings.dimension)
    files = list(discover_files([book], (), DEFAULT_EXCLUDES))
    report = Indexer(qdrant, embeddings, settings, embeddings.count_tokens).ingest(files, Path(book))
    assert not report.failed

    retriever = BookRetriever.from_settings(build_vector_store(qdrant, settings, embeddings), settings, None)
    questions = load_questions(questions_path)
    outcome = evaluate("default", retriever.invoke, questions)
    assert outcome.hit_at(5) >= hit5_floor, f"{name}: hit@5 {outcome.hit_at(5):.2f} < {hit5_floor}"
    assert outcome.mrr >= mrr_floor, f"{name}: MRR {outcome.mrr:.3f} < {mrr_floor}"

    vocabulary = BookVocabulary(settings.qdrant_collection)
    vocabulary.read_now(qdrant)
    chain = build_answer_chain(retriever, None, settings, vocabulary=vocabulary)

    async def refused(question: str) -> bool:
        return not (await chain.ainvoke(question)).get("sources")

    answerable = [await refused(q.question) for q in questions]
    unanswerable = [await refused(q.question) for q in load_questions(unanswerable_path(questions_path))]
    assert sum(answerable) / len(answerable) <= answerable_ceiling, f"{name}: answerable questions refused"
    rate = sum(unanswerable) / len(unanswerable)
    assert rate >= refusal_floor, f"{name}: in-domain unanswerable refused {rate:.2f} < {refusal_floor}"
    elsewhere = [await refused(q.question) for q in load_questions(OUT_OF_BOOK)]
    rate = sum(elsewhere) / len(elsewhere)
    assert rate >= out_of_domain_floor, f"{name}: out-of-domain refused {rate:.2f} < {out_of_domain_floor}"
