"""Time to the first events and streaming cost: bookrag's `/ask` next to the plain ways of serving the same chain,
and next to bookrag's other streaming routes.

    .venv/bin/python -m bench.stream_bench                       # d2l (~5,000 chunks), all targets: a few minutes
    .venv/bin/python -m bench.stream_bench --out bench/results/stream.json
    .venv/bin/python -m bench.stream_bench --targets bookrag,bookrag-openai,bookrag-aisdk   # bookrag's 3 routes
    .venv/bin/python -m bench.stream_bench --targets bookrag --bookrag-src ../old-checkout   # that code's server

Each target is a server process of its own on 127.0.0.1, over the same cached store (`bench.book_store`), calling
the same fake OpenAI-compatible model server (`bench.fake_model_server`, another process, so its CPU is not counted):

- `bookrag`: the product (`rag-api`), `POST /ask` with `"stream": true`.
- `bookrag-openai` (opt-in): the same `rag-api` process, `POST /v1/chat/completions` with `"stream": true`; its
  data-only chunks are told apart by their JSON: a `delta.content` chunk is a token event, the first chunk (which
  carries `sources`) the sources event.
- `bookrag-aisdk` (opt-in): the same `rag-api` process, `POST /api/chat` (the AI SDK's UI message stream): a
  `text-delta` chunk is a token event, the first `source-document` chunk the sources event (none when no passage
  is found).
- `reference`: `bench.reference_app`, `chain.astream_events(version="v2")` mapped to `EventSourceResponse`.
- `langserve`: the same process with LangServe's `add_routes`, `POST /langserve/stream` (only when it imports).

Per target, in this order:
1. warm-up: a few streams (the model, the store and the code paths are hot afterwards);
2. first events: request -> `sources` event and -> first `token` event, p50/p95, at each `--clients` level, the
   model answering instantly; every question is new to the server (no cached query embedding);
3. CPU per token: `--cpu-streams` answers of `--cpu-tokens` tokens each, `--cpu-concurrency` at a time, the model
   instant; the server's CPU seconds (/proc/PID/stat, all threads) over the run divided by the model tokens streamed;
   the questions repeat (their embedding is cached), so the figure is the cost of streaming, not of embedding;
   tokens that arrive together in one read may be handled (and sent) together, so this is the cheapest case;
4. concurrent streams: the model paced at `--paced-delay-ms` per token; `--steps` streams at once, step after step,
   until the p95 delay between consecutive token events is over 100 ms (or a stream fails): the last step under
   it is the number of streams one worker sustains. Each step also gives the server's CPU ms per model token
   delivered (its CPU seconds over the step / (streams x `--paced-tokens`)): the cost when tokens arrive one a read.

The load generator shares the machine with the server: on 2 cores read the figures as this machine's, not as
absolutes. The load average is recorded at the start and end of every target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common
from bench.book_store import DEFAULT_BOOK, DEFAULT_SIZE, BookStore, ensure_book_store

TEMPLATES = [
    "What does the book say about {}?", "Explain {}.", "How does {} work?", "Why does {} matter?",
    "Give an example of {}.", "What should I know about {}?", "Summarise {}.",
]  # fmt: skip


def questions_for(store: BookStore, warm: int = 8) -> tuple[list[str], list[str]]:
    """Questions about the book's own headings: `warm` to repeat (their embedding gets cached) and the rest, each
    new to the server, for the first-event runs."""
    headings = list(store.headings) or ["the book"]
    asked = [t.format(h) for t in TEMPLATES for h in headings]
    return asked[:warm], asked[warm:]


def take(questions: Sequence[str], count: int, start: int = 0) -> list[str]:
    """`count` distinct questions from `start` on (numbered variants once the list runs out)."""
    out = []
    for i in range(start, start + count):
        base = questions[i % len(questions)]
        out.append(base if i < len(questions) else f"{base} (variant {i // len(questions)})")
    return out


@dataclass(frozen=True)
class Target:
    """One streaming route: the server process that serves it ("bookrag": `rag-api`, "reference":
    `bench.reference_app`), its path, and how the client names its events (`data_names`, for data-only
    streams: bytes found in an event's data, and the name it then gets; see `common.stream_post`)."""

    name: str
    server: str
    path: str
    token_event: str
    sources_event: str | None
    data_names: tuple[tuple[bytes, str], ...] = ()

    def body(self, question: str) -> dict[str, Any]:
        if self.name == "langserve":
            return {"input": question}
        if self.name == "bookrag":
            return {"question": question, "stream": True}
        if self.name == "bookrag-openai":
            return {"model": "book", "stream": True, "messages": [{"role": "user", "content": question}]}
        if self.name == "bookrag-aisdk":  # the body DefaultChatTransport sends
            message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": question}]}
            return {"id": "bench", "messages": [message], "trigger": "submit-message"}
        return {"question": question}


BOOKRAG = Target("bookrag", "bookrag", "/ask", "token", "sources")
# Compact JSON, so these bytes occur only as keys (a quote inside text is escaped).
BOOKRAG_OPENAI = Target(
    "bookrag-openai", "bookrag", "/v1/chat/completions", "token", "sources",
    ((b'"delta":{"content":', "token"), (b'"sources":[', "sources")),
)  # fmt: skip
BOOKRAG_AISDK = Target(
    "bookrag-aisdk", "bookrag", "/api/chat", "token", "sources",
    ((b'"type":"text-delta"', "token"), (b'"type":"source-document"', "sources")),
)  # fmt: skip
REFERENCE = Target("reference", "reference", "/ask", "token", "sources")
LANGSERVE = Target("langserve", "reference", "/langserve/stream", "data", None)
TARGETS = (BOOKRAG, BOOKRAG_OPENAI, BOOKRAG_AISDK, REFERENCE, LANGSERVE)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None or seconds != seconds else round(seconds * 1000, 1)


def send(
    server: common.Server, target: Target, bodies: Sequence[dict[str, Any]], concurrency: int
) -> list[common.Stream]:
    """Stream every body to `target`, `concurrency` at a time, in a fresh event loop."""
    with common.new_event_loop_runner() as runner:
        result: list[common.Stream] = runner.run(
            common.run_clients(server.port, target.path, bodies, concurrency, data_names=target.data_names)
        )
    return result


def ok_streams(streams: Sequence[common.Stream], target: Target) -> list[common.Stream]:
    return [s for s in streams if s.error is None and s.status == 200 and s.count(target.token_event) > 0]


def first_events(
    server: common.Server,
    target: Target,
    clients: Sequence[int],
    per_client: int,
    questions: Sequence[str],
    min_requests: int = 20,
) -> list[dict[str, Any]]:
    rows = []
    used = 0
    for level in clients:
        count = max(level * per_client, min_requests)
        bodies = [target.body(q) for q in take(questions, count, used)]
        used += count
        streams = send(server, target, bodies, level)
        good = ok_streams(streams, target)
        token = [t for s in good if (t := s.first(target.token_event)) is not None]
        sources = [t for s in good if target.sources_event and (t := s.first(target.sources_event)) is not None]
        rows.append(
            {
                "clients": level,
                "requests": len(bodies),
                "failed": len(bodies) - len(good),
                "sources_p50_ms": ms(common.percentile(sources, 50)) if sources else None,
                "sources_p95_ms": ms(common.percentile(sources, 95)) if sources else None,
                "token_p50_ms": ms(common.percentile(token, 50)),
                "token_p95_ms": ms(common.percentile(token, 95)),
            }
        )
    return rows


def interleaved_first_events(
    servers: dict[str, common.Server],
    targets: Sequence[Target],
    clients: Sequence[int],
    per_client: int,
    rounds: int,
    questions: Sequence[str],
    min_requests: int = 20,
) -> dict[str, Any]:
    """Time to the first token of every target at each `clients` level, the targets taking turns: `rounds`
    batches each, a batch of one target then one of the next (the order reversed every round), each batch of
    questions new to both servers (the same questions for each target). On a shared machine the load changes by
    the minute; turns put each target under the same load, so their difference and ratio are what to read."""
    rows: list[dict[str, Any]] = []
    used = 0
    for level in clients:
        count = max(level * per_client, min_requests)
        token: dict[str, list[float]] = {t.name: [] for t in targets}
        sources: dict[str, list[float]] = {t.name: [] for t in targets}
        failed = dict.fromkeys(token, 0)
        loads = [common.load_average()]
        for round_index in range(rounds):
            batch = take(questions, count, used)
            used += count
            order = targets if round_index % 2 == 0 else list(reversed(targets))
            for target in order:
                streams = send(servers[target.name], target, [target.body(q) for q in batch], level)
                good = ok_streams(streams, target)
                failed[target.name] += len(streams) - len(good)
                token[target.name] += [t for s in good if (t := s.first(target.token_event)) is not None]
                if target.sources_event:
                    sources[target.name] += [t for s in good if (t := s.first(target.sources_event)) is not None]
            loads.append(common.load_average())
        row: dict[str, Any] = {"clients": level, "requests_per_target": count * rounds, "load_averages": loads}
        for name in token:
            row[name] = {
                "failed": failed[name],
                "token_p50_ms": ms(common.percentile(token[name], 50)) if token[name] else None,
                "token_p95_ms": ms(common.percentile(token[name], 95)) if token[name] else None,
                "sources_p50_ms": ms(common.percentile(sources[name], 50)) if sources[name] else None,
            }
        first, *others = [t.name for t in targets]
        for other in others:
            mine, theirs = row[first]["token_p50_ms"], row[other]["token_p50_ms"]
            if mine is not None and theirs is not None:
                row[f"{first}_minus_{other}_token_p50_ms"] = round(mine - theirs, 1)
                row[f"{first}_over_{other}_token_p50"] = round(mine / theirs, 2) if theirs else None
        rows.append(row)
        progress(f"interleaved first tokens, {level} clients: done")
    return {"rounds": rounds, "targets": [t.name for t in targets], "levels": rows}


def cpu_per_token(
    server: common.Server,
    model: common.Server,
    target: Target,
    warm: Sequence[str],
    streams_count: int,
    tokens: int,
    concurrency: int,
) -> dict[str, Any]:
    bodies = [target.body(warm[i % len(warm)]) for i in range(streams_count)]
    server_before, model_before, client_before = (
        common.cpu_seconds(server.pid),
        common.cpu_seconds(model.pid),
        time.process_time(),
    )
    started = time.perf_counter()
    streams = send(server, target, bodies, concurrency)
    wall = time.perf_counter() - started
    server_cpu = common.cpu_seconds(server.pid) - server_before
    good = ok_streams(streams, target)
    events = sum(s.count(target.token_event) for s in good)
    model_tokens = len(good) * tokens
    return {
        "streams": len(bodies),
        "failed": len(bodies) - len(good),
        "model_tokens": model_tokens,
        "token_events": events,
        "server_cpu_s": round(server_cpu, 3),
        "wall_s": round(wall, 2),
        "cpu_ms_per_model_token": round(server_cpu / model_tokens * 1000, 4) if model_tokens else None,
        "cpu_ms_per_token_event": round(server_cpu / events * 1000, 4) if events else None,
        "model_server_cpu_s": round(common.cpu_seconds(model.pid) - model_before, 3),
        "client_cpu_s": round(time.process_time() - client_before, 3),
    }


def max_streams(
    server: common.Server,
    target: Target,
    warm: Sequence[str],
    steps: Sequence[int],
    limit_ms: float,
    deadline: float,
    tokens: int,
) -> dict[str, Any]:
    """Paced streams (`tokens` model tokens each), more at each step, until the p95 gap is over `limit_ms`."""
    rows = []
    sustained = 0
    for level in steps:
        if time.monotonic() > deadline:
            rows.append({"streams": level, "skipped": "time budget spent"})
            break
        bodies = [target.body(warm[i % len(warm)]) for i in range(level)]
        cpu_before, started = common.cpu_seconds(server.pid), time.perf_counter()
        streams = send(server, target, bodies, level)
        wall = time.perf_counter() - started
        server_cpu = common.cpu_seconds(server.pid) - cpu_before
        good = ok_streams(streams, target)
        gaps = [g for s in good for g in s.gaps(target.token_event)]
        p95 = common.percentile(gaps, 95)
        passed = len(good) == level and p95 * 1000 < limit_ms
        model_tokens = len(good) * tokens
        rows.append(
            {
                "streams": level,
                "failed": level - len(good),
                "gap_p50_ms": ms(common.percentile(gaps, 50)),
                "gap_p95_ms": ms(p95),
                "server_cpu_share": round(server_cpu / wall, 2),
                "model_tokens": model_tokens,
                "cpu_ms_per_model_token": round(server_cpu / model_tokens * 1000, 4) if model_tokens else None,
                "passed": passed,
            }
        )
        if not passed:
            break
        sustained = level
    return {"sustained": sustained, "limit_ms": limit_ms, "steps": rows}


def astream_floor(model: common.Server, streams_count: int, tokens: int, concurrency: int) -> dict[str, Any]:
    """CPU per token of `ChatOpenAI.astream` alone, in this process: what a route that calls it (the reference,
    LangServe) pays to receive tokens; bookrag reads the OpenAI stream itself (`chains/model_stream.py`)."""
    import asyncio

    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model="fake-model", base_url=f"{model.base_url}/v1", api_key="not-needed", streaming=True, stream_usage=True
    )  # type: ignore[call-arg]

    async def all_streams() -> int:
        slots = asyncio.Semaphore(concurrency)

        async def one(i: int) -> int:
            async with slots:
                return len([chunk async for chunk in chat.astream(f"question {i}") if chunk.content])

        return sum(await asyncio.gather(*(one(i) for i in range(streams_count))))

    with common.new_event_loop_runner() as runner:
        runner.run(all_streams())  # warm-up: client pool, imports
        before = time.process_time()
        received = runner.run(all_streams())
        cpu = time.process_time() - before
    return {"model_tokens": received, "cpu_s": round(cpu, 3), "cpu_ms_per_model_token": round(cpu / received * 1000, 4)}


def progress(message: str) -> None:
    print(f"[stream_bench {time.strftime('%H:%M:%S')}] {message} (load {common.load_average()})", file=sys.stderr)


def server_argv(kind: str, port: int, with_langserve: bool, bookrag_src: Path | None = None) -> list[str]:
    if kind == "bookrag" and bookrag_src is not None:  # that checkout's code, on `bookrag_env`'s PYTHONPATH
        return [sys.executable, "-m", "rag_api.main", "--host", "127.0.0.1", "--port", str(port)]
    if kind == "bookrag":
        return [str(Path(sys.executable).parent / "rag-api"), "--host", "127.0.0.1", "--port", str(port)]
    argv = [sys.executable, "-m", "bench.reference_app", "--port", str(port)]
    return argv + (["--langserve"] if with_langserve else [])


def bookrag_env(env: dict[str, str], bookrag_src: Path | None) -> dict[str, str]:
    """The bookrag server's environment: with `bookrag_src`, that checkout's `rag_api` and `chains` come first on
    the path (ahead of this checkout's editable install); the installed packages stay this environment's."""
    if bookrag_src is None:
        return env
    source = bookrag_src.resolve()
    return {**env, "PYTHONPATH": os.pathsep.join([str(source / "src"), str(source)])}


def server_env(store: BookStore, model_url: str, qdrant_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        **store.env(),
        "QDRANT_PATH": str(qdrant_path),
        "CHAT_MODEL": "fake-model",
        "OPENAI_BASE_URL": f"{model_url}/v1",
        "OPENAI_API_KEY": "not-needed",
        "RATE_LIMIT_PER_MINUTE": "0",
        "MODEL_MAX_CONCURRENCY": "10000",
        "MODEL_QUEUE_TIMEOUT_S": "60",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("QDRANT_URL", None)
    return env


def bench_target(
    target: Target,
    server: common.Server,
    store: BookStore,
    model: common.Server,
    args: argparse.Namespace,
    slot: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """Every measurement of one route of a running server; `slot` (this route's index, the routes the server
    process has) picks the route's share of the new questions."""
    result: dict[str, Any] = {"target": target.name, "load_average_start": common.load_average()}
    warm, fresh = questions_for(store)
    common.configure_fake_model(model, args.first_tokens, 0)
    send(server, target, [target.body(q) for q in warm], 1)
    # Each route gets its own new questions: the routes of one process share its embedding cache.
    index, routes = slot
    if "first" in args.phases:
        progress(f"{target.name}: first events")
        result["first_events"] = first_events(
            server, target, args.clients, args.per_client, fresh[index::routes], args.min_requests
        )
    if "cpu" in args.phases:
        common.configure_fake_model(model, args.cpu_tokens, 0)
        progress(f"{target.name}: CPU per token")
        result["cpu"] = cpu_per_token(
            server, model, target, warm, args.cpu_streams, args.cpu_tokens, args.cpu_concurrency
        )
    if "streams" in args.phases:
        common.configure_fake_model(model, args.paced_tokens, args.paced_delay_ms)
        progress(f"{target.name}: concurrent streams")
        deadline = time.monotonic() + args.step_budget_s
        result["concurrency"] = max_streams(
            server, target, warm, args.steps, args.gap_limit_ms, deadline, args.paced_tokens
        )
    result["rss_mb"] = round(common.rss_mb(server.pid), 1)
    result["load_average_end"] = common.load_average()
    return result


def bench_servers(
    targets: Sequence[Target], store: BookStore, args: argparse.Namespace, scratch: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None, dict[str, Any] | None]:
    """Start the fake model server and the servers `targets` need all at once (bookrag's `rag-api`; the reference
    app, with LangServe when asked for), then measure each route in turn while the other server idles. The
    reference app gets a copy of the store: the embedded store opens in one process at a time."""
    model_port = common.free_port()
    model_argv = [sys.executable, "-m", "bench.fake_model_server", "--port", str(model_port)]
    model_argv += ["--tokens", str(args.first_tokens), "--delay-ms", "0"]
    specs = [common.ServerSpec("fake model server", model_argv, {**os.environ}, model_port, "/v1/models")]
    model_url = f"http://127.0.0.1:{model_port}"
    kinds = {kind: [t for t in targets if t.server == kind] for kind in ("bookrag", "reference")}
    for kind, routes in kinds.items():
        if not routes:
            continue
        qdrant_path = store.qdrant_path
        if kind == "reference":
            qdrant_path = scratch / "reference-store"
            shutil.copytree(store.qdrant_path, qdrant_path)
        port = common.free_port()
        env = server_env(store, model_url, qdrant_path)
        if kind == "bookrag":
            env = bookrag_env(env, args.bookrag_src)
        argv = server_argv(kind, port, LANGSERVE in routes, args.bookrag_src)
        specs.append(common.ServerSpec(kind, argv, env, port, "/ready"))
    progress("starting the servers: " + ", ".join(spec.name for spec in specs))
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    floor = interleaved = None
    with common.servers(specs) as running:
        start_s = round(time.monotonic() - started, 1)
        model, by_kind = running[0], {server.name: server for server in running[1:]}
        if "ttft" in args.phases:
            common.configure_fake_model(model, args.first_tokens, 0)
            warm, fresh = questions_for(store)
            for target in targets:
                send(by_kind[target.server], target, [target.body(q) for q in warm], 1)
            progress("interleaved first tokens: " + ", ".join(t.name for t in targets))
            servers_of = {t.name: by_kind[t.server] for t in targets}
            # questions past those the per-target first-event runs use, so that every one is new to the server
            interleaved = interleaved_first_events(
                servers_of, targets, args.clients, args.per_client, args.rounds, fresh[len(fresh) // 2 :],
                args.min_requests,
            )  # fmt: skip
        for kind, routes in kinds.items():
            for index, target in enumerate(routes):
                if not args.phases & {"first", "cpu", "streams"}:
                    break
                results[target.name] = {
                    **bench_target(target, by_kind[kind], store, model, args, (index, len(routes))),
                    "servers_start_s": start_s,
                }
        if not args.no_floor and "cpu" in args.phases:
            common.configure_fake_model(model, args.cpu_tokens, 0)
            progress("ChatOpenAI.astream floor")
            floor = astream_floor(model, args.cpu_streams, args.cpu_tokens, args.cpu_concurrency)
    return results, floor, interleaved


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ours = results.get("bookrag")
    out: dict[str, Any] = {}
    if ours is None:
        return out
    for name, other in results.items():
        if name == "bookrag" or "cpu" not in other:
            continue
        mine, theirs = ours["cpu"]["cpu_ms_per_model_token"], other["cpu"]["cpu_ms_per_model_token"]
        streams_mine = ours.get("concurrency", {}).get("sustained", 0)
        streams_theirs = other.get("concurrency", {}).get("sustained", 0)
        out[name] = {
            "cpu_per_token_bookrag_over_other": round(mine / theirs, 3) if mine and theirs else None,
            "sustained_streams_bookrag_over_other": round(streams_mine / streams_theirs, 2) if streams_theirs else None,
        }
    return out


def interleaved_markdown(interleaved: dict[str, Any]) -> list[str]:
    names = interleaved["targets"]
    first, *others = names
    head = " | ".join(f"{n} first token p50 / p95 ms (sources p50)" for n in names)
    lines = [
        "",
        f"First tokens, the targets taking turns ({interleaved['rounds']} rounds a level), the model instant:",
        "",
        f"| clients | requests a target | {head} | "
        + " | ".join(f"{first} - {o} p50 ms | {first} / {o} p50" for o in others)
        + " | failed | load average during |",
        "|---" * (2 + len(names) + 2 * len(others) + 2) + "|",
    ]
    for row in interleaved["levels"]:
        cells = [f"{row[n]['token_p50_ms']} / {row[n]['token_p95_ms']} ({row[n]['sources_p50_ms']})" for n in names] + [
            f"{row.get(f'{first}_minus_{o}_token_p50_ms')} | {row.get(f'{first}_over_{o}_token_p50')}" for o in others
        ]
        failed = ", ".join(f"{row[n]['failed']}" for n in names)
        loads = row["load_averages"]
        lines.append(
            f"| {row['clients']} | {row['requests_per_target']} | " + " | ".join(cells)
            + f" | {failed} | {loads[0].split()[0]} .. {max(float(x.split()[0]) for x in loads):.2f} |"
        )  # fmt: skip
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = [common.machine_markdown(report["machine"]), ""]
    if "interleaved" in report:
        lines += interleaved_markdown(report["interleaved"])
    lines.append(
        f"Book: `{report['book']}`, {report['chunks']} chunks in the embedded store "
        f"({report['real_chunks']} real, the rest padding)."
    )
    lines += [
        "",
        "| target | clients | sources p50 / p95 ms | first token p50 / p95 ms | failed |",
        "|---|---|---|---|---|",
    ]
    for name, res in report["targets"].items():
        if "error" in res:
            lines.append(f"| {name} | - | {res['error']} | | |")
            continue
        for row in res.get("first_events", []):
            src = f"{row['sources_p50_ms']} / {row['sources_p95_ms']}" if row["sources_p50_ms"] is not None else "n/a"
            tok = f"{row['token_p50_ms']} / {row['token_p95_ms']}"
            lines.append(f"| {name} | {row['clients']} | {src} | {tok} | {row['failed']}/{row['requests']} |")
    lines += [
        "",
        "Instant model. A token event is what carries answer text: `/ask`'s `token` event, an OpenAI `delta.content`",
        "chunk, an AI SDK `text-delta` chunk, a LangServe `data` event (the server may put several tokens in one).",
        "",
        "| target | CPU ms / model token | CPU ms / token event | token events | sustained streams (p95 gap < "
        f"{report['gap_limit_ms']:g} ms) | load avg start -> end |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in report["targets"].items():
        if "error" in res or "cpu" not in res:
            continue
        cpu, conc = res["cpu"], res.get("concurrency", {"sustained": "-"})
        lines.append(
            f"| {name} | {cpu['cpu_ms_per_model_token']} | {cpu['cpu_ms_per_token_event']} | {cpu['token_events']} "
            f"| {conc['sustained']} | {res['load_average_start']} -> {res['load_average_end']} |"
        )
    if "floor" in report:
        lines.append(f"| `ChatOpenAI.astream` alone | {report['floor']['cpu_ms_per_model_token']} | | | | |")
    lines.append("")
    for name, ratio in report["ratios"].items():
        lines.append(f"- bookrag / {name}: CPU per token {ratio['cpu_per_token_bookrag_over_other']}, "
                     f"sustained streams {ratio['sustained_streams_bookrag_over_other']}x")  # fmt: skip
    lines += [
        "",
        "Concurrency steps, the model paced (one token a network read): server CPU ms per model token delivered =",
        "server CPU seconds over the step / (streams x paced tokens).",
        "",
        "| target | streams | token gap p50 / p95 ms | server CPU share | server CPU ms / model token | failed |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in report["targets"].items():
        if "error" in res:
            continue
        for s in res.get("concurrency", {}).get("steps", []):
            if "skipped" in s:
                lines.append(f"| {name} | {s['streams']} | {s['skipped']} | | | |")
                continue
            over = "" if s["passed"] else " (over)"
            lines.append(
                f"| {name} | {s['streams']} | {s['gap_p50_ms']} / {s['gap_p95_ms']}{over} | {s['server_cpu_share']} "
                f"| {s['cpu_ms_per_model_token']} | {s['failed']}/{s['streams']} |"
            )
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None, embeddings: Any = None) -> dict[str, Any]:
    """Run the benchmark (`embeddings`: a loaded local model to ingest the book with, instead of `rag-ingest`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--book", type=Path, default=DEFAULT_BOOK, help="a folder of chapters, ingested once")
    parser.add_argument("--pad-to", type=int, default=DEFAULT_SIZE, help="chunks in the store, padding included")
    parser.add_argument(
        "--targets",
        default="bookrag,reference,langserve",
        help="comma-separated, of: " + ", ".join(t.name for t in TARGETS) + " (the bookrag-* routes share one rag-api)",
    )
    parser.add_argument("--clients", type=int_list, default=[1, 10, 100], help="concurrent clients per level")
    parser.add_argument("--per-client", type=int, default=3, help="requests per client")
    parser.add_argument("--rounds", type=int, default=3, help="turns each target takes per level (phase ttft)")
    parser.add_argument("--min-requests", type=int, default=20, help="at least this many requests a level")
    parser.add_argument("--first-tokens", type=int, default=20, help="tokens an answer in the first-event runs")
    parser.add_argument("--cpu-streams", type=int, default=60)
    parser.add_argument("--cpu-tokens", type=int, default=200)
    parser.add_argument("--cpu-concurrency", type=int, default=10)
    parser.add_argument("--paced-tokens", type=int, default=60)
    parser.add_argument("--paced-delay-ms", type=float, default=20.0, help="the model's pause between tokens")
    parser.add_argument("--steps", type=int_list, default=[25, 50, 100, 200, 300, 400, 600, 800])
    parser.add_argument("--gap-limit-ms", type=float, default=100.0)
    parser.add_argument("--step-budget-s", type=float, default=120.0, help="time for the concurrency steps a target")
    parser.add_argument("--no-floor", action="store_true", help="skip the ChatOpenAI.astream floor")
    parser.add_argument(
        "--phases",
        type=lambda text: {p.strip() for p in text.split(",") if p.strip()},
        default={"first", "cpu", "streams"},
        help="which measurements to run, of: first (first events), cpu (CPU per token, and the floor), streams "
        "(concurrent paced streams), ttft (first tokens, the targets taking turns at each level: opt-in)",
    )
    parser.add_argument(
        "--bookrag-src",
        type=Path,
        help="serve the bookrag-* targets from this checkout's code (e.g. a worktree of an older commit), "
        "with this environment's packages: a before/after comparison on the same load",
    )
    parser.add_argument("--cache-dir", type=Path, default=common.CACHE_DIR, help="where the book's store is kept")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)

    common.raise_open_files_limit()
    info = common.machine()
    progress("ingesting the book (cached)")
    store = ensure_book_store(args.book, args.pad_to, args.cache_dir, embeddings=embeddings)
    targets = {t.name: t for t in TARGETS}
    names = [name.strip() for name in args.targets.split(",") if name.strip()]
    unknown = sorted(set(names) - set(targets))
    if unknown:
        parser.error(f"unknown --targets {', '.join(unknown)}: choose from {', '.join(targets)}")
    chosen = [targets[name] for name in dict.fromkeys(names)]
    results: dict[str, dict[str, Any]] = {}
    if LANGSERVE in chosen:
        from bench.reference_app import langserve_error

        reason = langserve_error()
        if reason is not None:
            results[LANGSERVE.name] = {"error": f"langserve does not import: {reason}"}
            chosen.remove(LANGSERVE)
    with tempfile.TemporaryDirectory(prefix="bookrag-stream-bench-") as scratch:
        measured, floor, interleaved = bench_servers(chosen, store, args, Path(scratch))
    results.update(measured)
    report: dict[str, Any] = {
        "machine": info,
        "book": str(store.book),
        "chunks": store.chunks,
        "real_chunks": store.real_chunks,
        "gap_limit_ms": args.gap_limit_ms,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": results,
        "ratios": ratios(results),
        "load_average_end": common.load_average(),
    }
    if floor is not None:
        report["floor"] = floor
    if interleaved is not None:
        report["interleaved"] = interleaved
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str) if args.json else markdown(report))
    return report


if __name__ == "__main__":
    main()
