"""Every failure as a JSON error with a stable code, mapped to HTTP in this one place.

Clients see the message of a `RagError` (written to be shown) but never the text of an unexpected exception:
that is logged with the request id, which the response carries too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chains.errors import CollectionMismatch, ConfigurationError, DependencyUnavailable, ModelTimeout, RagError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    status: int
    code: str
    message: str


def classify(exc: Exception) -> ErrorInfo:
    """What a client is told about `exc`: status, stable code and a safe message."""
    if isinstance(exc, ModelTimeout):
        return ErrorInfo(504, exc.code, str(exc))
    if isinstance(exc, DependencyUnavailable):
        return ErrorInfo(503, f"{exc.dependency}_unavailable", str(exc))
    if isinstance(exc, CollectionMismatch | ConfigurationError):
        return ErrorInfo(503, exc.code, str(exc))
    if isinstance(exc, RagError):
        return ErrorInfo(400, exc.code, str(exc))
    return ErrorInfo(500, "internal_error", "an unexpected error occurred; it has been logged")


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(status: int, code: str, message: str, request_id: str | None) -> JSONResponse:
    headers = {"X-Request-ID": request_id} if request_id else None
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_request", _validation_message(exc), request_id_of(request))


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        429: "rate_limited",
    }
    code = codes.get(exc.status_code, "http_error")
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
    return error_response(info.status, info.code, info.message, request_id_of(request))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RagError, _on_error)
    app.add_exception_handler(Exception, _on_error)
