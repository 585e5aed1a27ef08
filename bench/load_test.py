"""A bounded load test on 127.0.0.1: many concurrent streaming clients against the real server.

    .venv/bin/python -m bench.load_test --clients 500 --rounds 2

It ingests a small generated book into a fresh embedded store (a temporary folder), starts the fake OpenAI-compatible
model server (`bench.fake_model_server`) and `rag-api` as subprocesses, warms up, then runs `--rounds` rounds of
`--clients` concurrent `POST /ask` streams (server-sent events). A stream counts as good when it is HTTP 200 and
ends with exactly one `done` event. It reports errors, time to first token and whole-stream percentiles, and the
server's resident memory: at baseline (after warm-up), at the peak of each round and after each round has
drained. Everything is stopped at the end, and the run gives up after `--max-seconds`.

The figures depend on the machine and on what else runs on it: on a shared machine read them as rough.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
# A small book written on the spot, so that the run needs nothing but this repository.
BOOK = {
    "planting.md": "# Planting\n\nDig the planting hole twice as wide as the roots and only as deep as they are "
    "long, so the graft union stays a hand's width above the soil. A bare-root tree should soak in a bucket "
    "for two hours before planting. Space standard trees five metres apart and dwarf trees two metres apart.\n",
    "rootstocks.md": "# Rootstocks\n\nThe rootstock sets a tree's final size. M27 keeps an apple tree smallest, "
    "about one and a half metres tall; M9 gives a small tree that needs a stake; MM106 a medium tree.\n",
    "pruning.md": "# Pruning\n\nPrune apple trees in late winter, when they are dormant, cutting just above an "
    "outward-facing bud. Remove dead, damaged and diseased wood first.\n",
    "watering.md": "# Watering\n\nYoung trees need about twenty litres of water once a week in their first "
    "summer. A ring of wood-chip mulch eight centimetres deep holds moisture and keeps grass away. A spiral "
    "guard around the trunk protects young trees from rabbits.\n",
}
QUESTIONS = [
    "How deep should the planting hole be?",
    "Which rootstock keeps a tree smallest?",
    "When should apple trees be pruned?",
    "How much water does a young tree need?",
    "What does mulch do for a fruit tree?",
    "How far apart should trees be planted?",
    "What should I do with a tree that arrives bare-root?",
    "How do I protect young trees from rabbits?",
]


@dataclass
class Round:
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    first_token_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    after_rss_mb: float = 0.0
    wall_s: float = 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def one_stream(client: httpx.AsyncClient, question: str, result: Round) -> None:
    started = time.perf_counter()
    first: float | None = None
    events: list[str] = []
    try:
        async with client.stream("POST", "/ask", json={"question": question, "stream": True}) as response:
            if response.status_code != 200:
                result.errors.append(f"HTTP {response.status_code}")
                return
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    name = line.split(":", 1)[1].strip()
                    events.append(name)
                    if name == "token" and first is None:
                        first = time.perf_counter() - started
    except httpx.HTTPError as exc:
        result.errors.append(type(exc).__name__)
        return
    if events.count("done") == 1 and events[-1] == "done":
        result.ok += 1
        result.total_s.append(time.perf_counter() - started)
        if first is not None:
            result.first_token_s.append(first)
    else:
        result.errors.append(f"stream ended with {events[-1:] or 'nothing'}")


async def run_round(base_url: str, clients: int, pid: int) -> Round:
    result = Round()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(120.0, connect=30.0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        started = time.perf_counter()
        tasks = [asyncio.create_task(one_stream(client, QUESTIONS[i % len(QUESTIONS)], result)) for i in range(clients)]
        while not all(task.done() for task in tasks):
            result.peak_rss_mb = max(result.peak_rss_mb, rss_mb(pid))
            await asyncio.sleep(0.1)
        await asyncio.gather(*tasks)
        result.wall_s = time.perf_counter() - started
    await asyncio.sleep(3)  # let the server drain its closed connections
    result.after_rss_mb = rss_mb(pid)
    return result


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=500, help="concurrent streaming clients per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=40, help="words per fake answer")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="fake model's pause before each word")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="give up after this long")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    model_port, api_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="bookrag-load-") as tmp:
        env = {
            **os.environ,
            "QDRANT_PATH": str(Path(tmp) / "qdrant"),
            "CHAT_MODEL": "fake-model",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{model_port}/v1",
            "OPENAI_API_KEY": "not-needed",
            "RATE_LIMIT_PER_MINUTE": "0",
            "MODEL_MAX_CONCURRENCY": str(max(args.clients, 1)),
            "MODEL_QUEUE_TIMEOUT_S": "60",
            "LOG_LEVEL": "WARNING",
        }
        env.pop("QDRANT_URL", None)  # always the embedded store here
        bin_dir = Path(sys.executable).parent
        book = Path(tmp) / "book"
        book.mkdir()
        for name, text in BOOK.items():
            (book / name).write_text(text, encoding="utf-8")
        ingest = [str(bin_dir / "rag-ingest"), str(book), "--base-dir", tmp, "-q"]
        subprocess.run(ingest, cwd=ROOT, env=env, check=True)
        model = subprocess.Popen(
            [sys.executable, "-m", "bench.fake_model_server", "--port", str(model_port),
             "--tokens", str(args.tokens), "--delay-ms", str(args.delay_ms)],
            cwd=ROOT, env=env,
        )  # fmt: skip
        api = subprocess.Popen(
            [str(bin_dir / "rag-api"), "--host", "127.0.0.1", "--port", str(api_port)], cwd=ROOT, env=env
        )
        base_url = f"http://127.0.0.1:{api_port}"
        started = time.monotonic()
        try:
            wait_ready(base_url, api, 120)
            asyncio.run(asyncio.wait_for(run_round(base_url, 20, api.pid), args.max_seconds))  # warm-up
            baseline = rss_mb(api.pid)
            rounds = []
            for _ in range(args.rounds):
                remaining = args.max_seconds - (time.monotonic() - started)
                rounds.append(asyncio.run(asyncio.wait_for(run_round(base_url, args.clients, api.pid), remaining)))
        finally:
            for process in (api, model):
                process.terminate()
            for process in (api, model):
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()

    report = {
        "clients": args.clients,
        "tokens_per_answer": args.tokens,
        "model_delay_ms": args.delay_ms,
        "baseline_rss_mb": round(baseline, 1),
        "rounds": [
            {
                "ok": r.ok,
                "errors": len(r.errors),
                "error_kinds": sorted(set(r.errors)),
                "wall_s": round(r.wall_s, 2),
                "first_token_p50_s": round(percentile(r.first_token_s, 50), 3),
                "first_token_p95_s": round(percentile(r.first_token_s, 95), 3),
                "stream_p50_s": round(percentile(r.total_s, 50), 3),
                "stream_p95_s": round(percentile(r.total_s, 95), 3),
                "stream_max_s": round(max(r.total_s, default=float("nan")), 3),
                "streams_per_s": round(r.ok / r.wall_s, 1) if r.wall_s else None,
                "peak_rss_mb": round(r.peak_rss_mb, 1),
                "after_rss_mb": round(r.after_rss_mb, 1),
            }
            for r in rounds
        ],
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))
        mean_stream = statistics.fmean(rounds[-1].total_s) if rounds[-1].total_s else float("nan")
        print(f"last round: {rounds[-1].ok}/{args.clients} good streams, mean {mean_stream:.2f} s")
    if any(r.errors for r in rounds):
        sys.exit(1)


if __name__ == "__main__":
    main()
