"""The retrieval evaluation harness runs end to end on a tiny book (no metric is asserted: numbers go in docs/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.eval_retrieval import run
from chains.embeddings import LocalEmbeddings

pytestmark = pytest.mark.integration


def test_eval_harness_runs_end_to_end_on_a_tiny_book(
    embeddings: LocalEmbeddings, book_dir: Path, tmp_path: Path
) -> None:
    questions = tmp_path / "questions.jsonl"
    rows = [
        {"question": "How much water for a young tree?", "source": "watering.md", "answer_contains": "twenty litres"},
        {"question": "What are the three Ds?", "source": "pruning.md", "answer_contains": "dead, damaged"},
    ]
    questions.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    out_of_book = tmp_path / "out.jsonl"
    out_of_book.write_text(json.dumps({"question": "What is the capital of Mongolia?"}), encoding="utf-8")
    # In-domain unanswerable questions sit beside the answerable set, named after it.
    unanswerable = tmp_path / "questions_unanswerable.jsonl"
    rows = [{"question": "How do I protect the trees from fire blight?", "absent": ["fire blight"]}]
    unanswerable.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")

    reports, markdown = run(
        {"tiny": (book_dir, questions)}, embeddings, out_of_book_path=out_of_book, scale=30, stores=tmp_path / "s"
    )

    names = [outcome.name for outcome in reports[0].outcomes]
    assert names[0] == "LangChain baseline" and "hybrid DBSF" in names
    assert all(len(outcome.ranks) == 2 for outcome in reports[0].outcomes)
    assert all(len(o.unanswerable_scores) == 1 and len(o.out_of_domain_scores) == 1 for o in reports[0].outcomes)
    assert "| tiny (2/1/1 q) | LangChain baseline |" in markdown
    assert reports[0].missing_answers == [] and reports[0].present_terms == []
    assert list((tmp_path / "s").iterdir()), "the book's store is kept under `stores` for the next run"
    assert "## Latency at scale" in markdown
    assert "| 30 chunks | hybrid DBSF + sentence re-scoring + neighbours (the default) |" in markdown


def test_refusal_rates_count_a_question_refused_when_no_passage_passes_or_a_signal_refuses() -> None:
    from bench.eval_retrieval import Outcome

    outcome = Outcome(
        "x",
        top_scores=[0.5, 0.3],  # answerable: the second has no passage at 0.35
        unanswerable_scores=[0.6, 0.5, 0.2],
        out_of_domain_scores=[0.1],
    )
    assert outcome.refusal_rates(0.35) == (0.5, 1 / 3, 1.0)
    outcome.refused_unanswerable = [True, False, False]  # a prototype's own signal refuses the first one too
    outcome.refused_answerable = [False, False]
    outcome.refused_out_of_domain = [False]
    assert outcome.refusal_rates(0.35) == (0.5, 2 / 3, 1.0)
