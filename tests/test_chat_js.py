"""The real AI SDK client (`ai` from npm, pinned in tests/js/package.json) against `POST /api/chat` on a live
server, as a browser frontend uses it: `DefaultChatTransport` sends, `readUIMessageStream` folds the stream into
a UI message. Skipped, with the reason, when Node or the installed package is missing (`make test` installs it
when npm is present)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from rag_api.app import create_app
from rag_api.state import Overrides
from tests.fakes import cycling_model
from tests.live import free_port, serve

pytestmark = pytest.mark.integration

JS_DIR = Path(__file__).parent / "js"
ANSWER = "Give each young tree about twenty litres once a week [1]."


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the AI SDK client test needs Node.js 20 or later")
    if not (JS_DIR / "node_modules" / "ai" / "package.json").is_file():
        pytest.skip("tests/js/node_modules is missing: run `npm ci --prefix tests/js` (make test does it when npm is)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        pytest.skip(f"node {version} is too old for the `ai` package: Node.js 20 or later is needed")
    return node


def run_client(node: str, base_url: str, *questions: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [node, str(JS_DIR / "chat_client.mjs"), base_url, *questions],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    turns: list[dict[str, Any]] = json.loads(done.stdout)["turns"]
    return turns


@pytest.fixture
def book_app(settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path) -> FastAPI:
    """The service over the indexed book; every model call answers ANSWER (each turn and a condensed follow-up)."""
    model = cycling_model(ANSWER)
    return create_app(settings, Overrides(chat_model=model, embeddings=embeddings, client=qdrant))


def test_ai_sdk_client_folds_the_stream_into_a_message_with_text_and_sources(book_app: FastAPI) -> None:
    node = node_or_skip()
    with serve(book_app, free_port()) as base_url:
        turns = run_client(node, base_url, "How much water does a young tree need?", "And in a heat wave?")

    for turn in turns:
        message = turn["message"]
        assert turn["errors"] == []
        assert message["role"] == "assistant" and message["id"].startswith("msg-")
        texts = [p for p in message["parts"] if p["type"] == "text"]
        assert [p["text"] for p in texts] == [ANSWER] and texts[0]["state"] == "done"
        sources = [p for p in message["parts"] if p["type"] == "source-document"]
        assert len(sources) >= 1, "at least one source part"
        assert message["parts"].index(sources[-1]) < message["parts"].index(texts[0]), "sources before the text"
        assert message["metadata"]["mode"] == "generated" and message["metadata"]["citations"] == [1]
        assert turn["statuses"] == ["retrieving", "generating"], "transient status chunks reach the client"
        assert not any(p["type"].startswith("data-") for p in message["parts"]), "and are not kept in the message"
        assert turn["chunkTypes"][0] == "start" and turn["chunkTypes"][-1] == "finish"

    first_sources = [p for p in turns[0]["message"]["parts"] if p["type"] == "source-document"]
    selection, passage = first_sources[0], first_sources[1]
    assert selection["sourceId"] == "S1" and selection["providerMetadata"]["bookrag"]["number"] == 1
    assert passage["filename"].endswith(".md") and passage["mediaType"] == "text/markdown"
    assert passage["providerMetadata"]["bookrag"]["number"] == 2


def test_ai_sdk_client_raises_the_json_error_when_qdrant_is_down_before_the_stream(
    book_app: FastAPI, qdrant: QdrantClient
) -> None:
    node = node_or_skip()
    with serve(book_app, free_port()) as base_url:
        qdrant.close()  # the store goes away under the running service
        turns = run_client(node, base_url, "How much water does a young tree need?")
    # DefaultChatTransport throws on the 503 with the body as the message (what useChat's `error` holds): no stream,
    # so no empty assistant message.
    assert list(turns[0]) == ["thrown"]
    error = json.loads(turns[0]["thrown"])["error"]
    assert error["code"] == "qdrant_unavailable" and error["type"] == "server_error" and error["message"]
