"""Bounds on the slow parts of an answer: a cap on model calls in flight, an idle limit between streamed chunks,
and an overall deadline for a whole stream of events.

A burst of questions waits briefly for a model slot and then fails fast with `ModelBusy` (503 + Retry-After)
instead of piling up thousands of open upstream connections. The semaphore is per process, on purpose: it
protects this process and the model endpoint it calls; a fleet shares the endpoint's own limits.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from chains.errors import DeadlineExceeded, ModelBusy, ModelTimeout
from chains.settings import Settings

T = TypeVar("T")


async def close_iterator(iterator: AsyncIterator[Any]) -> None:
    """Close an async iterator that can be closed (an async generator): its cleanup runs now, not at GC."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


class ModelGate:
    """At most `max_concurrency` model calls at once; a caller waits up to `queue_timeout_s` for a slot."""

    def __init__(self, max_concurrency: int, queue_timeout_s: float, idle_timeout_s: float) -> None:
        self.max_concurrency = max_concurrency
        self.queue_timeout_s = queue_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._slots = asyncio.Semaphore(max_concurrency)
        self.in_flight = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelGate:
        return cls(settings.model_max_concurrency, settings.model_queue_timeout_s, settings.stream_idle_timeout_s)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise ModelBusy(retry_after_s=max(1.0, math.ceil(self.queue_timeout_s))) from None
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()

    async def stream(self, chunks: AsyncIterator[T]) -> AsyncIterator[T]:
        """`chunks` while holding a slot; `ModelTimeout` when no chunk arrives for `idle_timeout_s`."""
        try:
            async with self.slot():
                while True:
                    idle = asyncio.timeout(self.idle_timeout_s)
                    try:
                        async with idle:
                            chunk = await anext(chunks)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        if not idle.expired():
                            raise
                        raise ModelTimeout(
                            f"the chat model sent nothing for {self.idle_timeout_s:g} s and was given up on"
                        ) from None
                    yield chunk
        finally:
            await close_iterator(chunks)


async def within_deadline(events: AsyncIterator[T], seconds: float) -> AsyncIterator[T]:
    """Pass `events` through; `DeadlineExceeded` once `seconds` have gone by since the first pull."""
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        while True:
            limit = asyncio.timeout_at(deadline)
            try:
                async with limit:
                    event = await anext(events)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if not limit.expired():
                    raise
                raise DeadlineExceeded(seconds) from None
            yield event
    finally:
        await close_iterator(events)


async def call_within_deadline(awaitable: Awaitable[T], seconds: float) -> T:
    """`await awaitable`, or `DeadlineExceeded` after `seconds`."""
    limit = asyncio.timeout(seconds)
    try:
        async with limit:
            return await awaitable
    except TimeoutError:
        if not limit.expired():
            raise
        raise DeadlineExceeded(seconds) from None
