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


async def test_openai_stream_says_in_its_last_chunk_how_many_turns_it_read(
    served: tuple[AsyncClient, RecordingChatModel],
) -> None:
    http, model = served
    messages = [{"role": role, "content": text} for role, text in TURNS] + [{"role": "user", "content": QUESTION}]
    response = await http.post("/v1/chat/completions", json={"model": "book", "messages": messages, "stream": True})
    chunks = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data: {")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["history_turns_used"] == 2
    assert history_in_answer_prompt(model) == ["turn 3 about watering", "turn 4 about watering"]


# --- one request model: the same conversation, and the same bad body, on each face ------------------------------


def ask_body(question: str, turns: list[tuple[str, str]], **extra: Any) -> dict[str, Any]:
    return {"question": question, "history": [{"role": r, "content": t} for r, t in turns], **extra}


def openai_body(question: str, turns: list[tuple[str, str]], **extra: Any) -> dict[str, Any]:
    messages = [{"role": r, "content": t} for r, t in turns] + [{"role": "user", "content": question}]
    return {"model": "book", "messages": messages}


def ai_sdk_body(question: str, turns: list[tuple[str, str]], **metadata: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [
        {"id": f"m{i}", "role": r, "parts": [{"type": "text", "text": t}]} for i, (r, t) in enumerate(turns)
    ]
    last: dict[str, Any] = {"id": "q", "role": "user", "parts": [{"type": "text", "text": question}]}
    if metadata:
        last["metadata"] = {"selectedText" if k == "selected_text" else k: v for k, v in metadata.items()}
    return {"id": "c", "messages": [*messages, last]}


FACES = {"/ask": ask_body, "/v1/chat/completions": openai_body, "/api/chat": ai_sdk_body}


def turns_used(path: str, response: Any) -> int:
    if path != "/api/chat":
        return int(response.json()["history_turns_used"])
    chunks = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data: {")]
    return int(next(c for c in chunks if c["type"] == "finish")["messageMetadata"]["historyTurnsUsed"])


@pytest.mark.parametrize("path", list(FACES))
async def test_each_face_reads_the_same_latest_turns_and_reports_them_the_same_way(
    served: tuple[AsyncClient, RecordingChatModel], path: str
) -> None:
    http, model = served
    turns = [*TURNS, ("user", "   ")]  # a turn with no text is no turn, on any face
    response = await http.post(path, json=FACES[path](QUESTION, turns))
    assert response.status_code == 200, response.text
    assert turns_used(path, response) == 2
    assert history_in_answer_prompt(model) == ["turn 3 about watering", "turn 4 about watering"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_chat_faces_take_a_whole_long_conversation_and_read_its_window(
    served: tuple[AsyncClient, RecordingChatModel], path: str
) -> None:
    """Chat clients send the whole conversation: past MAX_HISTORY_TURNS (20) it is read, not refused like `/ask`."""
    http, model = served
    turns = [("user" if i % 2 == 0 else "assistant", f"turn {i} about watering") for i in range(41)]
    response = await http.post(path, json=FACES[path](QUESTION, turns))
    assert response.status_code == 200, response.text
    assert turns_used(path, response) == 2
    assert history_in_answer_prompt(model) == ["turn 39 about watering", "turn 40 about watering"]
    refused = await http.post("/ask", json=ask_body(QUESTION, turns))
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "history"


@pytest.fixture
async def limited(settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient) -> AsyncIterator[AsyncClient]:
    """Lowered limits over an empty collection: every body here is refused before retrieval."""
    lowered = settings.model_copy(update={"max_question_chars": 50, "max_selected_chars": 10, "max_k": 3})
    async for _, http in app_client(lowered, embeddings, qdrant, RecordingChatModel(messages=iter([]))):
        yield http


# (what is wrong, the body's question and extras, the message every face gives, each face's `param`)
BAD = [
    ("question-too-long", "x" * 51, {}, "must have at most 50 characters (MAX_QUESTION_CHARS)",
     {"/ask": "question", "/v1/chat/completions": "messages", "/api/chat": "messages.0.parts"}),
    ("blank-question", " \n\t ", {}, "must not be empty or only whitespace",
     {"/ask": "question", "/v1/chat/completions": "messages", "/api/chat": "messages.0.parts"}),
    ("selection-too-long", "Why?", {"selected_text": "y" * 11}, "must have at most 10 characters (MAX_SELECTED_CHARS)",
     {"/ask": "selected_text", "/api/chat": "messages.0.metadata.selectedText"}),
    ("k-too-big", "Why?", {"k": 4}, "must have at most 3 passages (MAX_K)",
     {"/ask": "k", "/api/chat": "messages.0.metadata.k"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "question", "extra", "message", "param"),
    [
        pytest.param(path, question, extra, message, params[path], id=f"{name}-{path}")
        for name, question, extra, message, params in BAD
        for path in params
    ],
)
async def test_a_bad_body_gets_the_same_clear_error_on_each_face(
    limited: AsyncClient, path: str, question: str, extra: dict[str, Any], message: str, param: str
) -> None:
    response = await limited.post(path, json=FACES[path](question, [], **extra))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"] == f"{param}: {message}"
