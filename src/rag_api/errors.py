"""Every failure as a JSON error with a stable code, mapped to HTTP in this one place.

The body is `{"error": {"code", "message", "type", "param", "request_id"}}`: OpenAI's error shape (`type` is one of
OpenAI's error types, `param` the offending field or null) plus the request id, so that OpenAI clients of
`/v1/chat/completions` read every error of this service, including those from auth and the rate limiter.

Clients see the message of a `RagError` (written to be shown) but never the text of an unexpected exception:
that is logged with the request id, which the response carries too. An `HTTPException` gets the code of its
status (`unauthorized`, `rate_limited`...), or its own when raised as an `ApiError` (409 `ingest_in_progress`).
A client that disconnects before its JSON answer is ready gets 499 `client_disconnected` (in the access log only:
nobody reads it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chains.catalogue import FilterMatchesNothing
from chains.errors import (
    CollectionMismatch,
    ConfigurationError,
    DeadlineExceeded,
    DependencyUnavailable,
    ModelBusy,
    ModelIncomplete,
    ModelTimeout,
    RagError,
)
from rag_api.schemas import NOT_BLANK, ErrorResponse

logger = logging.getLogger(__name__)


# Retry-After of a 503 `<dependency>_unavailable`: the default QDRANT_RECHECK_S, how often a degraded service
# looks for Qdrant again. A hint for clients that retry (the `openai` SDK waits this long), not a promise.
DEPENDENCY_RETRY_AFTER_S = 5


class ApiError(StarletteHTTPException):
    """An HTTP error with a stable code of its own, more specific than its status's (`_STATUS_CODES`)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, headers)
        self.code = code


class ClientDisconnected(Exception):
    """The client went away before its (non-streaming) answer was ready; the answer was cancelled."""


# The code of an HTTPException by its status; any other status is `http_error`.
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    status: int
    code: str
    message: str
    retry_after_s: int | None = None


def classify(exc: Exception) -> ErrorInfo:
    """What a client is told about `exc`: status, stable code and a safe message.

    Codes: `model_timeout` and `request_timeout` (504); `model_incomplete` (502: the model's stream was cut short);
    `model_busy` (503 + Retry-After); `<dependency>_unavailable`
    for qdrant, chat_model and embeddings (503 + Retry-After: DEPENDENCY_RETRY_AFTER_S); `collection_mismatch`,
    `configuration_error` (503); `filter_matches_nothing` (422, naming the stored values); any other
    `RagError` its own code (400); anything unexpected `internal_error`
    (500, text never shown).
    """
    if isinstance(exc, ModelTimeout | DeadlineExceeded):
        return ErrorInfo(504, exc.code, str(exc))
    if isinstance(exc, ModelIncomplete):  # a bad answer from upstream, not one that is down
        return ErrorInfo(502, exc.code, str(exc))
    if isinstance(exc, ModelBusy):
        return ErrorInfo(503, exc.code, str(exc), int(exc.retry_after_s))
    if isinstance(exc, DependencyUnavailable):
        return ErrorInfo(503, f"{exc.dependency}_unavailable", str(exc), DEPENDENCY_RETRY_AFTER_S)
    if isinstance(exc, CollectionMismatch | ConfigurationError):
        return ErrorInfo(503, exc.code, str(exc))
    if isinstance(exc, FilterMatchesNothing):
        return ErrorInfo(422, exc.code, str(exc))
    if isinstance(exc, RagError):
        return ErrorInfo(400, exc.code, str(exc))
    return ErrorInfo(500, "internal_error", "an unexpected error occurred; it has been logged")


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    if status >= 500:
        return "server_error"
    return _ERROR_TYPES.get(status, "invalid_request_error")


def error_body(
    status: int, code: str, message: str, request_id: str | None, param: str | None = None
) -> dict[str, dict[str, str | None]]:
    error = {"code": code, "message": message, "type": error_type(status), "param": param, "request_id": request_id}
    return {"error": error}


def error_response(
    status: int,
    code: str,
    message: str,
    request_id: str | None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> JSONResponse:
    all_headers = dict(headers or {})
    if request_id:
        all_headers["X-Request-ID"] = request_id
    body = error_body(status, code, message, request_id, param)
    return JSONResponse(body, status_code=status, headers=all_headers or None)


def _described(description: str) -> dict[str, object]:
    return {"model": ErrorResponse, "description": description}


# The error statuses of the public endpoints, for their OpenAPI `responses`.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    401: _described("No or a wrong API key (when API_KEYS is set): `unauthorized`"),
    408: _described("The body did not arrive within BODY_TIMEOUT_S: `body_timeout`"),
    413: _described("The body is larger than MAX_BODY_BYTES: `payload_too_large`"),
    422: _described("The body does not fit the schema or a configured limit: `invalid_request`"),
    429: _described("Too many requests from this client: `rate_limited`, with a Retry-After header"),
    502: _described("The chat model's stream ended before the model finished: `model_incomplete`"),
    503: _described(
        "A dependency is down: `qdrant_unavailable`, `chat_model_unavailable`, `embeddings_unavailable` "
        "(Retry-After); or `model_busy` (every model slot taken; Retry-After)"
    ),
    504: _described("The model or the whole request took too long: `model_timeout`, `request_timeout`"),
}


def _location(error: Any) -> str:
    return ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"


def _message(error: Any) -> str:
    """pydantic's message, except for a blank string, whose "should match pattern '[^\\s...'" says nothing."""
    if error.get("type") == "string_pattern_mismatch" and (error.get("ctx") or {}).get("pattern") == NOT_BLANK:
        return "must not be empty or only whitespace"
    return str(error.get("msg", "invalid"))


def _validation_message(exc: RequestValidationError) -> str:
    parts = [f"{_location(error)}: {_message(error)}" for error in exc.errors()[:5]]
    return "; ".join(parts) or "invalid request"


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    param = _location(errors[0]) if errors else None
    return error_response(422, "invalid_request", _validation_message(exc), request_id_of(request), param=param)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = exc.code if isinstance(exc, ApiError) else _STATUS_CODES.get(exc.status_code, "http_error")
    response = error_response(exc.status_code, code, str(exc.detail), request_id_of(request))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    info = classify(exc)
    if info.status >= 500 and info.code == "internal_error":
        logger.exception("unexpected error (request %s)", request_id_of(request), exc_info=exc)
    else:
        logger.warning("request %s failed: %s: %s", request_id_of(request), info.code, info.message)
    headers = {"Retry-After": str(info.retry_after_s)} if info.retry_after_s is not None else None
    return error_response(info.status, info.code, info.message, request_id_of(request), headers)


async def _on_disconnect(request: Request, exc: Exception) -> JSONResponse:
    logger.info("request %s: client disconnected, answer cancelled", request_id_of(request))
    message = "the client disconnected before the answer was ready; it was cancelled"
    return error_response(499, "client_disconnected", message, request_id_of(request))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClientDisconnected, _on_disconnect)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RagError, _on_error)
    app.add_exception_handler(Exception, _on_error)
