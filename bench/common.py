"""What the benchmarks share: the machine description, percentiles, a process's CPU time, servers started as
bounded subprocesses on 127.0.0.1, and a lean streaming client.

The client is written on asyncio streams rather than httpx on purpose: on a 2-core machine the load generator
shares the CPU with the server it measures, and a client that spends 50 µs per event would be measured instead.
It sends one HTTP/1.1 request per connection, decodes the chunked body and splits it into server-sent events,
noting when each event arrived. An event's arrival time is that of the read that completed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from chains.embeddings import LocalEmbeddings, packaged_model_path, shipped_layout
from chains.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("BENCH_CACHE_DIR", ROOT / ".bench-cache"))
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LIBRARIES = (
    "langchain-core",
    "langchain-openai",
    "langchain-qdrant",
    "qdrant-client",
    "fastapi",
    "starlette",
    "sse-starlette",
    "uvicorn",
    "openai",
    "torch",
    "sentence-transformers",
    "langserve",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile (NaN for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def version_of(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """The machine and software the figures come from."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gb = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = int(line.split()[1]) / 1024 / 1024
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(ram_gb, 1),
        "python": platform.python_version(),
        "os": platform.platform(),
        "load_average": load_average(),
        "libraries": {name: version_of(name) for name in LIBRARIES},
    }


def machine_markdown(info: dict[str, Any]) -> str:
    libraries = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())
    return (
        f"{info['date_utc']} UTC; {info['nproc']} cores ({info['cpu']}), {info['ram_gb']} GB RAM, "
        f"Python {info['python']}, {info['os']}; load average at start {info['load_average']}.\n"
        f"Libraries: {libraries}."
    )


def report_books(results: dict[str, dict[str, str]], column: str, json_path: Path | None = None) -> None:
    """Print per-book rows (`results[book][row] = figures`) as a Markdown table for the docs, and write them as
    JSON to `json_path` when given (bench/results/)."""
    print(f"| book | {column} | hit@1 / hit@5 / MRR@5 |")
    print("|---|---|---|")
    for name, rows in results.items():
        for label, figures in rows.items():
            print(f"| {name} | {label} | {figures} |")
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


# --- servers ----------------------------------------------------------------------------------------------------


@dataclass
class Server:
    """A server subprocess on 127.0.0.1."""

    name: str
    process: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _get_status(port: int, path: str) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64).decode("latin-1")
    except OSError:
        return None
    parts = head.split(" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


@dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    ready_path: str


@contextlib.contextmanager
def servers(specs: Sequence[ServerSpec], ready_seconds: float = 300) -> Iterator[list[Server]]:
    """Start every server at once (their start-ups overlap), wait until each answers GET `ready_path` with 200,
    stop them all (terminate, then kill) on the way out."""
    started: list[Server] = []
    try:
        for spec in specs:
            started.append(Server(spec.name, subprocess.Popen(spec.argv, cwd=ROOT, env=spec.env), spec.port))
        deadline = time.monotonic() + ready_seconds
        for spec, running in zip(specs, started, strict=True):
            while _get_status(spec.port, spec.ready_path) != 200:
                if running.process.poll() is not None:
                    raise RuntimeError(f"{spec.name} exited with {running.process.returncode} before it was ready")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{spec.name} was not ready within {ready_seconds} s")
                time.sleep(0.2)
        yield started
    finally:
        for running in started:
            running.process.terminate()
        for running in started:
            try:
                running.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait(timeout=15)


@contextlib.contextmanager
def server(name: str, argv: list[str], env: dict[str, str], port: int, ready_path: str) -> Iterator[Server]:
    """One server: see `servers`."""
    with servers([ServerSpec(name, argv, env, port, ready_path)]) as (running,):
        yield running


def fake_model_server(
    env: dict[str, str], tokens: int = 20, delay_ms: float = 0.0
) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.fake_model_server", "--port", str(port)]
    argv += ["--tokens", str(tokens), "--delay-ms", str(delay_ms)]
    return server("fake model server", argv, env, port, "/v1/models")


def configure_fake_model(model: Server, tokens: int, delay_ms: float) -> None:
    body = json.dumps({"tokens": tokens, "delay_ms": delay_ms}).encode()
    with socket.create_connection(("127.0.0.1", model.port), timeout=10) as sock:
        sock.sendall(
            b"POST /bench/config HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        reply = sock.recv(4096)
    if b" 200 " not in reply.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"the fake model server refused its configuration: {reply[:200]!r}")


# --- the streaming client ---------------------------------------------------------------------------------------


@dataclass
class Stream:
    """One streamed response: when it started, and each event's name and arrival time (perf_counter)."""

    started: float
    status: int = 0
    events: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def first(self, name: str) -> float | None:
        """Seconds from the request to the first event called `name`."""
        for event, at in self.events:
            if event == name:
                return at - self.started
        return None

    def gaps(self, name: str) -> list[float]:
        """Seconds between consecutive events called `name`."""
        times = [at for event, at in self.events if event == name]
        return [b - a for a, b in itertools.pairwise(times)]

    def count(self, name: str) -> int:
        return sum(1 for event, _ in self.events if event == name)


class _Chunked:
    """Incremental decoder of an HTTP/1.1 chunked body."""

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0  # bytes left in the current chunk, then its CRLF
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while self._buffer and not self.finished:
            if self._remaining:
                take = self._buffer[: self._remaining]
                self._buffer = self._buffer[len(take) :]
                self._remaining -= len(take)
                out += take
                continue
            if self._buffer.startswith(b"\r\n"):
                self._buffer = self._buffer[2:]
                continue
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0:
                break
            size = int(self._buffer[:line_end].split(b";", 1)[0], 16)
            self._buffer = self._buffer[line_end + 2 :]
            if size == 0:
                self.finished = True
            self._remaining = size
        return bytes(out)


DataNames = Sequence[tuple[bytes, str]]


def event_name(block: bytes, data_names: DataNames = ()) -> str:
    """The event's `event:` name; for a data-only event, the name of the first of `data_names` (bytes found in
    the event, name) that matches, else "message"; "" for a comment (a ping)."""
    for line in block.split(b"\n"):
        if line.startswith(b"event:"):
            return line[6:].strip().decode()
    if b"data:" not in block:
        return ""
    for marker, name in data_names:
        if marker in block:
            return name
    return "message"


async def stream_post(
    port: int, path: str, body: dict[str, Any], timeout_s: float = 120.0, data_names: DataNames = ()
) -> Stream:
    """POST `body` as JSON and read the server-sent events of the response until the server closes it
    (data-only events are named by `data_names`, see `event_name`)."""
    payload = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nConnection: close\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    result = Stream(time.perf_counter())
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            result.status = int(status_line.split(" ", 2)[1])
            chunked = any(h.lower().replace(" ", "") == "transfer-encoding:chunked" for h in header_lines)
            decoder = _Chunked() if chunked else None
            pending = b""
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                now = time.perf_counter()
                if decoder is not None:
                    data = decoder.feed(data)
                pending += data.replace(b"\r\n", b"\n")
                *blocks, pending = pending.split(b"\n\n")
                for block in blocks:
                    name = event_name(block, data_names)
                    if name:
                        result.events.append((name, now))
                if decoder is not None and decoder.finished:
                    break
    except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
        result.error = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return result


async def run_clients(
    port: int,
    path: str,
    bodies: Sequence[dict[str, Any]],
    concurrency: int,
    timeout_s: float = 120.0,
    data_names: DataNames = (),
) -> list[Stream]:
    """Send every body, at most `concurrency` streams open at once; results in the order of `bodies`."""
    slots = asyncio.Semaphore(concurrency)

    async def one(body: dict[str, Any]) -> Stream:
        async with slots:
            return await stream_post(port, path, body, timeout_s, data_names)

    return await asyncio.gather(*(one(b) for b in bodies))


def new_event_loop_runner() -> Any:
    """An asyncio runner on uvloop when it is installed (uvicorn[standard] brings it): a cheaper client."""
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def raise_open_files_limit(wanted: int = 8192) -> None:
    """Hundreds of concurrent streams need more file descriptors than the usual default of 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, wanted)), hard))


def bench_embeddings() -> LocalEmbeddings:
    """The product's packaged model as the quality benches run it: ONNX Runtime, EMBEDDING_QUANTIZE from the
    environment (the cached stores are keyed by it), and no query cache, so every question is embedded."""
    product = Settings(_env_file=None)  # type: ignore[call-arg]
    return LocalEmbeddings(
        packaged_model_path(product.embedding_model),
        cache_size=0,
        onnx_dir=product.embedding_onnx_dir,
        quantize=product.embedding_quantize == "int8",
        shipped=shipped_layout(product),
    )
