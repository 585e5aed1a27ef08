"""Pure ASGI middleware: a request id on every request and response, one access log line per request, a body
limit and a body read timeout, and a last-resort JSON 500 for an exception nothing else handled; and a warning for
each origin whose browser requests CORS refuses (`RefusedOriginLog`).

Pure ASGI (not `BaseHTTPMiddleware`) so that streamed responses pass through untouched and cheaply. Routes add
fields to the access line (retrieval and model ms, token counts, the question when LOG_QUESTIONS is on) with
`note_access(request, ...)`: the line is written once the response, streamed or not, has ended. The same
moment feeds the request count and latency metrics (rag_api.metrics), when the app has them.

A body over MAX_BODY_BYTES (by Content-Length, or counted as a chunked body arrives) is 413 `payload_too_large`;
a body still incomplete BODY_TIMEOUT_S after the app first asked for it is 408 `body_timeout`. While the body is
read the errors are raised as `HTTPException`s, which FastAPI passes on (rather than its generic 400 "error parsing
the body") to the app's handlers; both close the connection. This middleware sits inside CORSMiddleware, so its
own responses (413, 500) carry the CORS headers of an allowed origin, as every other error does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Collection
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag_api.errors import error_body
from rag_api.metrics import UNMATCHED_ROUTE, Metrics

logger = logging.getLogger("rag_api.access")
errors_logger = logging.getLogger("rag_api.errors")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_ACCESS_KEY = "access"
# The rest of a refused body is never read: the connection cannot carry another request, so it is closed.
_CLOSE = {"Connection": "close"}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def note_access(request: Request, **fields: Any) -> None:
    """Add fields to this request's access log line."""
    access = request.scope.get("state", {}).get(_ACCESS_KEY)
    if isinstance(access, dict):
        access.update(fields)


def _json_error(status: int, code: str, message: str, request_id: str) -> tuple[Message, Message]:
    body = json.dumps(error_body(status, code, message, request_id)).encode()
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, metrics: Metrics | None = None, body_timeout_s: float = 30.0
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _VALID_REQUEST_ID.match(given) else uuid.uuid4().hex
        access: dict[str, Any] = {}
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state[_ACCESS_KEY] = access
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            length = _header(scope, b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                await self._send_error(send_with_id, 413, "payload_too_large", self._too_large_message, request_id)
                return
            await self.app(scope, self._limited(receive), send_with_id)
        except Exception as exc:
            # Past every exception handler: log it with the id, and answer JSON if nothing was sent yet.
            errors_logger.exception("unexpected error (request %s)", request_id, exc_info=exc)
            if not response_started:
                message = "an unexpected error occurred; it has been logged"
                await self._send_error(send_with_id, 500, "internal_error", message, request_id)
        finally:
            self._log(scope, request_id, status, started, access)
            if self.metrics is not None:
                route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
                self.metrics.observe_request(scope["method"], route, status, time.perf_counter() - started)

    @property
    def _too_large_message(self) -> str:
        return f"the request body is larger than {self.max_body_bytes} bytes"

    @staticmethod
    def _log(scope: Scope, request_id: str, status: int, started: float, access: dict[str, Any]) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or scope["path"]
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        client = scope.get("state", {}).get("client_id") or (scope.get("client") or ("-",))[0]
        logger.info(
            "%s %s %s %.1fms",
            scope["method"],
            scope["path"],
            status,
            latency_ms,
            extra={
                "request_id": request_id,
                "method": scope["method"],
                "route": template,
                "status": status,
                "latency_ms": latency_ms,
                "client": client,
                **access,
            },
        )

    def _limited(self, receive: Receive) -> Receive:
        """`receive`, counting the body against MAX_BODY_BYTES and timing it against BODY_TIMEOUT_S. Once the body
        is complete, `receive` only waits for the client to disconnect, which may take as long as it takes."""
        received = 0
        deadline: float | None = None
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, deadline, body_done
            if body_done:
                return await receive()
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.body_timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.body_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self._too_large_message)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        return limited_receive

    @staticmethod
    async def _send_error(send: Send, status: int, code: str, message: str, request_id: str) -> None:
        start, body = _json_error(status, code, message, request_id)
        await send(start)
        await send(body)


class BodyTooLarge(HTTPException):
    """A chunked body grew past MAX_BODY_BYTES while being read: 413 `payload_too_large`."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message, headers=_CLOSE)


class BodyTimeout(HTTPException):
    """The body did not arrive within BODY_TIMEOUT_S: 408 `body_timeout`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s (BODY_TIMEOUT_S)", _CLOSE)


class RefusedOriginLog:
    """A warning, once per origin, when a browser asks from an origin that CORS_ORIGINS lacks (its preflight, which
    CORSMiddleware refuses): a book's page with the widget on a new site. The browser hides the reason from the
    page, so the widget can only guess it; the server's log says which origin to add. At most `remember` origins
    are logged, so that a stream of made-up origins cannot flood the log."""

    def __init__(self, app: ASGIApp, allowed: Collection[str], remember: int = 50) -> None:
        self.app = app
        self.allowed = set(allowed)
        self.remember = remember
        self.logged: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS" and "*" not in self.allowed:
            origin = _header(scope, b"origin")
            if (
                origin is not None
                and _header(scope, b"access-control-request-method") is not None
                and origin not in self.allowed
                and origin not in self.logged
                and len(self.logged) < self.remember
            ):
                self.logged.add(origin)
                errors_logger.warning(
                    "refused a browser request from %s: that origin is not in CORS_ORIGINS, so a page there cannot "
                    "ask (add it to CORS_ORIGINS, a comma-separated list)",
                    origin,
                )
        await self.app(scope, receive, send)
