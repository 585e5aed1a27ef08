"""Query embeddings through ONNX Runtime (chains/onnx_encoder.py): the same vectors as PyTorch, exported once,
and PyTorch kept when the export cannot be used."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from chains.embeddings import LocalEmbeddings, build_embeddings, packaged_model_path
from chains.onnx_encoder import OnnxQueryEncoder, load_query_encoder, model_fingerprint, supports_onnx
from chains.settings import Settings

pytestmark = pytest.mark.integration

TEXTS = [
    "How much water does a young tree need?",
    "mulch",
    "Why do the joints of a humanoid robot need torque control when it walks on uneven ground, and how is it tuned? "
    * 12,  # longer than the model's 256 tokens: truncated the same way
]


def torch_vectors(embeddings: LocalEmbeddings, texts: list[str]) -> np.ndarray:
    return np.asarray(embeddings._encode(texts), dtype=np.float32)


def test_the_service_embeds_questions_through_onnx_by_default(embeddings: LocalEmbeddings) -> None:
    assert embeddings.query_runtime == "onnx"


def test_onnx_vectors_equal_pytorch_vectors_alone_and_in_a_padded_batch(embeddings: LocalEmbeddings) -> None:
    encoder = embeddings._query_encoder
    assert isinstance(encoder, OnnxQueryEncoder)
    expected = torch_vectors(embeddings, TEXTS)
    batched = encoder.encode(TEXTS)  # padded to the longest: the mask must keep padding out of the mean
    alone = np.stack([encoder.encode([text])[0] for text in TEXTS])
    for got in (batched, alone):
        cosines = (got * expected).sum(axis=1)
        assert cosines.min() > 0.99999, cosines
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_embed_query_gives_the_vector_pytorch_would(embeddings: LocalEmbeddings) -> None:
    question = "What keeps the soil moist in summer?"
    via_onnx = np.asarray(embeddings.embed_query(question))
    via_torch = torch_vectors(embeddings, [question])[0]
    assert float(via_onnx @ via_torch) > 0.99999


def test_the_export_is_made_once_and_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model_dir = packaged_model_path("all-MiniLM-L6-v2")
    settings = Settings(_env_file=None, embedding_onnx_dir=tmp_path)  # type: ignore[call-arg]
    with caplog.at_level(logging.INFO, logger="chains.onnx_encoder"):
        first = build_embeddings(settings)
        exported = list(tmp_path.glob("*.onnx"))
        assert [p.name for p in exported] == [f"{model_dir.name}-{model_fingerprint(model_dir)}.onnx"]
        written = exported[0].stat().st_mtime_ns
        second = build_embeddings(settings)
    assert exported[0].stat().st_mtime_ns == written
    assert sum("exporting the embedding model" in r.getMessage() for r in caplog.records) == 1
    assert isinstance(first, LocalEmbeddings) and isinstance(second, LocalEmbeddings)
    assert first.embed_query("mulch") == second.embed_query("mulch")


def test_an_unusable_export_keeps_pytorch_with_a_warning(
    embeddings: LocalEmbeddings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = packaged_model_path("all-MiniLM-L6-v2")
    broken = tmp_path / f"{model_dir.name}-{model_fingerprint(model_dir)}.onnx"
    broken.write_bytes(b"not an onnx graph")
    with caplog.at_level(logging.WARNING, logger="chains.onnx_encoder"):
        assert load_query_encoder(embeddings._model, model_dir, tmp_path) is None
    assert any("stay on PyTorch" in r.getMessage() for r in caplog.records)


def test_torch_runtime_setting_keeps_questions_on_pytorch() -> None:
    settings = Settings(_env_file=None, embedding_query_runtime="torch")  # type: ignore[call-arg]
    model = build_embeddings(settings)
    assert isinstance(model, LocalEmbeddings) and model.query_runtime == "torch"


def test_only_mean_pooled_models_are_exported(embeddings: LocalEmbeddings) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling

    assert supports_onnx(embeddings._model)
    transformer = embeddings._model[0]
    cls_pooled = SentenceTransformer(modules=[transformer, Pooling(384, pooling_mode="cls")], device="cpu")
    assert not supports_onnx(cls_pooled)
