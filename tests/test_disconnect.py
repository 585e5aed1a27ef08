"""A client that leaves stops its answer on every face, streaming or not (issue 18, item 4): a live server on
127.0.0.1 calls a slow OpenAI-compatible model server, the client hangs up once the model has started, and the
model server sees its request closed, the model slot is free and the next question is answered."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from qdrant_client import QdrantClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from chains.embeddings import LocalEmbeddings
from chains.models import build_chat_model
from chains.settings import Settings
from rag_api.app import create_app
from rag_api.state import Overrides
from tests.live import free_port, serve

pytestmark = pytest.mark.integration

QUESTION = "How deep should the mulch be?"
WAIT_S = 15.0  # a bound on each wait, never a measurement


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}
    return f"data: {json.dumps(body)}\n\n"


def completion(text: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {
        "id": "c2",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


class SlowModelServer:
    """The first call never ends by itself (a stream of a word every 50 ms for minutes, or a plain call that waits);
    it records whether its client closed it. Later calls answer at once."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = threading.Event()  # the first call is under way (streaming: words have been sent)
        self.closed = threading.Event()  # the first call's client went away
        self.finished = False  # the first call ran to its end (it must not)

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            body = await request.json()
            self.calls += 1
            if self.calls > 1:
                if body.get("stream"):
                    quick = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Eight cm [1]."})]
                    ending = [chunk({}, "stop"), "data: [DONE]\n\n"]
                    return StreamingResponse(iter([*quick, *ending]), media_type="text/event-stream")
                return JSONResponse(completion(QUESTION))
            if body.get("stream"):
                return StreamingResponse(self.slow_stream(), media_type="text/event-stream")
            return await self.slow_reply(request)

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])

    async def slow_stream(self) -> AsyncIterator[str]:
        try:
            yield chunk({"role": "assistant", "content": ""})
            for index in range(4000):
                yield chunk({"content": f"word{index} "})
                if index == 3:
                    self.started.set()
                await asyncio.sleep(0.05)
            yield "data: [DONE]\n\n"
            self.finished = True
        finally:
            self.closed.set()

    async def slow_reply(self, request: Request) -> Response:
        self.started.set()
        for _ in range(4000):
            if await request.is_disconnected():
                self.closed.set()
                return Response(status_code=499)
            await asyncio.sleep(0.05)
        self.finished = True
        return JSONResponse(completion(QUESTION))


async def hang_up_after_start(base_url: str, path: str, body: dict[str, Any], upstream: SlowModelServer) -> None:
    """Send `body` on a raw connection, wait until the model server is busy with it, then close the connection."""
    host, port = base_url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    payload = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}"
    writer.write(head.encode() + b"\r\n\r\n" + payload)
    await writer.drain()
    assert await asyncio.to_thread(upstream.started.wait, WAIT_S), "the model server got the question"
    writer.close()
    await writer.wait_closed()


async def until(condition: Any, what: str) -> None:
    for _ in range(int(WAIT_S / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting: {what}")


FACES = {
    "ask-json": ("/ask", {"question": QUESTION, "stream": False}),
    "openai-json": ("/v1/chat/completions", {"messages": [{"role": "user", "content": QUESTION}], "stream": False}),
    # a follow-up: condensing it calls the model (a plain call) before the stream exists
    "openai-stream-condensing": (
        "/v1/chat/completions",
        {
            "stream": True,
            "messages": [
                {"role": "user", "content": "Tell me about mulch."},
                {"role": "assistant", "content": "Mulch holds moisture [1]."},
                {"role": "user", "content": "How deep?"},
            ],
        },
    ),
}


@pytest.mark.parametrize("face", list(FACES))
async def test_a_client_that_leaves_stops_the_model_and_frees_its_slot(
    face: str, settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> None:
    path, body = FACES[face]
    upstream = SlowModelServer()
    upstream_port = free_port()
    app_settings = settings.model_copy(
        update={
            "chat_model": "m",
            "openai_base_url": f"http://127.0.0.1:{upstream_port}/v1",
            "chat_max_retries": 0,
            "retrieval_score_threshold": -1.0,
            "model_max_concurrency": 1,  # a slot still taken would turn the next question into 503 model_busy
            "model_queue_timeout_s": 0.5,
        }
    )
    model = build_chat_model(app_settings)
    app = create_app(app_settings, Overrides(chat_model=model, embeddings=embeddings, client=qdrant))
    with serve(upstream.app(), upstream_port), serve(app, free_port()) as base_url:
        await hang_up_after_start(base_url, path, body, upstream)
        assert await asyncio.to_thread(upstream.closed.wait, WAIT_S), "the model server saw its request closed"
        assert not upstream.finished
        gate = app.state.rag.gate
        await until(lambda: gate.in_flight == 0, "the model slot to be released")
        async with httpx.AsyncClient(base_url=base_url, timeout=WAIT_S) as client:
            response = await client.post("/ask", json={"question": QUESTION, "stream": False})
        assert response.status_code == 200, response.text
        assert response.json()["answer"] == "Eight cm [1]."
