"""A tiny OpenAI-compatible chat model server for load tests and fault tests, on 127.0.0.1 only.

    python -m bench.fake_model_server --port 8901 --tokens 40 --delay-ms 10

`POST /v1/chat/completions` answers with `--tokens` words that cite passage [1], streamed one chunk per word
`--delay-ms` apart (`"stream": true`, with a final usage chunk when `stream_options.include_usage` is set), or
all at once. `GET /v1/models` lists the one model. It never calls anything and costs almost no CPU, so a load
test measures the RAG service, not the model. `POST /bench/config` with `{"tokens": N, "delay_ms": D}` changes
both for later requests, so that one run of a benchmark can switch between an instant and a paced model without
restarting the servers that call it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "fake-model"


def _words(count: int) -> list[str]:
    return [f"word{i} " for i in range(count - 1)] + ["[1]."]


def build_app(tokens: int = 40, delay_s: float = 0.01) -> Starlette:
    config = {"tokens": tokens, "delay_s": delay_s}

    async def configure(request: Request) -> Response:
        body = await request.json()
        if "tokens" in body:
            config["tokens"] = max(1, int(body["tokens"]))
        if "delay_ms" in body:
            config["delay_s"] = max(0.0, float(body["delay_ms"]) / 1000)
        return JSONResponse({"tokens": config["tokens"], "delay_ms": config["delay_s"] * 1000})

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]})

    async def chat(request: Request) -> Response:
        body = await request.json()
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        words = _words(int(config["tokens"]))
        delay_s = float(config["delay_s"])
        total = prompt_tokens + len(words)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words), "total_tokens": total}
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        if not body.get("stream"):
            await asyncio.sleep(delay_s * len(words))
            message = {"role": "assistant", "content": "".join(words)}
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": MODEL,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, str], finish: str | None = None) -> str:
            data = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(data)}\n\n"

        async def stream() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            for word in words:
                # No pause at all when instant: even sleep(0) would add a trip through the event loop per word.
                if delay_s:
                    await asyncio.sleep(delay_s)
                yield chunk({"content": word})
            yield chunk({}, "stop")
            if include_usage:
                final = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": MODEL}
                yield f"data: {json.dumps({**final, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/bench/config", configure, methods=["POST"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8901)
    parser.add_argument("--tokens", type=int, default=40, help="words per answer")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="pause before each streamed word")
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(
        build_app(args.tokens, args.delay_ms / 1000),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
