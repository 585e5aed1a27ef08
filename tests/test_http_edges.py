"""The HTTP edge under attack (issue 18, item 8): body limits and read timeouts, CORS on every error, failed keys
rate limited, proxy headers only from trusted proxies, strict types, specific error codes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from pydantic import SecretStr
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from rag_api.app import create_app
from rag_api.server import uvicorn_options
from rag_api.state import Overrides
from tests.conftest import app_client
from tests.fakes import scripted_model
from tests.live import free_port, serve

pytestmark = pytest.mark.integration

ORIGIN = "http://localhost:3000"  # in the default CORS_ORIGINS
PUBLIC_KEY = "public-key-0123456789"
ADMIN_KEY = "admin-key-0123456789abc"
WAIT_S = 15.0  # a bound on each wait, never a measurement


@pytest.fixture
async def make_client(settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient) -> AsyncIterator[Any]:
    opened: list[AsyncIterator[tuple[FastAPI, AsyncClient]]] = []

    async def make(**update: Any) -> tuple[FastAPI, AsyncClient]:
        generator = app_client(settings.model_copy(update=update), embeddings, qdrant, scripted_model("Yes [1]."))
        opened.append(generator)
        return await anext(generator)

    yield make
    for generator in reversed(opened):
        await generator.aclose()


# --- bodies --------------------------------------------------------------------------------------------------------


async def test_a_chunked_body_over_the_limit_is_413_with_cors_headers(make_client: Any) -> None:
    _, client = await make_client(max_body_bytes=1024)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the size is only known while reading
        yield b'{"question": "'
        for _ in range(10):
            yield b"x" * 512
        yield b'"}'

    response = await client.post("/ask", content=chunked(), headers={"Origin": ORIGIN})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert "1024 bytes" in response.json()["error"]["message"]
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["connection"] == "close", "the rest of the body is never read"


async def test_every_error_response_carries_cors_headers_for_an_allowed_origin(make_client: Any) -> None:
    app, client = await make_client(api_keys=[SecretStr(PUBLIC_KEY)], max_body_bytes=1024)

    async def boom() -> None:
        raise RuntimeError("an internal detail")

    app.add_api_route("/boom", boom, methods=["GET"])
    headers = {"Origin": ORIGIN, "X-API-Key": PUBLIC_KEY}
    big = await client.post("/ask", content=b"x" * 2000, headers={**headers, "Content-Type": "application/json"})
    unauthorized = await client.post("/ask", json={"question": "Why?"}, headers={"Origin": ORIGIN})
    invalid = await client.post("/ask", json={"question": ""}, headers=headers)
    crashed = await client.get("/boom", headers=headers)
    answers = {"413": big, "401": unauthorized, "422": invalid, "500": crashed}
    assert {name: r.status_code for name, r in answers.items()} == {n: int(n) for n in answers}
    for name, response in answers.items():
        assert response.headers.get("access-control-allow-origin") == ORIGIN, name
        assert response.headers.get("x-request-id"), name
    assert "an internal detail" not in crashed.text
    stranger = await client.get("/boom", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in stranger.headers


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    return await asyncio.wait_for(reader.read(), WAIT_S)


async def test_slow_headers_and_slow_bodies_are_cut_off(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    timeouts = settings.model_copy(update={"header_timeout_s": 1.0, "body_timeout_s": 1.0})
    app = create_app(timeouts, Overrides(embeddings=embeddings, client=qdrant))
    port = free_port()
    with serve(app, port, **uvicorn_options(timeouts)) as base_url:
        request_line = b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n"

        async def silent() -> bytes:
            reader, _ = await asyncio.open_connection("127.0.0.1", port)
            return await _closed_by_server(reader)

        async def half_headers() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request_line)
            return await _closed_by_server(reader)

        async def dribbled_headers() -> bytes:  # a byte at a time: each byte alone would reset an idle timer
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            read = asyncio.ensure_future(_closed_by_server(reader))
            for byte in request_line + b"X-Padding: " + b"a" * 200:
                if read.done() or writer.is_closing():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)
            return await read

        async def half_body() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request_line + b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"query"')
            return await _closed_by_server(reader)

        answers = await asyncio.gather(*(f() for f in (silent, half_headers, dribbled_headers, *[half_body] * 3)))
        assert answers[:3] == [b"", b"", b""], "closed without a request"
        for answer in answers[3:]:
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408")
            assert json.loads(body)["error"]["code"] == "body_timeout"
        async with httpx.AsyncClient(base_url=base_url, timeout=WAIT_S) as client:
            assert (await client.post("/search", json={"query": "mulch"})).status_code == 200, "still serving"


# --- who the client is -----------------------------------------------------------------------------------------------


async def test_wrong_keys_are_rate_limited_like_any_request(make_client: Any) -> None:
    _, client = await make_client(
        api_keys=[SecretStr(PUBLIC_KEY)],
        admin_api_keys=[SecretStr(ADMIN_KEY)],
        rate_limit_burst=3,
        rate_limit_per_minute=1,
    )
    guesses = [f"guess-{n:016d}" for n in range(5)]
    public = [(await client.get("/v1/models", headers={"X-API-Key": g})).status_code for g in guesses]
    assert public == [401, 401, 401, 429, 429]
    limited = await client.post("/admin/ingest", json={"paths": ["x"]}, headers={"X-API-Key": guesses[0]})
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    holder = await client.get("/v1/models", headers={"X-API-Key": PUBLIC_KEY})
    assert holder.status_code == 200, "a key holder has its own bucket"


@pytest.mark.parametrize(("trusted", "expected"), [([], [200, 429]), (["127.0.0.1"], [200, 200])])
async def test_x_forwarded_for_names_the_client_only_from_trusted_proxies(
    trusted: list[str], expected: list[int], settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    limited = settings.model_copy(
        update={"rate_limit_burst": 1, "rate_limit_per_minute": 1, "trusted_proxies": trusted}
    )
    app = create_app(limited, Overrides(embeddings=embeddings, client=qdrant))
    with serve(app, free_port(), **uvicorn_options(limited)) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=WAIT_S) as client:
            statuses = [
                (await client.get("/v1/models", headers={"X-Forwarded-For": address})).status_code
                for address in ("203.0.113.1", "203.0.113.2")
            ]
    assert statuses == expected


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert Settings(_env_file=None, trusted_proxies="10.0.0.0/8, 127.0.0.1").trusted_proxies == [  # type: ignore[call-arg]
        "10.0.0.0/8",
        "127.0.0.1",
    ]
    with pytest.raises(ValueError, match=r"proxy\.example"):
        Settings(_env_file=None, trusted_proxies="proxy.example")  # type: ignore[call-arg]


# --- what the body says ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/ask", {"question": "Why?", "k": "5"}, "k"),
        ("/ask", {"question": "Why?", "stream": 0}, "stream"),
        ("/search", {"query": "mulch", "k": "5"}, "k"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Why?"}], "stream": 0}, "stream"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Why?"}], "stream": True, "stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
        ),
        (
            "/api/chat",
            {
                "messages": [
                    {"id": "m", "role": "user", "parts": [{"type": "text", "text": "Why?"}], "metadata": {"k": "5"}}
                ]
            },
            "messages.0.metadata.k",
        ),
    ],
)
async def test_numbers_and_flags_of_the_wrong_type_are_422(
    make_client: Any, path: str, body: dict[str, Any], field: str
) -> None:
    _, client = await make_client()
    response = await client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert response.json()["error"]["param"] == field


async def test_a_second_ingest_while_one_runs_is_409_ingest_in_progress(make_client: Any, tmp_path: Any) -> None:
    (tmp_path / "book").mkdir(exist_ok=True)
    (tmp_path / "book" / "a.md").write_text("# A\n\nText.\n", encoding="utf-8")
    app, client = await make_client(admin_api_keys=[SecretStr(ADMIN_KEY)], ingest_root=tmp_path)
    app.state.ingest_lock = asyncio.Lock()
    async with app.state.ingest_lock:  # an ingest is running
        response = await client.post("/admin/ingest", json={"paths": ["book"]}, headers={"X-API-Key": ADMIN_KEY})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "ingest_in_progress"
