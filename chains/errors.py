"""The errors this project raises on purpose, shared by ingest, chains and the API.

    RagError                      base: a message fit to show a user, and a stable `code`
    ├── ConfigurationError        a setting or argument is wrong (names it and the fix)
    ├── DependencyUnavailable     Qdrant, the chat model or the embedding model cannot be reached
    │   ├── ModelTimeout          the chat model did not answer in time (or stalled mid-stream)
    │   ├── ModelIncomplete       the chat model's stream ended without saying it was finished (cut short)
    │   └── ModelBusy             every model slot is taken and none came free in time (retry later)
    ├── DeadlineExceeded          the whole request took longer than REQUEST_TIMEOUT_S
    ├── CollectionMismatch        the stored collection does not fit the configured embedding model
    ├── DocumentError             one input file cannot be loaded (ingest goes on with the rest)
    ├── IngestStopped             an ingest was stopped midway (the server shutting down); nothing half-written
    └── StoreDamaged              the embedded store's files are damaged: names the file and the fix

The API maps each class to an HTTP status in one place (`rag_api.errors`).
"""

from __future__ import annotations


class RagError(Exception):
    """Base class: `str(exc)` is safe to show to a user; `code` is stable for clients."""

    code = "rag_error"


class ConfigurationError(RagError):
    code = "configuration_error"


class DependencyUnavailable(RagError):
    code = "dependency_unavailable"

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(message)
        self.dependency = dependency


class ModelTimeout(DependencyUnavailable):
    code = "model_timeout"

    def __init__(self, message: str = "the chat model did not answer in time") -> None:
        super().__init__("chat_model", message)


class ModelIncomplete(DependencyUnavailable):
    code = "model_incomplete"

    def __init__(
        self, message: str = "the chat model's answer was cut short: its stream ended before the model finished"
    ) -> None:
        super().__init__("chat_model", message)


class ModelBusy(DependencyUnavailable):
    code = "model_busy"

    def __init__(self, retry_after_s: float, message: str = "the chat model is busy; retry in a few seconds") -> None:
        super().__init__("chat_model", message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(RagError):
    code = "request_timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request did not finish within {seconds:g} s")
        self.seconds = seconds


class CollectionMismatch(RagError):
    code = "collection_mismatch"


class DocumentError(RagError):
    code = "document_error"

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class IngestStopped(RagError):
    code = "ingest_stopped"

    def __init__(
        self,
        message: str = "the ingest was stopped (the server is shutting down); every file keeps its previous "
        "complete version: run the same ingest again to finish",
    ) -> None:
        super().__init__(message)


class StoreDamaged(RagError):
    code = "store_damaged"
