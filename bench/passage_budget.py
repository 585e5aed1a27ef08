"""What the chat model keeps of the passages under a budget (CHAT_PASSAGE_CHARS): over every book's answerable
questions, how often the answer text (`answer_contains`) is in the passages the model reads, whole, with the
budget (chains.passage_budget: short passages whole, long ones cut around their chunk), and cut as a server with a
small window cuts a long prompt (the passages' text from its end kept, as Ollama drops the start).

    python -m bench.passage_budget --budgets 24000,12000,8000 [--books sample_book,humanoid_book,...]

It also counts the passages that hold one sentence (40 characters or more) twice: a joined passage that wrote
the splitter's overlap again (docs/retrieval.md, "Joined passages wrote a long paragraph's overlap twice").

Uses the stores `bench.eval_retrieval` caches under .bench-cache/ (ingesting a book the first time). No model
is called: the passages are the product's (the retriever and the sources as the answer chain makes them).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence

from langchain_core.documents import Document

from bench.eval_retrieval import DATASETS, load_questions, normalise, product_store
from chains.answer import Source
from chains.embeddings import build_embeddings
from chains.passage_budget import excerpt, passage_rooms
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import build_vector_store

ALL_BOOKS = "sample_book,humanoid_book,swift_book,walden,d2l,rust_book,origin_of_species"


def reaches_answer(document: Document, settings: Settings) -> bool:
    """The answer chain's rule for a passage the model reads (chains.answer, `reaches_answer`)."""
    metadata = document.metadata
    return (
        float(metadata.get("score", 0.0)) >= settings.retrieval_score_threshold
        or float(metadata.get("sentence_score") or 0.0) >= settings.retrieval_sentence_threshold
    )


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def repeats_a_sentence(text: str, shortest: int = 40) -> bool:
    """Whether a sentence of at least `shortest` characters stands twice in the text."""
    sentences = [s for s in _SENTENCE_END.split(text) if len(s) >= shortest]
    return len(sentences) != len(set(sentences))


def measure(name: str, budgets: Sequence[int]) -> dict[str, object]:
    questions = load_questions(DATASETS[name][1])
    embeddings = build_embeddings(Settings(_env_file=None))  # type: ignore[call-arg]
    held = {"whole": 0, **{f"budget {b}": 0 for b in budgets}, **{f"start cut {b}": 0 for b in budgets}}
    lengths: list[int] = []
    passages = repeating = 0
    with product_store(name, embeddings) as (client, settings):
        retriever = BookRetriever.from_settings(build_vector_store(client, settings, embeddings), settings, None)
        for question in questions:
            found = [d for d in retriever.invoke(question.question) if reaches_answer(d, settings)]
            passages += len(found)
            repeating += sum(repeats_a_sentence(d.page_content) for d in found)
            sources = [Source.from_document(n, d) for n, d in enumerate(found, 1)]
            if not sources:
                continue
            wanted = normalise(question.answer_contains)
            texts = [s.text for s in sources]
            lengths.append(sum(map(len, texts)))
            held["whole"] += wanted in normalise("\n\n".join(texts))
            for budget in budgets:
                rooms = passage_rooms([len(t) for t in texts], budget)
                kept = [excerpt(s.text, room, s.chunk_span) for s, room in zip(sources, rooms, strict=True)]
                held[f"budget {budget}"] += wanted in normalise("\n\n".join(kept))
                held[f"start cut {budget}"] += wanted in normalise("\n\n".join(texts)[-budget:])
    over = {budget: sum(1 for n in lengths if n > budget) for budget in budgets}
    return {
        "book": name,
        "questions": len(questions),
        "held": held,
        "over_budget": over,
        "mean_chars": round(sum(lengths) / max(1, len(lengths))),
        "max_chars": max(lengths),
        "passages": passages,
        "repeating_a_sentence": repeating,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--books", default=ALL_BOOKS)
    parser.add_argument("--budgets", default="24000,12000,8000")
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]
    rows = [measure(name, budgets) for name in args.books.split(",")]
    columns = ["whole", *(f"budget {b}" for b in budgets), *(f"start cut {b}" for b in budgets)]
    head = "| book | questions | passages (repeating a sentence) | mean / longest (chars) | over each budget | "
    print(head + "answer text kept: " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|---|" + "---:|" * len(columns))
    for row in rows:
        held, over = row["held"], row["over_budget"]
        assert isinstance(held, dict) and isinstance(over, dict)
        print(
            f"| {row['book']} | {row['questions']} | {row['passages']} ({row['repeating_a_sentence']}) | "
            f"{row['mean_chars']} / {row['max_chars']} | "
            + ", ".join(str(over[b]) for b in budgets)
            + " | "
            + " | ".join(str(held[c]) for c in columns)
            + " |"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
