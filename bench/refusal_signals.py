"""Refusal signals for in-domain questions the book does not answer (issue 19), measured per book, the same rule
for every book:

    BENCH_CORPUS=../shared/corpus .venv/bin/python -m bench.refusal_signals --books all \
        --json bench/results/refusal-signals.json

Each question of a book's three sets (answerable, in-domain unanswerable, out-of-domain) is searched once with
the product's default retriever, and once each with the dense and the sparse list alone; the record keeps what
every rule below needs, so the rules are compared on the same searches:

- **threshold**: no passage of the top 5 reaches RETRIEVAL_SCORE_THRESHOLD (the cosine check alone); the product's
  gate also lets a passage through whose best sentence reaches RETRIEVAL_SENTENCE_THRESHOLD (its own rows);
- **+ names**: or an identifier or capitalised name of the question is not in the book (chains.book_terms, what
  the product did before this rule);
- **+ words < Z**: or a plain lower-case word of the question is not in the book in any close form and is rarer
  than Z on the Zipf scale (`Vocabulary.missing_words`; Z = chains.book_terms.RARE_BELOW is the product's);
- **+ agreement**: the dense and the sparse top 5 share no passage (alone, and only for a question that also has
  a missing rare word, a softer cut);
- **+ margin**: the best passage's cosine is within 0.02 of the fifth's (no passage stands out);
- **+ a new pair**: two adjacent plain words of the question are both in the book but never side by side there;
- **+ a heavy missing word**: a plain word the book lacks, below 4.7 on the Zipf scale, carries at least W of the
  question's meaning: the question's embedding moves by 1 - cosine >= W when the word is taken out ("What is
  Mill's position on abortion?" without "abortion").

Stores come from the cache of `bench.eval_retrieval` (`.bench-cache/eval-retrieval/`, keyed by the book's files),
so a book it has embedded costs nothing here; another is ingested first.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import models

from bench.common import bench_embeddings
from bench.eval_retrieval import (
    DATASETS,
    OUT_OF_BOOK,
    STORES,
    Question,
    best_score,
    ensure_sentence_vectors,
    ingest_project,
    load_questions,
    store_folder,
    unanswerable_path,
)
from chains.attribution import without_view_holder
from chains.book_terms import (
    RARE_BELOW,
    STOP_WORDS,
    STRONG_MATCH,
    STRONG_SENTENCE,
    UNCOMMON_BELOW,
    WORD,
    Vocabulary,
    plain_words,
    stored_texts,
    word_frequency,
)
from chains.retrieval import BookRetriever, limit_blas_threads
from chains.settings import Settings
from chains.sparse import encode_query
from chains.vectorstore import SPARSE_VECTOR, build_qdrant_client, build_vector_store

COLLECTION = "eval_bookrag"
SETS = ("answerable", "unanswerable", "out_of_domain")
CUTS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
STRONG = (0.55, 0.60, 0.65)
SENTENCE = (0.60, 0.65, 0.70, 0.75, 1.0)  # 1.0: no sentence override
GATE_SENTENCE = (0.42, 0.44, 0.46, 0.48, 0.50, 1.0)  # RETRIEVAL_SENTENCE_THRESHOLD; 1.0: the cosine alone
HEAVY = (0.15, 0.20, 0.25)  # a missing word's weight in the question (`word_weights`)


@dataclass
class Record:
    """One question searched once: what each rule decides from."""

    set: str
    question: str
    best_cosine: float
    cosines: list[float]  # the top 5's dense cosines, best first
    dense_sparse_shared: int  # passages in both the dense and the sparse top 5
    missing_names: list[str]
    absent_words: list[tuple[str, float]]  # plain words the book lacks in every close form, with their Zipf value
    missing_words: list[str]  # what the product's rule (RARE_BELOW) names
    # Two adjacent plain words of the question that the book both uses but never side by side ("cherry branch").
    new_pairs: list[str] = field(default_factory=list)
    best_sentence: float = 0.0  # the passages' best sentence cosine (re-scored passages carry it)
    # For each of `absent_words`: 1 - cosine between the question's embedding and the question's without the word.
    absent_weights: list[float] = field(default_factory=list)


def records_for(name: str, book: Path, questions: dict[str, Sequence[Question]], embeddings: Any) -> list[Record]:
    folder = store_folder(name, book, STORES)
    folder.mkdir(parents=True, exist_ok=True)
    client = build_qdrant_client(Settings(_env_file=None, qdrant_path=folder, qdrant_collection=COLLECTION))  # type: ignore[call-arg]
    try:
        settings = ingest_project(client, embeddings, book, COLLECTION)
        ensure_sentence_vectors(client, embeddings, COLLECTION)
        store = build_vector_store(client, settings, embeddings)
        product = BookRetriever.from_settings(store, settings)
        dense = product.model_copy(update={"mode": "dense", "sentence_rescore": 0})
        vocabulary = Vocabulary.of(stored_texts(client, COLLECTION))
        out = []
        for set_name, items in questions.items():
            for question in items:
                text = question.question
                documents = product.invoke(text)
                dense_texts = {d.page_content for d in dense.invoke(text)}
                sparse = encode_query(text)
                sparse_texts: set[str] = set()
                if sparse:
                    points = client.query_points(
                        COLLECTION,
                        query=models.SparseVector(indices=sparse.indices, values=sparse.values),
                        using=SPARSE_VECTOR,
                        limit=product.k,
                        with_payload=True,
                    ).points
                    sparse_texts = {str((p.payload or {}).get("page_content", "")) for p in points}
                asked = without_view_holder(text, lower_case=True)  # as the product's word check reads it
                lacking = [(position, word) for position, word in plain_words(asked) if not vocabulary.uses(word)]
                absent = [(word, round(word_frequency(word), 2)) for _, word in lacking]
                out.append(
                    Record(
                        set_name,
                        text,
                        best_score(documents),
                        sorted((float(d.metadata.get("score", 0.0)) for d in documents), reverse=True),
                        len(dense_texts & sparse_texts),
                        vocabulary.missing(text, words=False),
                        absent,
                        vocabulary.missing_words(text),
                        new_pairs(vocabulary, text),
                        max((float(d.metadata.get("sentence_score") or 0.0) for d in documents), default=0.0),
                        word_weights(embeddings, asked, [position for position, _ in lacking]),
                    )
                )
        return out
    finally:
        client.close()


def word_weights(embeddings: Any, question: str, positions: Sequence[int]) -> list[float]:
    """How much of the question's meaning each word at `positions` (of `WORD`'s matches) carries: 1 - the cosine
    between the question's embedding and the question's without that word."""
    if not positions:
        return []
    words = list(WORD.finditer(question.replace("\u2019", "'")))
    reduced = [question[: words[p].start()] + question[words[p].end() :] for p in positions]
    vectors = np.asarray([embeddings.embed_query(text) for text in [question, *reduced]], dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [round(float(1.0 - vectors[0] @ vector), 3) for vector in vectors[1:]]


def new_pairs(vocabulary: Vocabulary, question: str) -> list[str]:
    words = [m.group(0) for m in WORD.finditer(question)]
    pairs = [
        f"{a} {b}"
        for a, b in itertools.pairwise(words)
        if all(re.fullmatch("[a-z]{3,}", w) and w not in STOP_WORDS and vocabulary.has(w) for w in (a, b))
    ]
    return [pair for pair in pairs if not vocabulary.has(pair)]


Rule = Callable[[Record], bool]


def rules(threshold: float, known: frozenset[str] = frozenset(), sentence_threshold: float = 1.0) -> dict[str, Rule]:
    def low(r: Record) -> bool:
        return r.best_cosine < threshold

    def below(sentence: float) -> Rule:  # the product's gate: no passage by its cosine nor by its best sentence
        return lambda r: r.best_cosine < threshold and r.best_sentence < sentence

    def names(r: Record) -> bool:
        return low(r) or any(name not in known for name in r.missing_names)

    def rare(cut: float) -> Rule:
        return lambda r: names(r) or any(z < cut for _, z in r.absent_words)

    def margin(r: Record) -> bool:
        return len(r.cosines) >= 5 and r.cosines[0] - r.cosines[4] < 0.02

    def rare_unless_strong(cut: float, strong: float) -> Rule:
        return lambda r: names(r) or (r.best_cosine < strong and any(z < cut for _, z in r.absent_words))

    found: dict[str, Rule] = {"threshold": low, "+ names (before)": names}
    for cut in CUTS:
        found[f"+ names + words < {cut}"] = rare(cut)

    def rare_unless_sentence(sentence: float, gate: Rule = low, weak: float = 0.0) -> Rule:
        """Names, or a missing rare word unless a passage is strong; below `weak` (a best sentence under it), an
        uncommon word too (the product's second tier: UNCOMMON_BELOW; 0 leaves it out)."""
        return lambda r: (
            gate(r)
            or any(name not in known for name in r.missing_names)
            or (
                r.best_cosine < STRONG_MATCH
                and r.best_sentence < sentence
                and any(z < (UNCOMMON_BELOW if r.best_sentence < weak else RARE_BELOW) for _, z in r.absent_words)
            )
        )

    for cut in CUTS:
        for strong in STRONG:
            found[f"+ names + words < {cut} unless cosine >= {strong}"] = rare_unless_strong(cut, strong)
    for sentence in SENTENCE:
        label = f"+ names + words < {RARE_BELOW} unless cosine >= {STRONG_MATCH} or a sentence >= {sentence}"
        found[label] = rare_unless_sentence(sentence)
    for cut in GATE_SENTENCE:
        found[f"threshold, or a passage's best sentence >= {cut}"] = below(cut)
    for cut in GATE_SENTENCE:
        marker = " (product)" if cut == sentence_threshold else ""
        label = f"the same gate, + names + words unless cosine >= {STRONG_MATCH} or a sentence >= {STRONG_SENTENCE}"
        found[f"{label}, gate sentence {cut}"] = rare_unless_sentence(STRONG_SENTENCE, below(cut))
        found[f"{label}, gate sentence {cut}, words < {UNCOMMON_BELOW} below it{marker}"] = rare_unless_sentence(
            STRONG_SENTENCE, below(cut), weak=cut
        )
    found["+ names + no dense/sparse agreement"] = lambda r: names(r) or r.dense_sparse_shared == 0
    found["+ names + words < 4.3 when no agreement"] = lambda r: (
        names(r) or (r.dense_sparse_shared == 0 and any(z < 4.3 for _, z in r.absent_words))
    )
    found["+ names + flat top 5 (margin < 0.02)"] = lambda r: names(r) or margin(r)
    found["+ names + a new pair of book words"] = lambda r: names(r) or bool(r.new_pairs)
    product = rare_unless_sentence(STRONG_SENTENCE, below(sentence_threshold), weak=sentence_threshold)

    def heavier(weight: float) -> Rule:
        return lambda r: (
            product(r)
            or any(
                z < 4.7 and carried >= weight for (_, z), carried in zip(r.absent_words, r.absent_weights, strict=False)
            )
        )

    for weight in HEAVY:
        found[f"product, + a missing word < 4.7 carrying >= {weight} of the question"] = heavier(weight)
    return found


def table(
    by_book: dict[str, list[Record]], threshold: float, known: frozenset[str] = frozenset(), sentence: float = 1.0
) -> str:
    lines = [
        "| book (answerable / in-domain unanswerable / out-of-domain q) | rule | refused: answerable | in-domain "
        "unanswerable | out-of-domain |",
        "|---|---|---:|---:|---:|",
    ]
    for name, records in by_book.items():
        sizes = "/".join(str(sum(r.set == s for r in records)) for s in SETS)
        for label, rule in rules(threshold, known, sentence).items():
            rates = []
            for set_name in SETS:
                chosen = [r for r in records if r.set == set_name]
                rates.append(sum(rule(r) for r in chosen) / max(1, len(chosen)))
            lines.append(f"| {name} ({sizes} q) | {label} | " + " | ".join(f"{x:.2f}" for x in rates) + " |")
    return "\n".join(lines)


def notes_table(
    by_book: dict[str, list[Record]], threshold: float, known: frozenset[str] = frozenset(), sentence: float = 1.0
) -> str:
    """Of each set's questions the product answers, the share whose answer names words the book never uses
    (`terms_not_in_book`: an uncommon word, below UNCOMMON_BELOW, in no close form), and those words."""
    (product,) = (rule for label, rule in rules(threshold, known, sentence).items() if label.endswith("(product)"))
    lines = [
        f"| book | answered, naming words the book never uses (< {UNCOMMON_BELOW}): answerable | in-domain "
        "unanswerable | out-of-domain | the words, in-domain unanswerable |",
        "|---|---:|---:|---:|---|",
    ]
    for name, records in by_book.items():
        cells, words = [], []
        for set_name in SETS:
            answered = [r for r in records if r.set == set_name and not product(r)]
            noted = [r for r in answered if any(z < UNCOMMON_BELOW for _, z in r.absent_words)]
            cells.append(f"{len(noted)} of {len(answered)}")
            if set_name == "unanswerable":
                words = [w for r in noted for w, z in r.absent_words if z < UNCOMMON_BELOW]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {', '.join(words)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--books", default="sample_book,humanoid_book", help="comma-separated, or 'all'")
    parser.add_argument("--json", type=Path, help="also write every question's record here")
    parser.add_argument("--records", type=Path, help="compare the rules on a --json file's records, searching nothing")
    parser.add_argument(
        "--known",
        action="append",
        default=[],
        help="a name to count as in the book (repeatable): e.g. the author's, which a title page left out would hold",
    )
    args = parser.parse_args(argv)
    known = frozenset(args.known)
    if args.records:
        saved = json.loads(args.records.read_text(encoding="utf-8"))
        books = {name: [Record(**r) for r in records] for name, records in saved["books"].items()}
        print(table(books, saved["threshold"], known, saved.get("sentence_threshold", 1.0)))
        print()
        print(notes_table(books, saved["threshold"], known, saved.get("sentence_threshold", 1.0)))
        return 0
    names = list(DATASETS) if args.books == "all" else args.books.split(",")
    limit_blas_threads()
    product = Settings(_env_file=None)  # type: ignore[call-arg]
    embeddings = bench_embeddings()
    out_of_book = load_questions(OUT_OF_BOOK)
    by_book: dict[str, list[Record]] = {}
    started = time.perf_counter()
    for name in names:
        book, path = DATASETS[name]
        if not book.is_dir():
            print(f"{name}: {book} is not here, skipped", file=sys.stderr)
            continue
        sets = {
            "answerable": load_questions(path),
            "unanswerable": load_questions(unanswerable_path(path)),
            "out_of_domain": out_of_book,
        }
        by_book[name] = records_for(name, book, sets, embeddings)
        print(f"{name}: {len(by_book[name])} questions ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    threshold = product.retrieval_score_threshold
    print(table(by_book, threshold, known, product.retrieval_sentence_threshold))
    print()
    print(notes_table(by_book, threshold, known, product.retrieval_sentence_threshold))
    if args.json:
        payload = {
            "threshold": threshold,
            "sentence_threshold": product.retrieval_sentence_threshold,
            "rare_below": RARE_BELOW,
            "strong_match": STRONG_MATCH,
            "strong_sentence": STRONG_SENTENCE,
            "books": {name: [asdict(r) for r in records] for name, records in by_book.items()},
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
