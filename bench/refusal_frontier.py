"""Whether the refusal signals already measured can reach issue 19's refusal targets in any combination (in-domain
unanswerable questions refused >= 75 %, answerable ones <= 5 %), judged on books a rule was not fitted on:

    .venv/bin/python -m bench.refusal_frontier --records bench/results/refusal-signals-view-holder-2026-12-03.json

It reads the records `bench.refusal_signals --json` writes (the same searches, no model call) and fits two
classifiers, answerable against in-domain unanswerable, on every book but one: a logistic regression on the
standardised signals and shallow gradient-boosted trees. Each is cut where it refuses a given share of the
training books' answerable questions, the product's cosine gate is added (a question it refuses stays refused),
and the held-out book is scored; every book is held out once. The signals are the ones `bench.refusal_signals`
compares one by one: the best passage's and best sentence's cosines, the margin over the fifth passage, how many
passages the dense and sparse lists share, missing names, missing words by their frequency in English, new pairs
of book words, the question's length, and the weight in the question of its heaviest missing word. The product's
hand-written rule is printed beside them, pooled over the same books: a learned rule that cannot beat it under
this test is no reason to replace it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.refusal_signals import Record, rules

BUDGETS = (0.03, 0.05)  # share of the training books' answerable questions a learned rule may refuse


def signals(record: Record) -> list[float]:
    cosines = record.cosines or [0.0]
    frequencies = [zipf for _, zipf in record.absent_words]
    words = len(record.question.split())
    weights = [w for (_, z), w in zip(record.absent_words, record.absent_weights, strict=False) if z < 4.7]
    return [
        record.best_cosine,
        record.best_sentence,
        cosines[0] - cosines[min(4, len(cosines) - 1)],
        float(len(cosines)),
        float(record.dense_sparse_shared),
        float(len(record.missing_names)),
        float(len(record.missing_words)),
        min(frequencies) if frequencies else 7.0,
        float(sum(1 for z in frequencies if z < 4.0)),
        float(sum(1 for z in frequencies if z < 3.0)),
        float(len(record.new_pairs)),
        len(record.new_pairs) / max(1, words),
        float(words),
        max(weights, default=0.0),
    ]


def classifiers() -> dict[str, object]:
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "logistic regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
        "gradient-boosted trees (depth 2)": GradientBoostingClassifier(n_estimators=100, max_depth=2, random_state=0),
    }


def held_out(
    books: dict[str, list[Record]], model: object, budget: float, gate: float, gate_sentence: float
) -> dict[str, tuple[float, float]]:
    """Each book's (answerable refused, in-domain unanswerable refused) by a model fitted on the other books."""
    from sklearn.base import clone

    data = {
        name: (
            np.array([signals(r) for r in records if r.set != "out_of_domain"]),
            np.array([r.set == "unanswerable" for r in records if r.set != "out_of_domain"]),
            np.array(
                [r.best_cosine < gate and r.best_sentence < gate_sentence for r in records if r.set != "out_of_domain"]
            ),
        )
        for name, records in books.items()
    }
    out = {}
    for name, (features, unanswerable, gated) in data.items():
        train_x = np.vstack([x for other, (x, _, _) in data.items() if other != name])
        train_y = np.concatenate([y for other, (_, y, _) in data.items() if other != name])
        fitted = clone(model).fit(train_x, train_y)
        train_answerable = np.sort(fitted.predict_proba(train_x)[:, 1][~train_y])
        cut = train_answerable[min(len(train_answerable) - 1, int(np.floor((1 - budget) * len(train_answerable))))]
        refused = (fitted.predict_proba(features)[:, 1] > cut) | gated
        out[name] = (float(refused[~unanswerable].mean()), float(refused[unanswerable].mean()))
    return out


def report(saved: dict[str, object]) -> str:
    books = {name: [Record(**r) for r in records] for name, records in saved["books"].items()}
    threshold = float(saved["threshold"])
    gate_sentence = float(saved.get("sentence_threshold", 1.0))
    (product,) = (
        rule for label, rule in rules(threshold, sentence_threshold=gate_sentence).items() if "(product)" in label
    )
    columns: dict[str, dict[str, tuple[float, float]]] = {}
    for name, records in books.items():
        answerable = [r for r in records if r.set == "answerable"]
        unanswerable = [r for r in records if r.set == "unanswerable"]
        columns.setdefault("the product's rule", {})[name] = (
            sum(map(product, answerable)) / max(1, len(answerable)),
            sum(map(product, unanswerable)) / max(1, len(unanswerable)),
        )
    for label, model in classifiers().items():
        for budget in BUDGETS:
            columns[f"{label}, {budget:.0%} of training answerable"] = held_out(
                books, model, budget, threshold, gate_sentence
            )
    sizes = {
        name: (sum(r.set == "answerable" for r in rs), sum(r.set == "unanswerable" for r in rs))
        for name, rs in books.items()
    }
    lines = ["| rule | " + " | ".join(books) + " | pooled |", "|---|" + "---|" * (len(books) + 1)]
    for label, by_book in columns.items():
        answerable = sum(by_book[b][0] * sizes[b][0] for b in books) / sum(s[0] for s in sizes.values())
        unanswerable = sum(by_book[b][1] * sizes[b][1] for b in books) / sum(s[1] for s in sizes.values())
        cells = [f"{by_book[b][0]:.2f} / {by_book[b][1]:.2f}" for b in books]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | **{answerable:.3f} / {unanswerable:.3f}** |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=Path, required=True, help="a `bench.refusal_signals --json` file")
    args = parser.parse_args(argv)
    print("Refused, answerable / in-domain unanswerable, each book held out of the fitting:\n")
    print(report(json.loads(args.records.read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
