"""Optional reranking of the retrieved candidates by a cross-encoder that reads (question, passage) pairs.

Off by default, on purpose: no package on PyPI ships cross-encoder weights inside its wheel (the rerank
libraries there, FlashRank, rerankers, fastembed, sentence-transformers, download their models from a hub at
run time, which fails behind this project's firewall). `RERANK_MODEL` may name a local directory holding a
sentence-transformers `CrossEncoder` (for example one copied onto the machine by hand); it is loaded with
`local_files_only`, never fetched. See docs/retrieval.md.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from chains.errors import ConfigurationError
from chains.settings import Settings

logger = logging.getLogger(__name__)


class Reranker(ABC):
    """Scores passages for a question; higher is more relevant."""

    @abstractmethod
    def score(self, query: str, passages: Sequence[str]) -> list[float]: ...


class CrossEncoderReranker(Reranker):
    """A sentence-transformers cross-encoder loaded from a local directory, on the CPU."""

    def __init__(self, model_path: Path, batch_size: int = 32, max_length: int = 512) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import CrossEncoder
        except ImportError as exc:
            raise ConfigurationError(
                f"RERANK_MODEL needs sentence-transformers and PyTorch ({exc.name} is not installed): "
                "pip install 'bookrag[export]'"
            ) from exc

        self._model = CrossEncoder(str(model_path), device="cpu", max_length=max_length, local_files_only=True)
        self._batch_size = batch_size
        self._lock = threading.Lock()

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        if not passages:
            return []
        with self._lock:
            scores = self._model.predict(
                [(query, p) for p in passages], batch_size=self._batch_size, show_progress_bar=False
            )
        return [float(s) for s in scores]


def build_reranker(settings: Settings) -> Reranker | None:
    """The reranker the settings ask for (RERANK_MODEL, a local directory), or None when reranking is off."""
    if settings.rerank_model is None:
        return None
    path = settings.rerank_model.expanduser()
    if not (path / "config.json").is_file():
        raise ConfigurationError(
            f"RERANK_MODEL={str(settings.rerank_model)!r} is not a directory holding a cross-encoder "
            "(config.json, weights, tokenizer); models are never downloaded at run time"
        )
    logger.info("loading cross-encoder reranker from %s", path)
    return CrossEncoderReranker(path)
