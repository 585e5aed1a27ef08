"""The chat model's answer as a stream of text pieces, through public interfaces only.

Any chat model (a provider of `init_chat_model`, a model handed in, a fake in tests) streams through
`model.astream(messages, config)`, so LangChain's callbacks and tracing see the call and every token, as a child
of the caller's run. The OpenAI-compatible default (`ChatOpenAI` built from CHAT_MODEL) streams through the
`openai` SDK's own iterator instead (`OpenAIChatStream`): the request built from the public settings, sent by the
model's own `openai` client (same key, base URL, timeout, retries), with the LangChain callbacks fired through their
public manager (start, every token when a handler listens, end). On purpose, and measured (docs/benchmarks.md):
`ChatOpenAI.astream` alone costs about half the CPU per token of a plain `astream_events` route, more than the
0.40 the service may spend in all.

Failures are translated into this project's errors (`model_error`); a stream that ends without the model saying
it finished (no finish reason: a proxy that cut the body cleanly) is `ModelIncomplete`, never a complete answer.
Only `Exception` is caught: cancellation (the client went away) passes through and is never a model failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.callbacks import AsyncCallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.load import dumpd
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_openai_messages
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult
from langchain_core.runnables import RunnableConfig, ensure_config

from chains.errors import DependencyUnavailable, ModelIncomplete, ModelTimeout
from chains.guard import close_iterator
from chains.settings import Settings

logger = logging.getLogger(__name__)

# Where providers say how a streamed answer ended, in `response_metadata`: OpenAI and most OpenAI-compatible
# servers, Google, Mistral (`finish_reason`); Anthropic (`stop_reason`); Ollama (`done_reason`).
FINISH_KEYS = ("finish_reason", "stop_reason", "done_reason")


@dataclass(frozen=True, slots=True)
class ModelText:
    """Text the model streamed since the previous piece, how many deltas it joins, and the usage so far when this
    piece reports any."""

    text: str
    deltas: int = 1
    usage: dict[str, int] | None = None


def usage_of(chunk: AIMessageChunk) -> dict[str, int] | None:
    """`{input_tokens, output_tokens, total_tokens}` of a chunk that reports token usage, else None."""
    meta = chunk.usage_metadata
    if not meta:
        return None
    return {
        "input_tokens": int(meta.get("input_tokens", 0)),
        "output_tokens": int(meta.get("output_tokens", 0)),
        "total_tokens": int(meta.get("total_tokens", 0)),
    }


def finish_reason(chunk: AIMessageChunk) -> str | None:
    """How the model says its answer ended (`stop`, `length`, `end_turn`...), when this chunk says it."""
    meta = chunk.response_metadata
    for key in FINISH_KEYS:
        if reason := meta.get(key):
            return str(reason)
    return None


def model_error(exc: Exception) -> Exception:
    """Translate a chat model client's failures into this project's errors; anything else is left as it is."""
    import openai

    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return ModelTimeout()
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return DependencyUnavailable("chat_model", "the chat model endpoint rejected the configured API key")
    if isinstance(exc, openai.APIConnectionError | openai.RateLimitError | openai.InternalServerError):
        return DependencyUnavailable("chat_model", "the chat model endpoint is unreachable or overloaded")
    if isinstance(exc, openai.APIStatusError):
        return DependencyUnavailable("chat_model", f"the chat model endpoint answered HTTP {exc.status_code}")
    if isinstance(exc, openai.APIError):  # an `{"error": ...}` event in the stream
        logger.warning("the chat model endpoint sent an error in its stream: %s", exc)
        return DependencyUnavailable("chat_model", "the chat model endpoint failed while streaming its answer")
    if isinstance(exc, json.JSONDecodeError):
        logger.warning("the chat model endpoint sent a data line that is not JSON: %s", exc)
        return DependencyUnavailable("chat_model", "the chat model endpoint sent a malformed stream")
    return exc


async def stream_model_text(
    model: BaseChatModel, messages: Sequence[BaseMessage], config: RunnableConfig | None = None
) -> AsyncIterator[ModelText]:
    """The model's answer to `messages`, one piece per streamed chunk; `ModelIncomplete` when the stream ends
    before the model said it finished."""
    deltas, usage, reason = 0, None, None
    started, first_text_at = time.perf_counter(), None
    try:
        async for chunk in model.astream(list(messages), config):
            if not isinstance(chunk, AIMessageChunk):
                continue
            reason = finish_reason(chunk) or reason
            chunk_usage = usage_of(chunk)
            if chunk_usage:  # some providers split it (Anthropic: input at the start, output at the end): add up
                usage = chunk_usage if usage is None else {k: usage[k] + chunk_usage[k] for k in usage}
            text = chunk.text if isinstance(chunk.text, str) else ""
            if text:
                deltas += 1
                if first_text_at is None:
                    first_text_at = time.perf_counter()
            if text or chunk_usage:
                yield ModelText(text, 1 if text else 0, usage if chunk_usage else None)
    except Exception as exc:  # not BaseException: cancellation is the caller's, never a model failure
        translated = model_error(exc)
        if translated is exc:
            raise
        raise translated from exc
    _log_call(model, deltas, started, first_text_at, usage, reason)
    if reason is None:
        logger.warning("the chat model's stream ended after %d deltas without a finish reason: cut short", deltas)
        raise ModelIncomplete()


def _log_call(
    model: Any, deltas: int, started: float, first_text_at: float | None, usage: Any, reason: str | None
) -> None:
    logger.debug(
        "chat model %s: %d deltas in %.1f ms (first text after %s ms), finish %s, usage %s",
        getattr(model, "model_name", None) or getattr(model, "model", None) or type(model).__name__,
        deltas,
        (time.perf_counter() - started) * 1000,
        "-" if first_text_at is None else f"{(first_text_at - started) * 1000:.1f}",
        reason,
        usage,
    )


async def merged(pieces: AsyncIterator[ModelText]) -> AsyncIterator[ModelText]:
    """`pieces` read ahead by a task, everything that arrived since the last pull joined into one piece.

    On purpose: a model's deltas often arrive many to a network read, and each piece the chain yields costs a
    task per Runnable step it passes (LangChain's streaming): joined, the chain's cost is per read, not per token,
    and a slow model's tokens still go out one by one, at once. Closing this cancels the reader and `pieces`.
    """
    pending: list[ModelText] = []
    arrived = asyncio.Event()
    finished: list[BaseException | None] = []

    async def read_ahead() -> None:
        try:
            async for piece in pieces:
                pending.append(piece)
                arrived.set()
            finished.append(None)
        except Exception as exc:  # handed to the consumer, which raises it in its own task
            finished.append(exc)
        finally:
            arrived.set()
            await close_iterator(pieces)

    reader = asyncio.create_task(read_ahead(), name="model-text-read-ahead")
    try:
        while True:
            await arrived.wait()
            arrived.clear()
            if pending:
                batch, pending[:] = list(pending), []
                usage = next((p.usage for p in reversed(batch) if p.usage), None)
                yield ModelText("".join(p.text for p in batch), sum(p.deltas for p in batch), usage)
            if finished and not pending:
                if finished[0] is not None:
                    raise finished[0]
                return
    finally:
        reader.cancel()
        await asyncio.wait({reader})


TextStream = Callable[[Sequence[BaseMessage], RunnableConfig | None], AsyncIterator[ModelText]]


def text_stream_for(model: BaseChatModel, settings: Settings) -> TextStream:
    """How the chain reads `model`'s text: the `openai` SDK's iterator for the OpenAI-compatible model built from
    CHAT_MODEL, `model.astream` for any other."""
    fast = OpenAIChatStream.for_model(model, settings)
    if fast is not None:
        return fast.stream

    def through_astream(messages: Sequence[BaseMessage], config: RunnableConfig | None) -> AsyncIterator[ModelText]:
        return stream_model_text(model, messages, config)

    return through_astream


def _openai_usage(raw: Any) -> dict[str, int] | None:
    if raw is None:
        return None
    prompt, completion = int(raw.prompt_tokens or 0), int(raw.completion_tokens or 0)
    return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": int(raw.total_tokens or 0)}


class OpenAIChatStream:
    """A `ChatOpenAI` model's Chat Completions stream through the `openai` SDK's own iterator, with the model's
    callbacks. Built once per model at start-up (its serialized form and request parameters are fixed)."""

    def __init__(self, model: Any, params: dict[str, Any]) -> None:
        self.model = model
        self.params = params
        self.serialized = dumpd(model)

    @classmethod
    def for_model(cls, model: BaseChatModel, settings: Settings) -> OpenAIChatStream | None:
        """For the `ChatOpenAI` that `chains.models.build_chat_model` made from `settings`, else None."""
        from langchain_openai import ChatOpenAI

        from chains.models import OPENAI, ChatModelName

        if settings.chat_model is None or not isinstance(model, ChatOpenAI) or model.use_responses_api:
            return None
        name = ChatModelName.parse(settings.chat_model)
        if name.provider != OPENAI or model.model_name != name.model or model.root_async_client is None:
            return None
        params: dict[str, Any] = {"model": name.model, "temperature": settings.chat_temperature, "stream": True}
        if settings.chat_max_tokens is not None:
            params["max_completion_tokens"] = settings.chat_max_tokens
        if model.stream_usage:
            params["stream_options"] = {"include_usage": True}
        return cls(model, params)

    async def stream(
        self, messages: Sequence[BaseMessage], config: RunnableConfig | None = None
    ) -> AsyncIterator[ModelText]:
        """Like `stream_model_text`: one piece per streamed chunk, `ModelIncomplete` without a finish reason."""
        config = ensure_config(config)
        model = self.model
        manager = AsyncCallbackManager.configure(
            inheritable_callbacks=config.get("callbacks"),
            local_callbacks=model.callbacks,
            verbose=model.verbose,
            inheritable_tags=config.get("tags"),
            local_tags=model.tags,
            inheritable_metadata=config.get("metadata"),
            local_metadata=model.metadata,
        )
        (run,) = await manager.on_chat_model_start(
            self.serialized, [list(messages)], invocation_params=self.params, batch_size=1
        )
        parts: list[str] = []
        usage: dict[str, int] | None = None
        reason: str | None = None
        started, first_text_at = time.perf_counter(), None

        def result(finish: str | None) -> LLMResult:
            meta = {"finish_reason": finish, "model_name": self.params["model"]}
            message = AIMessage(
                "".join(parts), usage_metadata=cast("UsageMetadata | None", usage), response_metadata=meta
            )
            return LLMResult(generations=[[ChatGeneration(message=message)]])

        try:
            stream = await model.root_async_client.chat.completions.create(
                messages=convert_to_openai_messages(list(messages)), **self.params
            )
            try:
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = _openai_usage(chunk.usage)
                    text = ""
                    for choice in chunk.choices:
                        if choice.index == 0:
                            text = choice.delta.content or ""
                            reason = choice.finish_reason or reason
                    if text:
                        if first_text_at is None:
                            first_text_at = time.perf_counter()
                        parts.append(text)
                        if run.handlers:  # the per-token callbacks, when anything listens
                            piece = ChatGenerationChunk(message=AIMessageChunk(content=text))
                            await run.on_llm_new_token(text, chunk=piece)
                    if text or chunk.usage is not None:
                        yield ModelText(text, 1 if text else 0, usage if chunk.usage is not None else None)
            finally:
                await stream.close()
        except Exception as exc:
            translated = model_error(exc)
            await run.on_llm_error(translated)
            if translated is exc:
                raise
            raise translated from exc
        except (asyncio.CancelledError, GeneratorExit):
            await run.on_llm_end(result("cancelled"))  # the reader left: an end, not a model failure
            raise
        _log_call(model, len(parts), started, first_text_at, usage, reason)
        if reason is None:
            logger.warning("the chat model's stream ended after %d deltas without a finish reason", len(parts))
            error = ModelIncomplete()
            await run.on_llm_error(error)
            raise error
        await run.on_llm_end(result(reason))
