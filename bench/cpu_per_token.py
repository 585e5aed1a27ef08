"""Server CPU per streamed token: `POST /api/chat` (AI SDK UI message stream) next to `POST /ask` (SSE).

    .venv/bin/python -m bench.cpu_per_token --requests 40 --rounds 3

Ingests sample_book/ into a fresh embedded store (a temporary folder), starts `rag-api` against the fake
OpenAI-compatible model server (`bench.fake_model_server`, no delay between tokens) and sends `--requests`
sequential streaming requests per route and round, reading every stream to its end. A token is one chunk of
the model's stream; the server may coalesce several into one text event (STREAM_COALESCE_MS). The server
process's CPU time (user + system, from /proc) is read around each batch. Each batch is run with short
answers (`--small` tokens) and long ones (`--large` tokens), so that the per-token figure is the slope between
them: the fixed cost of a request (embedding the question, the Qdrant query, the prompt) cancels out. Routes
alternate within a round.

It also times the two encoders alone, in this process (`--encoder-tokens` token events through `ask_sse` and
through `ui_message_sse`, to the bytes sent), to show what the wire format itself costs.

Read the figures as relative on a shared machine: CPU time is steadier than wall time, but other processes on
the same cores still move it by several per cent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from chains.answer import AnswerEvent

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
ROUTES = ("/ask", "/api/chat")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def body_for(route: str, question: str) -> dict[str, object]:
    if route == "/ask":
        return {"question": question, "stream": True}
    message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": question}]}
    return {"id": "bench", "messages": [message], "trigger": "submit-message"}


def tokens_in(route: str, client: httpx.Client, question: str) -> int:
    """Send one question and read its stream to the end; the number of text events (tokens may be coalesced)."""
    tokens, last = 0, ""
    with client.stream("POST", route, json=body_for(route, question)) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if route == "/ask" and line.startswith("event:"):
                last = line.split(":", 1)[1].strip()
                tokens += last == "token"
            elif route != "/ask" and line.startswith("data:"):
                last = line[5:].strip()
                tokens += last.startswith('{"type":"text-delta"')
    if last not in ("done", "[DONE]"):
        raise SystemExit(f"{route} stream ended with {last!r}")
    return tokens


@dataclass
class Batch:
    cpu_s: float = 0.0
    requests: int = 0
    text_events: int = 0


@dataclass
class Figures:
    batches: dict[tuple[str, int], Batch] = field(default_factory=dict)

    def add(self, route: str, size: int, cpu_s: float, requests: int, text_events: int) -> None:
        batch = self.batches.setdefault((route, size), Batch())
        batch.cpu_s += cpu_s
        batch.requests += requests
        batch.text_events += text_events


def run_batch(route: str, base_url: str, pid: int, questions: list[str], requests: int) -> tuple[float, int]:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        tokens_in(route, client, questions[0])  # open the connection before the clock starts
        before = cpu_seconds(pid)
        tokens = sum(tokens_in(route, client, questions[i % len(questions)]) for i in range(requests))
        return cpu_seconds(pid) - before, tokens


def wait_ready(base_url: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode} before it was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/ready", timeout=5).status_code == 200:
                return
        time.sleep(0.3)
    raise SystemExit(f"{base_url} was not ready within {seconds} s")


def start_model(port: int, tokens: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bench.fake_model_server", "--port", str(port), "--tokens", str(tokens)]
    model = subprocess.Popen([*command, "--delay-ms", "0"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return model
        time.sleep(0.1)
    model.kill()
    raise SystemExit("the fake model server did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def report(figures: Figures, small: int, large: int) -> dict[str, object]:
    """Per route: CPU per request at each answer length, and the slope per model token between them."""
    routes: dict[str, object] = {}
    for route in ROUTES:
        short, long = figures.batches[(route, small)], figures.batches[(route, large)]
        per_request_short = short.cpu_s / short.requests
        per_request_long = long.cpu_s / long.requests
        routes[route] = {
            "requests_per_size": short.requests,
            "text_events_per_answer": [
                round(short.text_events / short.requests, 1),
                round(long.text_events / long.requests, 1),
            ],
            "cpu_ms_per_request": [round(per_request_short * 1000, 2), round(per_request_long * 1000, 2)],
            "cpu_us_per_token": round((per_request_long - per_request_short) / (large - small) * 1e6, 1),
        }
    return routes


def encoder_us_per_token(tokens: int) -> dict[str, float]:
    """CPU per token event of each encoder alone: the events of one answer, encoded to the bytes sent."""
    from chains.answer import DoneEvent, SourcesEvent, StatusEvent, Timings, TokenEvent
    from rag_api.aisdk import ui_message_sse
    from rag_api.streaming import ask_sse

    async def answer_events() -> AsyncIterator[AnswerEvent]:
        yield StatusEvent("retrieving")
        yield SourcesEvent([])
        yield StatusEvent("generating")
        for index in range(tokens):
            yield TokenEvent(f"word{index} ")
        yield DoneEvent("id", "generated", [1], None, Timings(1.0, 2.0, 3.0))

    async def drain(encoder: str) -> int:
        stream = ask_sse(answer_events(), "r") if encoder == "/ask" else ui_message_sse(answer_events(), "r", "m")
        return sum([len(chunk) async for chunk in stream])

    results = {}
    for encoder in ROUTES:
        asyncio.run(drain(encoder))  # warm-up
        started = time.process_time()
        asyncio.run(drain(encoder))
        results[encoder] = round((time.process_time() - started) / tokens * 1e6, 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="sequential requests per route, size and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", type=int, default=10, help="tokens in a short answer")
    parser.add_argument("--large", type=int, default=410, help="tokens in a long answer")
    parser.add_argument("--encoder-tokens", type=int, default=200_000, help="token events for the encoders alone")
    args = parser.parse_args()

    questions = [
        json.loads(line)["question"]
        for line in (ROOT / "bench" / "questions" / "sample_book.jsonl").read_text().splitlines()
        if line.strip()
    ]
    model_port, api_port = free_port(), free_port()
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="bookrag-cpu-") as tmp:
        env = {
            **os.environ,
            "QDRANT_PATH": str(Path(tmp) / "qdrant"),
            "CHAT_MODEL": "fake-model",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{model_port}/v1",
            "OPENAI_API_KEY": "not-needed",
            "RATE_LIMIT_PER_MINUTE": "0",
            "RETRIEVAL_SCORE_THRESHOLD": "0",  # every question is answered by the model, none refused
            "LOG_LEVEL": "WARNING",
        }
        env.pop("QDRANT_URL", None)
        bin_dir = Path(sys.executable).parent
        ingest = [str(bin_dir / "rag-ingest"), str(ROOT / "sample_book"), "--base-dir", str(ROOT), "-q"]
        subprocess.run(ingest, cwd=ROOT, env=env, check=True)
        model = start_model(model_port, args.small, env)
        api = subprocess.Popen(
            [str(bin_dir / "rag-api"), "--host", "127.0.0.1", "--port", str(api_port)], cwd=ROOT, env=env
        )
        base_url = f"http://127.0.0.1:{api_port}"
        try:
            wait_ready(base_url, api, 120)
            for route in ROUTES:  # warm-up: first-call costs (imports, caches) out of the figures
                run_batch(route, base_url, api.pid, questions, 5)
            for round_number in range(args.rounds):
                for size in (args.small, args.large):
                    stop(model)
                    model = start_model(model_port, size, env)
                    order = ROUTES if round_number % 2 == 0 else ROUTES[::-1]
                    for route in order:
                        cpu_s, tokens = run_batch(route, base_url, api.pid, questions, args.requests)
                        figures.add(route, size, cpu_s, args.requests, tokens)
        finally:
            stop(api)
            stop(model)

    result = {
        "requests_per_route_and_size": args.requests * args.rounds,
        "answer_tokens": [args.small, args.large],
        "routes": report(figures, args.small, args.large),
        "encoder_only_cpu_us_per_token": encoder_us_per_token(args.encoder_tokens),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
