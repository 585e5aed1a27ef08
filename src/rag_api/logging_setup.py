"""Logging, configured once at start-up: plain lines or one JSON object a line (LOG_FORMAT=json), with secrets
redacted from every line.

Redaction works on the finished line: the configured secrets (API keys, the model and Qdrant keys) are replaced
wherever they appear, and so is anything shaped like a bearer token or an `sk-` key, whoever logged it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

REDACTED = "[REDACTED]"
_SECRET_SHAPES = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]+|\bsk-[A-Za-z0-9_\-]{8,}|((?:api[_-]?key|x-api-key)[\"']?\s*[:=]\s*[\"']?)[^\s,\"'&]+"
)
# Attributes every LogRecord has; anything else on a record came in through `extra=` and goes in the JSON line.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _RequestIdDefault(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = "-"
        return True


class Redactor:
    """Replaces known secret values and secret-shaped substrings with [REDACTED]."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self._known = re.compile("|".join(re.escape(s) for s in known)) if known else None

    def __call__(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(REDACTED, text)
        return _SECRET_SHAPES.sub(_replace_shape, text)


def _replace_shape(match: re.Match[str]) -> str:
    prefix = match.group(1) or match.group(2) or ""
    return prefix + REDACTED


class TextFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and every `extra` field."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(data, ensure_ascii=False, default=str))


def configure_logging(level: str, log_format: str = "text", secrets: Iterable[str] = ()) -> None:
    redact = Redactor(secrets)
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdDefault())
    handler.setFormatter(JsonFormatter(redact) if log_format == "json" else TextFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "urllib3", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
