"""`POST /api/chat` (the AI SDK's UI message stream) through the app factory: real embedded Qdrant, real embeddings,
fake chat models. The JavaScript client's view of the same route is in tests/test_chat_js.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.exceptions import RequestValidationError
from httpx import AsyncClient
from httpx_sse import aconnect_sse
from langchain_core.language_models import BaseChatModel
from pydantic import SecretStr
from qdrant_client import QdrantClient

from chains.answer import Source
from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from rag_api.aisdk import media_type, source_document, source_id
from rag_api.app import create_app
from rag_api.routes.chat import to_answer_request
from rag_api.schemas import ChatRequest
from rag_api.state import Overrides
from tests.conftest import app_client
from tests.fakes import CountingChatModel, FailingChatModel, cycling_model, scripted_model
from tests.live import free_port, serve

ANSWER = "Water each young tree with about twenty litres once a week [1]."
QUESTION = "How much should I water a young tree?"


def user(text: str, message_id: str = "u1", **metadata: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"id": message_id, "role": "user", "parts": [{"type": "text", "text": text}]}
    if metadata:
        message["metadata"] = metadata
    return message


def assistant(text: str, message_id: str = "a1") -> dict[str, Any]:
    parts = [
        {"type": "source-document", "sourceId": "book/watering.md#0", "mediaType": "text/markdown", "title": "W"},
        {"type": "text", "text": text, "state": "done"},
    ]
    return {"id": message_id, "role": "assistant", "parts": parts, "metadata": {"mode": "generated"}}


def chat_body(*messages: dict[str, Any]) -> dict[str, Any]:
    """The body DefaultChatTransport sends."""
    return {"id": "chat-1", "messages": list(messages), "trigger": "submit-message"}


# --- the request: question, conversation, selection (no app needed) ---------------------------------------------


def test_last_user_message_is_the_question_and_earlier_turns_the_history() -> None:
    body = ChatRequest.model_validate(
        chat_body(
            {"id": "s", "role": "system", "parts": [{"type": "text", "text": "be nice"}]},
            user("How do I prune apple trees?", "u0"),
            assistant("Cut above a bud [1]."),
            user("and when?", "u1", selectedText="late winter", selectedFrom="pruning.md", chapter="Pruning", k=3),
        )
    )
    request = to_answer_request(body, Settings(_env_file=None))  # type: ignore[call-arg]
    assert request.question == "and when?"
    assert [(t.role, t.content) for t in request.history] == [
        ("user", "How do I prune apple trees?"),
        ("assistant", "Cut above a bud [1]."),
    ]
    assert request.selected_text == "late winter" and request.selected_from == "pruning.md"
    assert request.chapter == "Pruning" and request.k == 3


def test_long_conversation_is_kept_whole_for_the_chain_to_window() -> None:
    """Not cut, nor refused, at parsing: the chain reads the last HISTORY_TURNS (tests/test_history_window.py)."""
    turns = [user(f"question {i}", f"u{i}") if i % 2 == 0 else assistant(f"answer {i}", f"a{i}") for i in range(30)]
    body = ChatRequest.model_validate(chat_body(*turns, user("last", "u-last")))
    settings = Settings(_env_file=None, max_history_turns=4)  # type: ignore[call-arg]
    request = to_answer_request(body, settings)
    assert [t.content for t in request.history] == [f"{'question' if i % 2 == 0 else 'answer'} {i}" for i in range(30)]


def test_question_over_the_configured_limit_is_refused() -> None:
    body = ChatRequest.model_validate(chat_body(user("x" * 101)))
    with pytest.raises(RequestValidationError):
        to_answer_request(body, Settings(_env_file=None, max_question_chars=100))  # type: ignore[call-arg]


def test_source_media_type_and_id_follow_the_passage() -> None:
    def source(path: str, chunk_index: int | None) -> Source:
        return Source(1, "text", 0.5, path, None, ["A", "B"], None, None, chunk_index)

    assert [media_type(source(p, 0)) for p in ("a.md", "b.MDX", "c.pdf", "d.rst", "b.epub/t/c.xhtml", "e.bin")] == [
        "text/markdown",
        "text/markdown",
        "application/pdf",
        "text/x-rst",
        "application/xhtml+xml",
        "text/plain",
    ]
    assert source_id(source("book/a.md", 3)) == "book/a.md#3" and source_id(source("selected text", None)) == "S1"
    assert source_document(source("book/a.md", 3))["title"] == "A > B"


# --- the stream -----------------------------------------------------------------------------------------------


@pytest.fixture
def chat_model() -> BaseChatModel | None:
    return scripted_model(ANSWER)


@pytest.fixture
async def client(
    settings: Settings,
    embeddings: LocalEmbeddings,
    qdrant: QdrantClient,
    indexed_book: Path,
    chat_model: BaseChatModel | None,
) -> AsyncIterator[AsyncClient]:
    async for _, http in app_client(settings, embeddings, qdrant, chat_model):
        yield http


async def chunks_of(client: AsyncClient, body: dict[str, Any]) -> tuple[list[dict[str, Any]], httpx.Headers]:
    """The JSON chunks of the stream, after checking that it is unnamed `data:` events ending with `[DONE]`."""
    data: list[str] = []
    async with aconnect_sse(client, "POST", "/api/chat", json=body) as source:
        assert source.response.status_code == 200
        async for sse in source.aiter_sse():
            assert sse.event == "message", "the UI message stream uses unnamed events"
            data.append(sse.data)
    assert data[-1] == "[DONE]" and "[DONE]" not in data[:-1]
    return [json.loads(d) for d in data[:-1]], source.response.headers


def types_of(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["type"] for c in chunks]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["delta"] for c in chunks if c["type"] == "text-delta")


@pytest.mark.integration
async def test_chat_streams_start_status_sources_text_finish_then_done(client: AsyncClient) -> None:
    payloads, headers = await chunks_of(client, chat_body(user(QUESTION)))
    kinds = types_of(payloads)
    assert kinds[:2] == ["start", "data-status"]
    first_text = kinds.index("text-start")
    sources = [p for p in payloads[:first_text] if p["type"] == "source-document"]
    assert sources, "sources come before any text"
    assert kinds[first_text - 1] == "data-status" and payloads[first_text - 1]["data"] == {"stage": "generating"}
    assert set(kinds[first_text + 1 : -2]) == {"text-delta"}
    assert kinds[-2:] == ["text-end", "finish"]
    assert payloads[0]["messageId"].startswith("msg-")
    assert payloads[1] == {"type": "data-status", "id": "status", "data": {"stage": "retrieving"}, "transient": True}
    assert text_of(payloads) == ANSWER
    assert {p["id"] for p in payloads if p["type"].startswith("text-")} == {"answer"}

    first = sources[0]
    assert first["sourceId"] == f"{first['filename']}#{first['providerMetadata']['bookrag']['chunkIndex']}"
    assert first["filename"] == "book/watering.md" and first["mediaType"] == "text/markdown"
    assert first["title"].startswith("Watering Young Trees")
    meta = first["providerMetadata"]["bookrag"]
    assert meta["number"] == 1 and "twenty litres" in meta["text"] and meta["score"] > 0
    assert [s["providerMetadata"]["bookrag"]["number"] for s in sources] == list(range(1, len(sources) + 1))

    assert payloads[-1]["finishReason"] == "stop"
    finish = payloads[-1]["messageMetadata"]
    assert finish["mode"] == "generated" and finish["citations"] == [1]
    assert finish["timings"]["totalMs"] >= finish["timings"]["retrievalMs"] > 0
    assert finish["requestId"] == headers["x-request-id"]

    assert headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"


@pytest.mark.integration
async def test_chat_stream_is_data_lines_separated_by_blank_lines(client: AsyncClient) -> None:
    response = await client.post("/api/chat", json=chat_body(user(QUESTION)))
    assert response.text.startswith('data: {"type":"start"')
    assert response.text.endswith("data: [DONE]\n\n")
    blocks = [b for b in response.text.split("\n\n") if b and not b.startswith(":")]
    assert all(block.startswith("data: ") and "\n" not in block for block in blocks)


@pytest.mark.integration
async def test_selected_text_in_the_question_metadata_is_the_first_source(client: AsyncClient) -> None:
    selected = "Prune apple trees in late winter. Remove the three Ds first."
    body = chat_body(user("Why should I do this?", selectedText=selected, selectedFrom="pruning"))
    payloads, _ = await chunks_of(client, body)
    first = next(p for p in payloads if p["type"] == "source-document")
    assert first["sourceId"] == "S1" and first["filename"] == "pruning" and first["mediaType"] == "text/plain"
    assert first["providerMetadata"]["bookrag"]["text"] == selected


@pytest.mark.integration
@pytest.mark.parametrize(
    "chat_model", [scripted_model("When should apple trees be pruned?", "In late winter [1].")], ids=["condensing"]
)
async def test_follow_up_is_condensed_with_the_conversation(client: AsyncClient) -> None:
    body = chat_body(user("How do I prune apple trees?", "u0"), assistant("Cut above a bud [1]."), user("and when?"))
    payloads, _ = await chunks_of(client, body)
    first = next(p for p in payloads if p["type"] == "source-document")
    assert "late winter" in first["providerMetadata"]["bookrag"]["text"]
    assert text_of(payloads) == "In late winter [1]."


@pytest.mark.integration
@pytest.mark.parametrize("chat_model", [FailingChatModel()], ids=["failing"])
async def test_model_failing_mid_stream_ends_with_one_error_chunk_and_done(client: AsyncClient) -> None:
    payloads, _ = await chunks_of(client, chat_body(user(QUESTION)))
    kinds = types_of(payloads)
    assert "text-delta" in kinds and "finish" not in kinds
    assert kinds[-3:] == ["text-end", "message-metadata", "error"]
    assert kinds.count("error") == 1
    assert payloads[-2]["messageMetadata"] == {"error": {"code": "internal_error"}}
    assert payloads[-1]["errorText"] and "secret internal detail" not in json.dumps(payloads)
    assert (await client.get("/health")).status_code == 200


@pytest.mark.integration
@pytest.mark.parametrize("chat_model", [None], ids=["no-model"])
async def test_without_a_chat_model_the_extractive_answer_streams_the_same_way(client: AsyncClient) -> None:
    payloads, _ = await chunks_of(client, chat_body(user("When should apple trees be pruned?")))
    assert types_of(payloads)[-2:] == ["text-end", "finish"]
    assert payloads[-1]["messageMetadata"]["mode"] == "extractive"


BAD_BODIES = {
    "empty": {},
    "no-messages": {"messages": []},
    "messages-not-a-list": {"messages": "not a list"},
    "no-parts": chat_body({"id": "u1", "role": "user", "parts": []}),
    "blank-question": chat_body(user("   \n ")),
    "no-user-message": chat_body(assistant("Only an answer, no question.")),
    "unknown-role": chat_body({"id": "u1", "role": "robot", "parts": [{"type": "text", "text": "hi"}]}),
    "message-without-id": chat_body({"role": "user", "parts": [{"type": "text", "text": "no id"}]}),
    "question-too-long": chat_body(user("x" * 5000)),
    "selection-too-long": chat_body(user("ok", selectedText="x" * 9000)),
    "k-zero": chat_body(user("ok", k=0)),
    "k-too-big": chat_body(user("ok", k=1000)),
    "unknown-trigger": {**chat_body(user("ok")), "trigger": "resume-stream"},
}


@pytest.fixture
async def bare_client(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> AsyncIterator[AsyncClient]:
    """A client on an app with an empty collection: enough for what is refused before any retrieval."""
    async for _, http in app_client(settings, embeddings, qdrant, scripted_model(ANSWER)):
        yield http


@pytest.mark.integration
@pytest.mark.parametrize("name", list(BAD_BODIES))
async def test_chat_rejects_bad_bodies_with_422_before_streaming(bare_client: AsyncClient, name: str) -> None:
    response = await bare_client.post("/api/chat", json=BAD_BODIES[name])
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["message"]


@pytest.mark.integration
async def test_chat_regenerates_and_ignores_fields_the_transport_body_option_adds(client: AsyncClient) -> None:
    body = {**chat_body(user(QUESTION)), "trigger": "regenerate-message", "messageId": "a1", "bookId": {"x": 1}}
    payloads, _ = await chunks_of(client, body)
    assert types_of(payloads)[-1] == "finish" and text_of(payloads) == ANSWER


@pytest.mark.integration
async def test_chat_needs_a_key_when_api_keys_is_set_and_allows_the_book_origin(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> None:
    key = "chat-test-key-0123456789"
    keyed = settings.model_copy(update={"api_keys": [SecretStr(key)], "cors_origins": ["https://book.example"]})
    async for _, client in app_client(keyed, embeddings, qdrant, scripted_model(ANSWER)):
        refused = await client.post("/api/chat", json=chat_body(user(QUESTION)))
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        preflight = await client.options(
            "/api/chat",
            headers={
                "Origin": "https://book.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,authorization",
            },
        )
        assert preflight.headers.get("access-control-allow-origin") == "https://book.example"
        answered = await client.post(
            "/api/chat", json=chat_body(user(QUESTION)), headers={"Authorization": f"Bearer {key}"}
        )
        assert answered.status_code == 200 and answered.text.endswith("data: [DONE]\n\n")


@pytest.mark.integration
async def test_chat_is_rate_limited_like_ask(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> None:
    limited = settings.model_copy(update={"rate_limit_per_minute": 6, "rate_limit_burst": 1})
    model = cycling_model(ANSWER)
    async for _, client in app_client(limited, embeddings, qdrant, model):
        assert (await client.post("/ask", json={"question": QUESTION})).status_code == 200
        response = await client.post("/api/chat", json=chat_body(user(QUESTION)))
        assert response.status_code == 429 and response.json()["error"]["code"] == "rate_limited"


@pytest.mark.integration
async def test_client_abort_stops_the_model(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> None:
    model = CountingChatModel(delay_s=0.02, words=500)  # ten seconds of answer unless it is stopped
    app = create_app(settings, Overrides(chat_model=model, embeddings=embeddings, client=qdrant))
    with serve(app, free_port()) as base_url:
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=30) as http,
            http.stream("POST", "/api/chat", json=chat_body(user(QUESTION))) as response,
        ):
            assert response.status_code == 200
            deltas = 0
            async for line in response.aiter_lines():
                deltas += '"type":"text-delta"' in line
                if deltas == 3:
                    break  # the reader closes the tab: the connection is closed mid-answer
        produced = await settled(lambda: model.chunks_produced)
        assert model.calls == 1
        assert produced < model.words, "the model stopped being called when the client went away"


async def settled(read: Any, quiet_s: float = 0.5, limit_s: float = 15.0) -> int:
    """`read()` once it has not changed for `quiet_s` (bounded by `limit_s`)."""
    value, waited = read(), 0.0
    while waited < limit_s:
        await asyncio.sleep(quiet_s)
        waited += quiet_s
        now = read()
        if now == value:
            return int(now)
        value = now
    return int(value)
