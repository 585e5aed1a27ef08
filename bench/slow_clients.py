"""Slow clients (slowloris) against the real `rag-api` on 127.0.0.1: do their connections get closed?

    .venv/bin/python -m bench.slow_clients --connections 150 --header-timeout 2 --body-timeout 2

Starts `rag-api` (a fresh embedded store in a temporary folder) with HEADER_TIMEOUT_S and BODY_TIMEOUT_S, then opens
`--connections` connections at once, in three equal kinds: silent (no byte), half headers, headers and half a body.
Each waits for the server to close it, at most `--max-seconds`. While they hang, a normal request must be answered.
Reports how many of each kind were closed, what they were answered (408 for the bodies), and when the last one
closed. Exits 1 if any connection stayed open or the normal request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import free_port, print_json, raise_open_files_limit, server

HEAD = b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
KINDS = {
    "silent": b"",
    "half_headers": HEAD,
    "half_body": HEAD + b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"query"',
}


async def hang(port: int, sent: bytes, seconds: float, started: float) -> tuple[bool, str, float]:
    """(closed by the server, first line of its answer, seconds since the attack started)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sent)
    try:
        answer = await asyncio.wait_for(reader.read(), seconds)
    except TimeoutError:
        writer.close()
        return False, "", time.monotonic() - started
    writer.close()
    first = answer.split(b"\r\n", 1)[0].decode("latin-1")
    return True, first, time.monotonic() - started


async def attack(port: int, connections: int, seconds: float) -> dict[str, object]:
    started = time.monotonic()
    per_kind = max(1, connections // len(KINDS))
    tasks = {
        name: [asyncio.ensure_future(hang(port, sent, seconds, started)) for _ in range(per_kind)]
        for name, sent in KINDS.items()
    }
    await asyncio.sleep(0.5)  # all of them are hanging now
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        normal = (await client.post("/search", json={"query": "mulch"})).status_code
    report: dict[str, object] = {"normal_request_during_attack": normal}
    last = 0.0
    for name, kind_tasks in tasks.items():
        results = await asyncio.gather(*kind_tasks)
        answers = sorted({first or "(closed, no answer)" for closed, first, _ in results if closed})
        report[name] = {"opened": len(results), "closed": sum(r[0] for r in results), "answers": answers}
        last = max([last, *(at for closed, _, at in results if closed)])
    report["last_closed_after_s"] = round(last, 2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=150)
    parser.add_argument("--header-timeout", type=float, default=2.0)
    parser.add_argument("--body-timeout", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args()
    raise_open_files_limit(args.connections * 2 + 256)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bookrag-slow-") as tmp:
        env = {
            **os.environ,
            "QDRANT_PATH": str(Path(tmp) / "qdrant"),
            "HEADER_TIMEOUT_S": str(args.header_timeout),
            "BODY_TIMEOUT_S": str(args.body_timeout),
            "RATE_LIMIT_PER_MINUTE": "0",
            "LOG_LEVEL": "WARNING",
        }
        env.pop("QDRANT_URL", None)
        argv = [str(Path(sys.executable).parent / "rag-api"), "--host", "127.0.0.1", "--port", str(port)]
        with server("rag-api", argv, env, port, "/health"):
            report = asyncio.run(attack(port, args.connections, args.max_seconds))
    report["settings"] = {"HEADER_TIMEOUT_S": args.header_timeout, "BODY_TIMEOUT_S": args.body_timeout}
    print_json(report)
    kinds = [report[name] for name in KINDS]
    all_closed = all(isinstance(k, dict) and k["closed"] == k["opened"] for k in kinds)
    sys.exit(0 if all_closed and report["normal_request_during_attack"] == 200 else 1)


if __name__ == "__main__":
    main()
