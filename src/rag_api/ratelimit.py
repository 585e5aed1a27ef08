"""Per-client rate limiting: an in-memory token bucket per API key (or IP address when there is no key).

Each client may make RATE_LIMIT_BURST requests at once and RATE_LIMIT_PER_MINUTE sustained; past that it gets
429 with `Retry-After` (whole seconds until a token is back). Buckets live in this process only, so N workers
allow N times the rate: put a shared limiter in the proxy for a fleet. The table of buckets is bounded (least
recently seen clients are forgotten first), so a flood of spoofed clients cannot grow memory without end.
A refused API key counts against its sender's address too (`count_failed_auth`), so keys cannot be guessed at
full speed.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

if TYPE_CHECKING:
    from rag_api.state import AppState

MAX_CLIENTS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """`take(client)` spends one token of `client`'s bucket: 0.0 when allowed, else seconds to wait."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, client: str) -> float:
        if not self.enabled:
            return 0.0
        now = self.clock()
        bucket = self._buckets.pop(client, None)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        self._buckets[client] = bucket
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def client_id(request: Request) -> str:
    """The rate-limited identity: the API key's label set by auth, else the peer's IP address."""
    label = getattr(request.state, "client_id", None)
    if isinstance(label, str):
        return label
    return address_id(request)


def address_id(request: Request) -> str:
    """The peer's IP address (the client named by a trusted proxy when TRUSTED_PROXIES lists it)."""
    return "ip:" + (request.client.host if request.client else "unknown")


def spend_token(request: Request, client: str) -> None:
    """Spend one of `client`'s tokens: 429 `rate_limited` with Retry-After when it has none left."""
    state: AppState = request.app.state.rag
    wait = state.rate_limiter.take(client)
    if wait > 0:
        retry_after = max(1, math.ceil(wait))
        raise HTTPException(
            429, f"too many requests; retry in {retry_after} s", headers={"Retry-After": str(retry_after)}
        )


async def rate_limit(request: Request) -> None:
    """A dependency (after auth, which names key holders): 429 with Retry-After when the client has no token left."""
    spend_token(request, client_id(request))


def count_failed_auth(request: Request) -> None:
    """A refused key spends a token of its sender's address, so that guessing keys is rate limited like any other
    request: past the burst the answer is 429, not another 401/403."""
    spend_token(request, address_id(request))
