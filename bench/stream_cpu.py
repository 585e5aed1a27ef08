"""Server CPU per streamed token, for `/ask` (SSE events) and `/v1/chat/completions` (OpenAI chunks).

    .venv/bin/python -m bench.stream_cpu                        # 200 answers of 200 tokens per endpoint
    .venv/bin/python -m bench.stream_cpu --server-src ../other-checkout        # that code's server, same load
    STREAM_COALESCE_MS=0 .venv/bin/python -m bench.stream_cpu                  # without the coalescing window

A small book is ingested into a temporary embedded store; `bench.fake_model_server` (its own process, so its CPU is
not counted) streams `--tokens` words per answer with no delay; `rag-api` runs as a subprocess. After a warm-up, each
endpoint gets `--streams` streamed answers, `--concurrency` at a time, always the same question (its embedding is
cached: the figure is the cost of streaming, not of embedding). The server's CPU seconds over the run (user + system,
all threads, from /proc/PID/stat) are divided by the model tokens streamed. Also reported: the events (or chunks)
a client received per answer, which token coalescing makes fewer than the tokens when the server is busy.

The full side-by-side with a plain `astream_events` route is `bench.stream_bench`; this is the quick check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.load_test import BOOK, free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "How much water does a young tree need?"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


async def one_answer(client: httpx.AsyncClient, path: str, body: dict[str, object]) -> tuple[int, bool]:
    """(token events or content chunks received, ended well)."""
    events, ended = 0, False
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            return 0, False
        async for line in response.aiter_lines():
            if line == "event: token" or (line.startswith("data: {") and '"content":"' in line):
                events += 1
            elif line in ("event: done", "data: [DONE]"):
                ended = True
    return events, ended


async def run(base_url: str, path: str, body: dict[str, object], streams: int, concurrency: int) -> list[int]:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:

        async def limited() -> int:
            async with gate:
                events, ended = await one_answer(client, path, body)
                if not ended:
                    raise SystemExit(f"a stream from {path} did not end with done")
                return events

        return list(await asyncio.gather(*(limited() for _ in range(streams))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200, help="answers per endpoint")
    parser.add_argument("--tokens", type=int, default=200, help="model tokens per answer")
    parser.add_argument("--concurrency", type=int, default=8, help="answers streaming at once")
    parser.add_argument("--server-src", type=Path, help="run the server from this checkout (e.g. an older commit)")
    args = parser.parse_args()

    model_port, api_port = free_port(), free_port()
    bin_dir = Path(sys.executable).parent
    messages = [{"role": "user", "content": QUESTION}]
    endpoints = {
        "/ask": {"question": QUESTION, "stream": True},
        "/v1/chat/completions": {"model": "bookrag", "stream": True, "messages": messages},
    }
    with tempfile.TemporaryDirectory(prefix="bookrag-cpu-") as tmp:
        env = {
            **os.environ,
            "QDRANT_PATH": str(Path(tmp) / "qdrant"),
            "CHAT_MODEL": "fake-model",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{model_port}/v1",
            "OPENAI_API_KEY": "not-needed",
            "RATE_LIMIT_PER_MINUTE": "0",
            "LOG_LEVEL": "WARNING",
        }
        env.pop("QDRANT_URL", None)
        server_env = dict(env)
        if args.server_src:
            source = args.server_src.resolve()
            server_env["PYTHONPATH"] = os.pathsep.join([str(source / "src"), str(source)])
        book = Path(tmp) / "book"
        book.mkdir()
        for name, text in BOOK.items():
            (book / name).write_text(text, encoding="utf-8")
        subprocess.run([str(bin_dir / "rag-ingest"), str(book), "--base-dir", tmp, "-q"], cwd=ROOT, env=env, check=True)
        model = subprocess.Popen(
            [sys.executable, "-m", "bench.fake_model_server", "--port", str(model_port),
             "--tokens", str(args.tokens), "--delay-ms", "0"],
            cwd=ROOT, env=env,
        )  # fmt: skip
        serve = [sys.executable, "-m", "rag_api.main", "--host", "127.0.0.1", "--port", str(api_port)]
        api = subprocess.Popen(serve, cwd=args.server_src or ROOT, env=server_env)
        base_url = f"http://127.0.0.1:{api_port}"
        report: dict[str, object] = {
            "streams": args.streams,
            "tokens": args.tokens,
            "concurrency": args.concurrency,
            "server": str(args.server_src or ROOT),
            "STREAM_COALESCE_MS": os.environ.get("STREAM_COALESCE_MS", "default"),
        }
        try:
            wait_ready(base_url, api, 120)
            for path, body in endpoints.items():
                if httpx.post(f"{base_url}{path}", json={**body, "stream": False}, timeout=60).status_code == 404:
                    report[path] = "not served by this server"
                    continue
                asyncio.run(run(base_url, path, body, 20, args.concurrency))  # warm-up
                cpu_before, started = cpu_seconds(api.pid), time.perf_counter()
                events = asyncio.run(run(base_url, path, body, args.streams, args.concurrency))
                cpu = cpu_seconds(api.pid) - cpu_before
                wall = time.perf_counter() - started
                report[path] = {
                    "server_cpu_s": round(cpu, 2),
                    "cpu_us_per_token": round(cpu * 1e6 / (args.streams * args.tokens), 1),
                    "cpu_ms_per_answer": round(cpu * 1e3 / args.streams, 2),
                    "events_per_answer": round(sum(events) / len(events), 1),
                    "tokens_per_s": round(args.streams * args.tokens / wall),
                }
        finally:
            for process in (api, model):
                process.terminate()
            for process in (api, model):
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
