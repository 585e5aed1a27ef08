"""Choosing the chat model (chains/models.py): `CHAT_MODEL=provider:model` through `init_chat_model`, the
OpenAI-compatible default, and an Anthropic-style provider answering `/ask` from a local fake Messages API server
(offline: langchain-anthropic's real client, pointed at 127.0.0.1 by its own ANTHROPIC_BASE_URL)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from httpx_sse import aconnect_sse
from langchain_openai import ChatOpenAI
from qdrant_client import QdrantClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from chains.embeddings import LocalEmbeddings
from chains.errors import ConfigurationError
from chains.models import ChatModelName, build_chat_model
from chains.settings import Settings
from tests.conftest import app_client
from tests.live import free_port, serve

ANSWER_WORDS = ["Twenty ", "litres ", "a ", "week ", "[1]."]


def test_a_name_without_a_provider_is_the_openai_compatible_endpoint() -> None:
    assert ChatModelName.parse("gpt-4o-mini") == ChatModelName("openai", "gpt-4o-mini")
    assert ChatModelName.parse("qwen2.5:7b") == ChatModelName("openai", "qwen2.5:7b")  # not an identifier
    assert ChatModelName.parse("openai:llama3:8b") == ChatModelName("openai", "llama3:8b")
    assert ChatModelName.parse("anthropic:claude-test") == ChatModelName("anthropic", "claude-test")


def test_the_default_stays_chat_openai_on_the_configured_base_url() -> None:
    settings = Settings(_env_file=None, chat_model="gpt-4o-mini", openai_base_url="http://127.0.0.1:9/v1")  # type: ignore[call-arg]
    model = build_chat_model(settings)
    assert isinstance(model, ChatOpenAI) and model.model_name == "gpt-4o-mini"
    assert str(model.openai_api_base).startswith("http://127.0.0.1:9/v1")


def test_an_unknown_provider_is_a_configuration_error_naming_chat_model() -> None:
    settings = Settings(_env_file=None, chat_model="nosuchprovider:model-x")  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match=r"(?s)CHAT_MODEL=nosuchprovider:model-x.*openai:nosuchprovider"):
        build_chat_model(settings)


def anthropic_events(model: str) -> list[str]:
    """A Messages API stream, as Anthropic sends it (event name + JSON data)."""

    def event(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": model,
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 42, "output_tokens": 1},
    }  # fmt: skip
    return [
        event("message_start", {"message": message}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        *(event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": w}}) for w in ANSWER_WORDS),
        event("content_block_stop", {"index": 0}),
        event(
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"input_tokens": 42, "output_tokens": 5},
            },
        ),
        event("message_stop", {}),
    ]


class FakeAnthropic:
    """`POST /v1/messages` streaming a fixed answer; records each request body and its API key header."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.keys: list[str | None] = []

    def app(self) -> Starlette:
        async def messages(request: Request) -> Response:
            body = await request.json()
            self.bodies.append(body)
            self.keys.append(request.headers.get("x-api-key") or request.headers.get("authorization"))

            async def stream() -> AsyncIterator[str]:
                for part in anthropic_events(body["model"]):
                    yield part

            return StreamingResponse(stream(), media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


@pytest.mark.integration
async def test_an_anthropic_model_chosen_by_chat_model_answers_ask_and_health_names_it(
    settings: Settings,
    embeddings: LocalEmbeddings,
    qdrant: QdrantClient,
    indexed_book: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("langchain_anthropic", reason="the [anthropic] extra is not installed")
    upstream = FakeAnthropic()
    port = free_port()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-not-real")
    configured = settings.model_copy(update={"chat_model": "anthropic:claude-test-1"})
    model = build_chat_model(configured)
    assert type(model).__name__ == "ChatAnthropic"
    events: list[tuple[str, dict[str, Any]]] = []
    with serve(upstream.app(), port):
        async for _, http in app_client(configured, embeddings, qdrant, model):
            async with aconnect_sse(
                http, "POST", "/ask", json={"question": "How much water for a young tree?", "stream": True}
            ) as source:
                events = [(sse.event, json.loads(sse.data)) async for sse in source.aiter_sse()]
            health = (await http.get("/health")).json()
    assert [name for name, _ in events][:3] == ["status", "sources", "status"]
    assert "".join(data["text"] for name, data in events if name == "token") == "".join(ANSWER_WORDS)
    done = events[-1]
    assert done[0] == "done" and done[1]["mode"] == "generated" and done[1]["citations"] == [1]
    assert done[1]["usage"]["input_tokens"] == 42
    (body,) = upstream.bodies
    assert body["model"] == "claude-test-1" and body["stream"] is True and "test-key-not-real" in str(upstream.keys)
    assert "<passages>" in json.dumps(body["messages"])
    assert health["model"] == {"provider": "anthropic", "name": "claude-test-1"}
    assert health["dependencies"]["chat_model"]["ok"] is True
