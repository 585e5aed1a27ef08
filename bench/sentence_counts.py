"""How many of a first ingest's sentence embeddings repeat a text already embedded in the same run.

    .venv/bin/python -m bench.sentence_counts /work/shared/corpus/humanoid-book /work/shared/corpus/d2l

Chunks overlap (CHUNK_OVERLAP), so a sentence in the overlap belongs to two chunks; each chunk's sentences are
embedded for re-scoring (chains/sentence_rescore.py). Nothing is embedded here: the book is split as `Indexer`
splits it (the model's tokenizer, the default settings) and the sentence texts are counted.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from chains.embeddings import build_embeddings
from chains.sentence_rescore import sentences_of
from chains.settings import Settings
from chains.vectorstore import build_qdrant_client
from ingest.indexer import Indexer, discover_files, source_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("books", type=Path, nargs="+")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(_env_file=None, qdrant_path=Path(tmp) / "q", qdrant_collection="counts")  # type: ignore[call-arg]
        embeddings = build_embeddings(settings)
        client = build_qdrant_client(settings)
        indexer = Indexer(client, embeddings, settings)
        print("| book | chunks | sentences | distinct | repeats | one-sentence chunks | tokens: sentences, distinct |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for book in args.books:
            book = book.resolve()
            files = list(discover_files([book]))
            stored: dict = {}
            with indexer.parsing():
                chunks = [
                    c
                    for f in files
                    for plan in indexer.plan_path(f, source_key(f, book.parent), stored)
                    for c in plan.new
                ]
            sentences = [s for c in chunks for s in sentences_of(c.text)]
            counts = Counter(sentences)
            tokens = {s: indexer.count_tokens(s) for s in counts}
            total_tokens = sum(tokens[s] for s in sentences)
            distinct_tokens = sum(tokens.values())
            single = sum(1 for c in chunks if len(sentences_of(c.text)) == 1)
            print(
                f"| {book.name} | {len(chunks):,} | {len(sentences):,} | {len(counts):,} | "
                f"{len(sentences) - len(counts):,} ({1 - len(counts) / max(1, len(sentences)):.1%}) | {single:,} | "
                f"{total_tokens:,}, {distinct_tokens:,} |"
            )
        client.close()


if __name__ == "__main__":
    main()
