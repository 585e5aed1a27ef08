"""How every answer route runs the answer chain (`chains.answer.answer_events`): under the request deadline,
noting timings and token counts for the access log and the metrics. Routes differ only in how they parse the
question and encode the result.

On purpose: `stream_retrieved_answer` runs retrieval before the response exists, so that a client of
`/v1/chat/completions` or `/api/chat` gets a real HTTP status (503 with Retry-After when Qdrant is down) for a
failure before anything useful was produced. `/ask` does not: its stream says `retrieving` first (docs/streaming.md).

Also on purpose: Starlette cancels a streaming response when its client leaves, but never a handler that is still
computing a JSON response. `until_disconnected` races such work (a whole answer, the retrieval before a stream)
against the client's `http.disconnect`, so that a client gone stops the model and frees its slot on every face.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request

from chains.answer import (
    Answer,
    AnswerEvent,
    AnswerRequest,
    DoneEvent,
    Source,
    SourcesEvent,
    Timings,
    TokenEvent,
    answer_events,
    fold_answer,
)
from chains.citations import check_citations
from chains.guard import call_within_deadline, within_deadline
from rag_api.errors import ClientDisconnected
from rag_api.metrics import metrics_of
from rag_api.middleware import note_access
from rag_api.records import AnswerRecord, RecordedSource
from rag_api.state import AppState
from rag_api.streaming import close_events, coalesce_tokens

T = TypeVar("T")


async def _disconnect(http: Request) -> None:
    """Return when the client has gone. The body has been read, so `receive` now only reports the disconnect.
    A request with no receive channel (one built outside a server) has nothing to watch: wait until cancelled."""
    try:
        while (await http.receive())["type"] != "http.disconnect":
            pass
    except RuntimeError:
        await asyncio.get_running_loop().create_future()


async def until_disconnected(work: Coroutine[Any, Any, T], http: Request) -> T:
    """`await work`, unless the client disconnects first: then `work` is cancelled (its model call with it) and
    `ClientDisconnected` raised."""
    task = asyncio.create_task(work)
    watcher = asyncio.create_task(_disconnect(http), name="disconnect-watcher")
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
        await asyncio.wait({task, watcher})
    if task.cancelled() and watcher.done() and not watcher.cancelled():
        raise ClientDisconnected
    return task.result()


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


async def resolve_filters(state: AppState, request: AnswerRequest) -> AnswerRequest:
    """The request with its `sources`/`chapter` filters as stored (as readers type them: see chains.catalogue);
    `FilterMatchesNothing` (422, naming the stored values) for one that names nothing, never a false refusal."""
    if not request.sources and not request.chapter:
        return request
    catalogue = await asyncio.to_thread(state.catalogue.current, state.client)
    sources, chapter = catalogue.resolve(request.sources, request.chapter)
    return dataclasses.replace(request, sources=sources, chapter=chapter)


def endpoint_of(http: Request) -> str:
    return getattr(http.scope.get("route"), "path", None) or http.url.path  # /ask, /api/chat, /v1/...


def answer_record(
    request: AnswerRequest, endpoint: str, sources: list[Source], text: str, done: DoneEvent, model: str | None
) -> AnswerRecord:
    """What is kept of an answer: never the client's address or key (see rag_api.records)."""
    _valid, invalid = check_citations(text, len(sources)) if done.mode == "generated" else ([], [])
    usage = done.usage or {}
    return AnswerRecord(
        answer_id=done.answer_id,
        endpoint=endpoint,
        question=request.question,
        mode=done.mode,
        sources=[RecordedSource(s.source, list(s.heading_path), s.score, s.chunk_index) for s in sources],
        citations=list(done.citations),
        invalid_citations=invalid,
        chapter=request.chapter,
        retrieval_ms=done.timings.retrieval_ms,
        first_token_ms=done.timings.first_token_ms,
        total_ms=done.timings.total_ms,
        model=model if done.mode == "generated" else None,
        input_tokens=usage.get("input_tokens"),
        output_tokens=usage.get("output_tokens"),
        terms_not_in_book=list(done.terms_not_in_book),
    )


async def _noting_done(
    events: AsyncIterator[AnswerEvent], state: AppState, request: AnswerRequest, http: Request
) -> AsyncIterator[AnswerEvent]:
    metrics = metrics_of(http)
    endpoint = endpoint_of(http)
    recorder = state.recorder
    sources: list[Source] = []
    parts: list[str] = []
    async for event in events:
        if isinstance(event, TokenEvent):
            if metrics is not None:
                # the model's deltas, counted before coalescing joins them into fewer events
                metrics.tokens_streamed.labels(endpoint).inc(event.deltas)
            if recorder is not None:
                parts.append(event.text)
        elif isinstance(event, SourcesEvent):
            sources = event.sources
        elif isinstance(event, DoneEvent):
            note_answer(http, event.timings, event.usage, event.mode)
            if recorder is not None:
                model = state.settings.chat_model
                recorder.submit(answer_record(request, endpoint, sources, "".join(parts), event, model))
        yield event


def stream_answer(state: AppState, request: AnswerRequest, http: Request) -> AsyncIterator[AnswerEvent]:
    """The answer's events for an encoder (wrap them in `rag_api.streaming.guard`): token deltas coalesced
    (STREAM_COALESCE_MS), ending with `DeadlineExceeded` past REQUEST_TIMEOUT_S."""
    settings = state.settings
    noted = _noting_done(answer_events(state.chain, request), state, request, http)
    events = within_deadline(noted, settings.request_timeout_s)
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
    request = await resolve_filters(state, request)
    events = stream_answer(state, request, http)
    head: list[AnswerEvent] = []

    async def pull_head() -> None:
        async for event in events:
            head.append(event)
            if isinstance(event, SourcesEvent):
                return

    try:
        await until_disconnected(pull_head(), http)
    except (Exception, asyncio.CancelledError):
        await close_events(events)
        raise
    return RetrievedAnswer(head, events)


async def whole_answer(state: AppState, request: AnswerRequest, http: Request) -> Answer:
    """The whole answer at once (the same events, folded), within REQUEST_TIMEOUT_S; cancelled when the client
    disconnects first."""
    request = await resolve_filters(state, request)
    deadline = state.settings.request_timeout_s
    answer = await until_disconnected(
        call_within_deadline(fold_answer(answer_events(state.chain, request)), deadline), http
    )
    note_answer(http, answer.timings, answer.usage, answer.mode)
    if state.recorder is not None and answer.timings is not None:
        done = DoneEvent(  # for the record
            answer.answer_id,
            answer.mode,
            answer.citations,
            answer.usage,
            answer.timings,
            terms_not_in_book=answer.terms_not_in_book,
        )
        record = answer_record(request, endpoint_of(http), answer.sources, answer.text, done, state.settings.chat_model)
        state.recorder.submit(record)
    return answer
