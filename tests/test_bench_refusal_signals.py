"""bench/refusal_signals.py decides each rule from a question's record as its table says: the cosine threshold, a
missing name (unless counted as known), a rare missing word unless the best passage is a strong match."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from bench.refusal_signals import Record, main, rules, table


def record(
    set_name: str,
    best: float,
    names: list[str] | None = None,
    words: list[tuple[str, float]] | None = None,
    sentence: float = 0.0,
) -> Record:
    cosines = [best, best - 0.1, best - 0.2, best - 0.3, best - 0.4]
    return Record(set_name, "q", best, cosines, 2, names or [], words or [], [], best_sentence=sentence)


def test_each_rule_refuses_what_its_label_says() -> None:
    decide = rules(0.35, sentence_threshold=0.46)
    [product] = [rule for label, rule in decide.items() if label.endswith("(product)")]
    assert decide["threshold"](record("answerable", 0.30))
    assert not decide["threshold"](record("answerable", 0.50, ["Kubernetes"]))
    assert decide["+ names (before)"](record("answerable", 0.50, ["Kubernetes"]))
    assert product(record("unanswerable", 0.50, words=[("serde", 0.0)]))
    # An uncommon English word: not while a passage has a sentence near the question, only when none has.
    assert not product(record("answerable", 0.50, words=[("lopsided", 2.91)], sentence=0.48))
    assert product(record("unanswerable", 0.50, words=[("cider", 3.5)], sentence=0.44))
    assert not product(record("answerable", 0.50, words=[("sunshine", 4.16)], sentence=0.44))  # everyday English
    assert not product(record("answerable", 0.65, words=[("bosses", 3.9)]))  # a strong passage match
    assert product(record("unanswerable", 0.65, ["Kubernetes"]))  # a name refuses whatever the cosine
    # The product's gate: under the cosine threshold, a passage's best sentence still lets it through.
    assert product(record("answerable", 0.34, sentence=0.45))
    assert not product(record("answerable", 0.34, sentence=0.46))
    assert decide["threshold"](record("answerable", 0.34, sentence=0.46))  # the cosine alone
    # A sentence that close also overrides a missing rare word (REFUSAL_STRONG_SENTENCE, 0.70).
    assert not product(record("unanswerable", 0.59, words=[("espalier", 1.48)], sentence=0.76))
    assert product(record("unanswerable", 0.59, words=[("espalier", 1.48)], sentence=0.65))
    assert not rules(0.35, frozenset({"Thoreau"}))["+ names (before)"](record("unanswerable", 0.5, ["Thoreau"]))


def test_the_table_gives_each_sets_refused_share_and_reads_saved_records(tmp_path: Path) -> None:
    books = {"tiny": [record("answerable", 0.5), record("answerable", 0.3), record("unanswerable", 0.5, ["XCTest"])]}
    lines = table(books, 0.35).splitlines()
    row = next(line for line in lines if "| + names (before) |" in line)
    assert row == "| tiny (2/1/0 q) | + names (before) | 0.50 | 1.00 | 0.00 |"
    saved = tmp_path / "records.json"
    saved.write_text(json.dumps({"threshold": 0.35, "books": {k: [asdict(r) for r in v] for k, v in books.items()}}))
    assert main(["--records", str(saved)]) == 0


def test_the_frontier_scores_each_book_with_a_rule_fitted_on_the_others() -> None:
    from sklearn.linear_model import LogisticRegression

    from bench.refusal_frontier import held_out, report

    # Three books where a missing rare word marks every in-domain unanswerable question, and a fourth where the
    # same signal marks answerable ones: a rule learned on the first three refuses those, as a held-out book shows.
    def book(answerable_word: bool) -> list[Record]:
        answerable = [
            record("answerable", 0.5 + i / 100, words=[("lopsided", 1.0)] if answerable_word else None, sentence=0.5)
            for i in range(20)
        ]
        unanswerable = [record("unanswerable", 0.5 + i / 100, words=[("serde", 1.0)], sentence=0.5) for i in range(8)]
        return answerable + unanswerable

    alike = {"a": book(False), "b": book(False), "c": book(False)}
    assert held_out(alike, LogisticRegression(), 0.05, 0.35, 0.46)["a"] == (0.0, 1.0)
    books = {**alike, "odd": book(True)}
    scores = held_out(books, LogisticRegression(), 0.05, 0.35, 0.46)
    assert scores["odd"][0] == 1.0  # fitted on the others, the rule refuses this book's paraphrases
    saved = {
        "threshold": 0.35,
        "sentence_threshold": 0.46,
        "books": {n: [asdict(r) for r in rs] for n, rs in books.items()},
    }
    text = report(saved)
    assert "the product's rule" in text and "| pooled |" in text


def test_a_missing_word_that_carries_the_question_refuses_beside_the_product_rule() -> None:
    decide = rules(0.35, sentence_threshold=0.46)
    heavy = decide["product, + a missing word < 4.7 carrying >= 0.2 of the question"]
    carried = record("unanswerable", 0.50, words=[("abortion", 4.24)], sentence=0.50)
    assert not rules(0.35, sentence_threshold=0.46)[next(k for k in decide if k.endswith("(product)"))](carried)
    assert heavy(Record(**{**asdict(carried), "absent_weights": [0.33]}))
    assert not heavy(Record(**{**asdict(carried), "absent_weights": [0.05]}))  # how it is said, not what
    common = record("answerable", 0.50, words=[("folks", 4.8)], sentence=0.50)
    assert not heavy(Record(**{**asdict(common), "absent_weights": [0.5]}))  # everyday English never counts


def test_a_words_weight_is_how_far_the_question_moves_without_it(embeddings: object) -> None:
    from bench.refusal_signals import word_weights

    question = "What is Mill's position on abortion?"  # words: What is Mill's position on abortion
    topic, filler = word_weights(embeddings, question, [5, 1])
    assert 0.0 < filler < topic  # "abortion" is what the question asks about; "is" hardly moves it
    assert word_weights(embeddings, question, []) == []
