"""Query embeddings of the local sentence-transformers model through ONNX Runtime.

For one short question PyTorch's eager execution took about 29 ms for all-MiniLM-L6-v2 on one thread of this
project's benchmark machine, where ONNX Runtime runs the same graph, with its operators fused, in about 11 ms
(docs/benchmarks.md). The graph is exported once, from the
weights the model package ships (`torch.onnx`, nothing downloaded), into EMBEDDING_ONNX_DIR and reused by every
later start; its vectors equal PyTorch's (cosine above 0.99999, tested), so questions embedded here match the
chunks that ingest embedded with PyTorch. Mean pooling and normalisation, the model's own last steps, are done
here in numpy; a model that pools otherwise is not exported and keeps PyTorch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

_EXPORT_OPSET = 17


def supports_onnx(model: SentenceTransformer) -> bool:
    """Whether `model` is a transformer followed by mean pooling (and at most a normalisation): what this runs."""
    from sentence_transformers.models import Normalize, Pooling, Transformer

    modules = list(model)
    if len(modules) < 2 or not isinstance(modules[0], Transformer) or not isinstance(modules[1], Pooling):
        return False
    pooling = modules[1]
    mode = getattr(pooling, "pooling_mode", None)  # sentence-transformers 6; a method in older versions
    if mode is None and hasattr(pooling, "get_pooling_mode_str"):
        mode = pooling.get_pooling_mode_str()
    return mode == "mean" and all(isinstance(m, Normalize) for m in modules[2:])


def model_fingerprint(model_dir: Path) -> str:
    """A short hash of the model's files (names, sizes, config contents): a changed model gets a new export."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(model_dir)}:{path.stat().st_size}\n".encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def export_onnx(model: SentenceTransformer, target: Path) -> None:
    """Export `model`'s transformer (token ids in, token embeddings out) to `target`, written atomically."""
    import torch

    transformer: Any = model[0].auto_model
    tokenizer = model.tokenizer
    sample = tokenizer(["an example question"], return_tensors="pt")
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]

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
        # padding and causal masks, which do not change with the input's length for this encoder (the test
        # compares vectors for several lengths and batch sizes).
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
        os.replace(scratch, target)
    finally:
        Path(scratch).unlink(missing_ok=True)


class OnnxQueryEncoder:
    """Normalised sentence embeddings of short texts with ONNX Runtime on one thread (callers may run several at
    once: a session is thread-safe)."""

    def __init__(self, onnx_path: Path, tokenizer: Any, max_seq_length: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # One thread a query: concurrent questions use the other cores instead of thrashing over the same ones.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._tokenizer = tokenizer
        self._max_seq_length = max_seq_length

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        batch = self._tokenizer(
            list(texts), padding=True, truncation=True, max_length=self._max_seq_length, return_tensors="np"
        )
        feeds = {name: np.asarray(batch[name], dtype=np.int64) for name in self._inputs}
        (tokens,) = self._session.run(None, feeds)
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        vectors = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)  # as LocalEmbeddings does
        return np.asarray(vectors, dtype=np.float32)


def load_query_encoder(model: SentenceTransformer, model_dir: Path, cache_dir: Path) -> OnnxQueryEncoder | None:
    """The ONNX encoder for `model`, exported into `cache_dir` on first use; None (PyTorch is used) when the
    model cannot be run this way or the export fails, with the reason logged."""
    if not supports_onnx(model):
        logger.info("embedding model at %s does not use mean pooling: query embeddings stay on PyTorch", model_dir)
        return None
    target = cache_dir / f"{model_dir.name}-{model_fingerprint(model_dir)}.onnx"
    try:
        if not target.exists():
            logger.info("exporting the embedding model to ONNX at %s (once)", target)
            export_onnx(model, target)
        return OnnxQueryEncoder(target, model.tokenizer, int(model.max_seq_length or 256))
    except Exception as exc:  # an export or runtime failure must not stop the service: PyTorch still works
        logger.warning("query embeddings stay on PyTorch: ONNX export/load failed (%s: %s)", type(exc).__name__, exc)
        return None
