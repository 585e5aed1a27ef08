"""Fake chat models for tests: scripted answers streamed word by word, failures, and a call counter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import Field


def scripted_model(*answers: str) -> GenericFakeChatModel:
    """A chat model that answers with `answers` in turn, streamed word by word."""
    return GenericFakeChatModel(messages=iter([AIMessage(content=a) for a in answers]))


class CountingChatModel(GenericFakeChatModel):
    """Streams a long answer slowly and counts the chunks it produced, to see when generation stops."""

    chunks_produced: int = 0
    calls: int = 0
    delay_s: float = 0.02
    words: int = 500
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
        for index in range(self.words):
            await asyncio.sleep(self.delay_s)
            self.chunks_produced += 1
            yield ChatGenerationChunk(message=AIMessageChunk(content=f"word{index} "))


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


class RecordingChatModel(GenericFakeChatModel):
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
