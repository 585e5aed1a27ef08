"""How every answer route runs the answerer: under the request deadline, noting timings and token counts for
the access log and the metrics. Routes differ only in how they parse the question and encode the result."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request

from chains.answer import Answer, AnswerEvent, AnswerRequest, DoneEvent, Timings, TokenEvent
from chains.guard import call_within_deadline, within_deadline
from rag_api.metrics import metrics_of
from rag_api.middleware import note_access
from rag_api.state import AppState
from rag_api.streaming import coalesce_tokens


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
            metrics.tokens_streamed.labels(endpoint).inc()
        elif isinstance(event, DoneEvent):
            note_answer(http, event.timings, event.usage, event.mode)
        yield event


def stream_answer(state: AppState, request: AnswerRequest, http: Request) -> AsyncIterator[AnswerEvent]:
    """The answer's events for an encoder (wrap them in `rag_api.streaming.guard`): token deltas coalesced
    (STREAM_COALESCE_MS), ending with `DeadlineExceeded` past REQUEST_TIMEOUT_S."""
    settings = state.settings
    events = within_deadline(_noting_done(state.answerer.stream(request), http), settings.request_timeout_s)
    return coalesce_tokens(events, settings.stream_coalesce_ms / 1000)


async def whole_answer(state: AppState, request: AnswerRequest, http: Request) -> Answer:
    """The whole answer at once (the same events, folded), within REQUEST_TIMEOUT_S."""
    answer = await call_within_deadline(state.answerer.answer(request), state.settings.request_timeout_s)
    note_answer(http, answer.timings, answer.usage, answer.mode)
    return answer
