"""Fake chat models for tests: scripted answers streamed word by word, failures, and a call counter.

Each fake ends its stream as real providers do, with a `finish_reason` in the last chunk's `response_metadata`:
a stream without one is a cut-short answer (`ModelIncomplete`)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import Field

FINISHED = {"finish_reason": "stop"}


def finished(chunk: ChatGenerationChunk | None = None) -> ChatGenerationChunk:
    """`chunk` (or an empty one) marked as the last of a complete answer."""
    chunk = chunk or ChatGenerationChunk(message=AIMessageChunk(content=""))
    chunk.message.response_metadata = {**chunk.message.response_metadata, **FINISHED}
    return chunk


class FakeChatModel(GenericFakeChatModel):
    """`GenericFakeChatModel` (its messages streamed word by word) whose stream says it finished."""

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        previous = None
        for chunk in super()._stream(messages, stop, run_manager, **kwargs):
            if previous is not None:
                yield previous
            previous = chunk
        yield finished(previous)


def scripted_model(*answers: str) -> FakeChatModel:
    """A chat model that answers with `answers` in turn, streamed word by word."""
    return FakeChatModel(messages=iter([AIMessage(content=a) for a in answers]))


def cycling_model(answer: str) -> FakeChatModel:
    """A chat model that answers every call with `answer`, streamed word by word."""
    return FakeChatModel(messages=itertools.cycle([AIMessage(content=answer)]))


class CountingChatModel(GenericFakeChatModel):
    """Streams a long answer slowly and counts the chunks it produced, to see when generation stops; records
    whether a stream was stopped before its end (cancelled or closed) and the event loop it ran on."""

    chunks_produced: int = 0
    calls: int = 0
    delay_s: float = 0.02
    words: int = 500
    stopped_early: bool = False
    finished: bool = False
    loop: Any = None
    prompts: list[list[BaseMessage]] = Field(default_factory=list)
    messages: Iterator[AIMessage | str] = Field(default_factory=lambda: iter(()))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        self.calls += 1
        self.prompts.append(messages)
        self.loop = asyncio.get_running_loop()
        try:
            for index in range(self.words):
                await asyncio.sleep(self.delay_s)
                self.chunks_produced += 1
                yield ChatGenerationChunk(message=AIMessageChunk(content=f"word{index} "))
            yield finished()
        except (asyncio.CancelledError, GeneratorExit):
            self.stopped_early = True
            raise
        finally:
            self.finished = True


class UsageChatModel(GenericFakeChatModel):
    """Streams `answer` word by word, then a last empty chunk with token counts, like OpenAI with usage on."""

    answer: str = "Twenty litres a week [1]."
    messages: Iterator[AIMessage | str] = Field(default_factory=lambda: iter(()))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        words = self.answer.split(" ")
        for index, word in enumerate(words):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word if index == 0 else f" {word}"))
        usage = {"input_tokens": 120, "output_tokens": len(words), "total_tokens": 120 + len(words)}
        yield finished(ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage)))  # type: ignore[arg-type]


class FailingChatModel(GenericFakeChatModel):
    """Streams a few words of an answer, then fails like a dropped connection."""

    fail_after: int = 3
    calls: int = 0
    messages: Iterator[AIMessage | str] = Field(default_factory=lambda: iter(()))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        self.calls += 1
        for index in range(self.fail_after):
            yield ChatGenerationChunk(message=AIMessageChunk(content=f"partial{index} "))
        raise RuntimeError("upstream model connection reset (secret internal detail)")

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._stream(messages, stop):
            yield chunk


class RecordingChatModel(FakeChatModel):
    """Answers with scripted messages in turn (streamed word by word) and records the messages of every call."""

    prompts: list[list[BaseMessage]] = Field(default_factory=list)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.prompts.append(list(messages))
        return super()._generate(messages, stop, run_manager, **kwargs)


def recording_model(*answers: str) -> RecordingChatModel:
    return RecordingChatModel(messages=iter([AIMessage(content=a) for a in answers]))


class StallingChatModel(GenericFakeChatModel):
    """A model endpoint that hangs: no call ever answers. Records its calls and whether one was cancelled."""

    calls: int = 0
    cancelled: bool = False
    messages: Iterator[AIMessage | str] = Field(default_factory=lambda: iter(()))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("a stalled call is cancelled, never answered")
