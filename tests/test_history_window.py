"""The history window (HISTORY_TURNS) on each face: `/ask`, `/api/chat` and `/v1/chat/completions` parse into one
`AnswerRequest`, the answer chain reads only the latest turns, and the answer says how many it used."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient
from langchain_core.messages import AIMessage
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from tests.conftest import app_client
from tests.fakes import RecordingChatModel

pytestmark = pytest.mark.integration

QUESTION = "How much water does a young tree need?"
TURNS = [("user" if i % 2 == 0 else "assistant", f"turn {i} about watering") for i in range(5)]


@pytest.fixture
async def served(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> AsyncIterator[tuple[AsyncClient, RecordingChatModel]]:
    # Each answer: the condensed question, then the answer.
    rewrite, answer = AIMessage("How much water does a young fruit tree need?"), AIMessage("Twenty litres [1].")
    model = RecordingChatModel(messages=itertools.cycle([rewrite, answer]))
    windowed = settings.model_copy(update={"history_turns": 2})
    async for _, http in app_client(windowed, embeddings, qdrant, model):
        yield http, model


def history_in_answer_prompt(model: RecordingChatModel) -> list[str]:
    """The conversation turns of the last answer prompt (between the system message and the question)."""
    return [str(m.content) for m in model.prompts[-1][1:-1]]


async def test_ask_reads_only_the_latest_history_turns_and_says_how_many(
    served: tuple[AsyncClient, RecordingChatModel],
) -> None:
    http, model = served
    history = [{"role": role, "content": text} for role, text in TURNS]
    answer = (await http.post("/ask", json={"question": QUESTION, "history": history})).json()
    assert answer["history_turns_used"] == 2
    assert history_in_answer_prompt(model) == ["turn 3 about watering", "turn 4 about watering"]
    condense = str(model.prompts[-2][-1].content)
    assert "turn 3 about watering" in condense and "turn 2 about watering" not in condense
    stream = await http.post("/ask", json={"question": QUESTION, "history": history, "stream": True})
    done = [line for line in stream.text.splitlines() if line.startswith("data:")][-1]
    assert json.loads(done.removeprefix("data:"))["history_turns_used"] == 2


async def test_openai_face_reads_only_the_latest_history_turns_and_says_how_many(
    served: tuple[AsyncClient, RecordingChatModel],
) -> None:
    http, model = served
    messages = [{"role": role, "content": text} for role, text in TURNS] + [{"role": "user", "content": QUESTION}]
    completion = (await http.post("/v1/chat/completions", json={"model": "book", "messages": messages})).json()
    assert completion["history_turns_used"] == 2
    assert history_in_answer_prompt(model) == ["turn 3 about watering", "turn 4 about watering"]


async def test_ai_sdk_face_reads_only_the_latest_history_turns_and_says_how_many(
    served: tuple[AsyncClient, RecordingChatModel],
) -> None:
    http, model = served

    def message(index: int, role: str, text: str) -> dict[str, Any]:
        return {"id": f"m{index}", "role": role, "parts": [{"type": "text", "text": text}]}

    messages = [message(i, role, text) for i, (role, text) in enumerate(TURNS)] + [message(9, "user", QUESTION)]
    response = await http.post("/api/chat", json={"id": "c", "messages": messages})
    chunks = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data: {")]
    finish = next(c for c in chunks if c["type"] == "finish")
    assert finish["messageMetadata"]["historyTurnsUsed"] == 2
    assert history_in_answer_prompt(model) == ["turn 3 about watering", "turn 4 about watering"]
