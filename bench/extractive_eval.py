"""How often the answer without a chat model holds the sentence that answers: the extractive answer as it was
(the first 400 characters of each of the 5 passages) and as it is (the highlighted sentences of the best 3),
over the same retrieved passages, on every book's answerable questions (`answer_contains` in the answer text).

    python -m bench.extractive_eval [--books sample_book,humanoid_book,swift_book,walden]

Uses the stores `bench.eval_retrieval` caches under .bench-cache/ (ingesting a book the first time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence

from bench.eval_retrieval import DATASETS, load_questions, normalise, product_store
from chains.answer import build_answer_chain
from chains.embeddings import build_embeddings
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import build_vector_store

OLD_CHARS = 400


def old_extractive(texts: Sequence[str]) -> str:
    """The extractive answer before highlights: each passage's start."""
    parts = []
    for text in texts:
        excerpt = " ".join(text.split())
        parts.append(excerpt[:OLD_CHARS].rsplit(" ", 1)[0] if len(excerpt) > OLD_CHARS else excerpt)
    return "\n\n".join(parts)


async def measure(name: str) -> dict[str, object]:
    questions = load_questions(DATASETS[name][1])
    embeddings = build_embeddings(Settings(_env_file=None))  # type: ignore[call-arg]
    with product_store(name, embeddings) as (client, settings):
        retriever = BookRetriever.from_settings(build_vector_store(client, settings, embeddings), settings, None)
        chain = build_answer_chain(retriever, None, settings)
        before = after = answered = 0
        for question in questions:
            result = await chain.ainvoke(question.question)
            sources = result.get("sources", [])
            if not sources:
                continue
            answered += 1
            wanted = normalise(question.answer_contains)
            before += wanted in normalise(old_extractive([s.text for s in sources]))
            after += wanted in normalise(result.get("answer", ""))
    return {"book": name, "questions": len(questions), "answered": answered, "before": before, "after": after}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--books", default="sample_book,humanoid_book,swift_book,walden")
    args = parser.parse_args(argv)
    rows = [asyncio.run(measure(name)) for name in args.books.split(",")]
    print("| book | questions | answered | holds the answer: before (5 passage starts) | after (highlights of 3) |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['book']} | {row['questions']} | {row['answered']} | {row['before']} | {row['after']} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
