"""How uvicorn serves the app: the options that come from the settings, including a header read timeout.

On purpose: uvicorn closes a keep-alive connection that stays idle between requests (`timeout_keep_alive`), but has
no limit on how long a client may take to send a request's headers, nor on a connection that never sends a byte:
such connections stay open for ever, and enough of them (150 in the attack of issue 18) hold the server's sockets.
uvicorn offers no option for it, so `HeaderTimeoutProtocol` adds one to uvicorn's own HTTP protocol (httptools
when installed, as uvicorn's `auto` chooses, else h11): a connection whose request headers are not complete
HEADER_TIMEOUT_S after it opened, or after the first byte of its next request, is closed. The body has its own
limit (BODY_TIMEOUT_S, in `rag_api.middleware`).

Proxy headers (`X-Forwarded-For`, `X-Forwarded-Proto`) are read only from TRUSTED_PROXIES; uvicorn's own default
trusts 127.0.0.1, which in a proxy-less deployment lets any local client pick its address for the rate limiter.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from chains.settings import Settings

logger = logging.getLogger(__name__)


def _uvicorn_protocol() -> Any:
    """The HTTP protocol class uvicorn's `http="auto"` would use."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # uvicorn without the [standard] extra
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    return HttpToolsProtocol


class HeaderTimeoutProtocol(_uvicorn_protocol()):  # type: ignore[misc]
    """uvicorn's HTTP protocol, closing a connection that takes longer than `header_timeout_s` to send a
    request's headers. Set `header_timeout_s` with `configure_header_timeout` before serving; a class attribute,
    so that the class can be named by import string (uvicorn's workers are started from a pickled config)."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if self._header_timer is None and (cycle is None or cycle.response_complete):
            self._arm_header_timer()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self.cycle is not cycle:  # a request's headers are complete: uvicorn made its cycle
            self._disarm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
            logger.info(
                "closed a connection from %s: no complete request headers within %g s", client, self.header_timeout_s
            )
            self.transport.close()


def configure_header_timeout(settings: Settings) -> None:
    """HEADER_TIMEOUT_S for every connection this process serves (each uvicorn worker calls it at start-up)."""
    HeaderTimeoutProtocol.header_timeout_s = settings.header_timeout_s


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of `uvicorn.run`/`uvicorn.Config` that the settings decide."""
    configure_header_timeout(settings)
    trusted = settings.trusted_proxies
    return {
        "http": HeaderTimeoutProtocol,
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or None,
    }
