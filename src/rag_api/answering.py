"""How every answer route runs the answer chain (`chains.answer.answer_events`): under the request deadline,
noting timings and token counts for the access log and the metrics. Routes differ only in how they parse the
question and encode the result.

On purpose: `stream_retrieved_answer` runs retrieval before the response exists, so that a client of
`/v1/chat/completions` or `/api/chat` gets a real HTTP status (503 with Retry-After when Qdrant is down) for a
failure before anything useful was produced. `/ask` does not: its stream says `retrieving` first (docs/streaming.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request

from chains.answer import (
    Answer,
    AnswerEvent,
    AnswerRequest,
    DoneEvent,
    SourcesEvent,
    Timings,
    TokenEvent,
    answer_events,
    fold_answer,
)
from chains.guard import call_within_deadline, within_deadline
from rag_api.metrics import metrics_of
from rag_api.middleware import note_access
from rag_api.state import AppState
from rag_api.streaming import close_events, coalesce_tokens


def note_answer(http: Request, timings: Timings | None, usage: dict[str, int] | None, mode: str | None = None) -> None:
    """Retrieval and model time and token counts for the access log line and the metrics."""
    metrics = metrics_of(http)
    if metrics is not None and timings is not None and mode is not None:
        metrics.observe_answer(mode, timings.retrieval_ms, timings.total_ms, timings.first_token_ms, usage)
    if timings is not None:
        note_access(
            http,
            retrieval_ms=round(timings.retrieval_ms, 1),
            model_ms=round(timings.total_ms - timings.retrieval_ms, 1),
        )
    if usage:
        note_access(http, input_tokens=usage.get("input_tokens"), output_tokens=usage.get("output_tokens"))


async def _noting_done(events: AsyncIterator[AnswerEvent], http: Request) -> AsyncIterator[AnswerEvent]:
    metrics = metrics_of(http)
    endpoint = getattr(http.scope.get("route"), "path", None) or http.url.path  # /ask, /api/chat, /v1/...
    async for event in events:
        if isinstance(event, TokenEvent) and metrics is not None:
            # the model's deltas, counted before coalescing joins them into fewer events
            metrics.tokens_streamed.labels(endpoint).inc(event.deltas)
        elif isinstance(event, DoneEvent):
            note_answer(http, event.timings, event.usage, event.mode)
        yield event


def stream_answer(state: AppState, request: AnswerRequest, http: Request) -> AsyncIterator[AnswerEvent]:
    """The answer's events for an encoder (wrap them in `rag_api.streaming.guard`): token deltas coalesced
    (STREAM_COALESCE_MS), ending with `DeadlineExceeded` past REQUEST_TIMEOUT_S."""
    settings = state.settings
    events = within_deadline(_noting_done(answer_events(state.chain, request), http), settings.request_timeout_s)
    return coalesce_tokens(events, settings.stream_coalesce_ms / 1000)


@dataclass(slots=True)
class RetrievedAnswer:
    """An answer whose retrieval is done: the events pulled so far (`head`, through its `SourcesEvent`), then the
    rest, which is already running (the model is being called)."""

    head: list[AnswerEvent]
    rest: AsyncIterator[AnswerEvent]

    async def events(self) -> AsyncIterator[AnswerEvent]:
        """Every event of the answer, from the first; closing this closes the answer."""
        try:
            for event in self.head:
                yield event
            async for event in self.rest:
                yield event
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop the answer (and so the model call), whether or not `events()` was ever read: run it when the
        response is over, since a client gone before the first byte never starts the response's iterator."""
        await close_events(self.rest)


async def stream_retrieved_answer(state: AppState, request: AnswerRequest, http: Request) -> RetrievedAnswer:
    """`stream_answer`, pulled up to and including its `SourcesEvent` before the route makes a response.

    A failure until then (Qdrant, the embedding model, the chat model condensing a follow-up, REQUEST_TIMEOUT_S,
    which counts from this first pull) is raised here, so the app's error handlers answer it with its HTTP status
    and JSON error body; a failure after it is the stream's closing error event, as ever.
    """
    events = stream_answer(state, request, http)
    head: list[AnswerEvent] = []
    try:
        async for event in events:
            head.append(event)
            if isinstance(event, SourcesEvent):
                break
    except (Exception, asyncio.CancelledError):
        await close_events(events)
        raise
    return RetrievedAnswer(head, events)


async def whole_answer(state: AppState, request: AnswerRequest, http: Request) -> Answer:
    """The whole answer at once (the same events, folded), within REQUEST_TIMEOUT_S."""
    answer = await call_within_deadline(
        fold_answer(answer_events(state.chain, request)), state.settings.request_timeout_s
    )
    note_answer(http, answer.timings, answer.usage, answer.mode)
    return answer
