"""The benchmark harnesses in bench/ run end to end on tiny sizes.

No figure is checked here (speed is measured by `make bench` and written to docs/benchmarks.md); what is checked
is that every harness runs, that every stream it sends ends well, and that its report holds each figure.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from bench import common, ingest_bench, retrieval_bench, stream_bench
from bench.reference_app import langserve_error
from chains.embeddings import LocalEmbeddings

pytestmark = pytest.mark.integration

LANGSERVE_MISSING = importlib.util.find_spec("langserve") is None
LANGSERVE_REASON = "langserve is a bench-only package: pip install -e '.[bench]' (make bench does)"


@pytest.fixture
def tiny_book(tmp_path: Path) -> Path:
    book = tmp_path / "tiny-book"
    book.mkdir()
    for name, text in stream_bench_book().items():
        (book / name).write_text(text, encoding="utf-8")
    return book


def stream_bench_book() -> dict[str, str]:
    from bench.load_test import BOOK

    return BOOK


def test_stream_bench_measures_each_route_end_to_end(
    tiny_book: Path, tmp_path: Path, embeddings: LocalEmbeddings
) -> None:
    bookrag = "bookrag,bookrag-openai,bookrag-aisdk"  # three routes of one rag-api process
    targets = f"{bookrag},reference" if LANGSERVE_MISSING else f"{bookrag},reference,langserve"
    report = stream_bench.main(
        [
            "--book", str(tiny_book), "--cache-dir", str(tmp_path / "cache"), "--pad-to", "40",
            "--targets", targets, "--clients", "1,2", "--per-client", "1", "--min-requests", "2",
            "--first-tokens", "3", "--cpu-streams", "2", "--cpu-tokens", "5", "--cpu-concurrency", "2",
            "--paced-tokens", "3", "--paced-delay-ms", "1", "--steps", "2", "--step-budget-s", "20", "--json",
        ],
        embeddings=embeddings,
    )  # fmt: skip
    assert report["chunks"] == 40 and 0 < report["real_chunks"] < 40
    for name in targets.split(","):
        result = report["targets"][name]
        assert [row["clients"] for row in result["first_events"]] == [1, 2]
        assert all(row["failed"] == 0 for row in result["first_events"]), result["first_events"]
        assert all(row["token_p50_ms"] is not None for row in result["first_events"]), name
        assert result["cpu"]["failed"] == 0 and result["cpu"]["model_tokens"] == 2 * 5
        assert result["cpu"]["token_events"] > 0 and result["cpu"]["cpu_ms_per_model_token"] is not None
        step = result["concurrency"]["steps"][0]
        assert step["failed"] == 0 and step["model_tokens"] == 2 * 3
        assert step["cpu_ms_per_model_token"] is not None
    for name in bookrag.split(","):
        rows = report["targets"][name]["first_events"]
        assert all(row["sources_p50_ms"] is not None for row in rows), name
    assert {"reference", "bookrag-openai", "bookrag-aisdk"} <= set(report["ratios"])
    assert report["floor"]["model_tokens"] > 0
    table = stream_bench.markdown(report)
    assert "server CPU ms / model token" in table
    assert all(f"| {name} |" in table for name in targets.split(","))


def test_stream_bench_first_tokens_taking_turns(tiny_book: Path, tmp_path: Path, embeddings: LocalEmbeddings) -> None:
    report = stream_bench.main(
        [
            "--book", str(tiny_book), "--cache-dir", str(tmp_path / "cache"), "--pad-to", "40",
            "--targets", "bookrag,reference", "--phases", "ttft", "--clients", "1,2", "--per-client", "1",
            "--min-requests", "2", "--rounds", "2", "--first-tokens", "3", "--json",
        ],
        embeddings=embeddings,
    )  # fmt: skip
    interleaved = report["interleaved"]
    assert interleaved["targets"] == ["bookrag", "reference"] and interleaved["rounds"] == 2
    assert [row["clients"] for row in interleaved["levels"]] == [1, 2]
    for row in interleaved["levels"]:
        assert row["requests_per_target"] == 2 * 2 and len(row["load_averages"]) == 3
        assert row["bookrag"]["failed"] == row["reference"]["failed"] == 0
        assert row["bookrag"]["token_p50_ms"] is not None and row["reference"]["token_p50_ms"] is not None
        assert row["bookrag_minus_reference_token_p50_ms"] == round(
            row["bookrag"]["token_p50_ms"] - row["reference"]["token_p50_ms"], 1
        )
    assert report["targets"] == {}  # only the phase asked for
    assert "bookrag - reference p50 ms" in stream_bench.markdown(report)


def test_data_only_events_are_named_by_their_json() -> None:
    openai, aisdk = stream_bench.BOOKRAG_OPENAI.data_names, stream_bench.BOOKRAG_AISDK.data_names
    assert common.event_name(b'data: {"choices":[{"delta":{"content":"Hi"}}]}', openai) == "token"
    role = b'data: {"choices":[{"delta":{"role":"assistant","content":""}}],"sources":[]}'
    assert common.event_name(role, openai) == "sources"
    assert common.event_name(b'data: {"type":"source-document","sourceId":"a"}', aisdk) == "sources"
    # Inside text the quotes are escaped: a status chunk that mentions a text-delta is no token.
    status = b'data: {"type":"data-status","data":{"stage":"\\"type\\":\\"text-delta\\""}}'
    assert common.event_name(status, aisdk) == "message"
    assert common.event_name(b"data: [DONE]", aisdk) == "message"
    assert common.event_name(b"event: token\ndata: {}") == "token"
    assert common.event_name(b": ping") == ""


def test_bookrag_src_serves_that_checkouts_code(tmp_path: Path) -> None:
    argv = stream_bench.server_argv("bookrag", 8123, False, tmp_path)
    assert argv[1:3] == ["-m", "rag_api.main"] and argv[-2:] == ["--port", "8123"]
    env = stream_bench.bookrag_env({"PATH": "/bin"}, tmp_path)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path / "src"), str(tmp_path)]
    assert stream_bench.server_argv("bookrag", 8123, False)[0].endswith("rag-api")
    assert stream_bench.bookrag_env({"PATH": "/bin"}, None) == {"PATH": "/bin"}


@pytest.mark.skipif(LANGSERVE_MISSING, reason=LANGSERVE_REASON)
def test_langserve_imports_with_this_projects_langchain_core_and_sse_starlette() -> None:
    assert langserve_error() is None


def test_retrieval_bench_measures_each_store_size(tmp_path: Path, embeddings: LocalEmbeddings) -> None:
    report = retrieval_bench.main(
        ["--sizes", "50,120", "--queries", "3", "--cache-dir", str(tmp_path), "--json"], embeddings=embeddings
    )
    assert [row["chunks"] for row in report["sizes"]] == [50, 120]
    assert report["sizes"][0]["written_s"] is not None
    argv = ["--sizes", "50", "--queries", "2", "--cache-dir", str(tmp_path), "--json"]
    again = retrieval_bench.main(argv, embeddings)
    assert again["sizes"][0]["written_s"] is None  # the cached store is reused


def test_ingest_bench_runs_both_ways(tiny_book: Path, tmp_path: Path, embeddings: LocalEmbeddings) -> None:
    ours = ingest_bench.bookrag_runs(tiny_book, tmp_path / "ours", embeddings)
    plain = ingest_bench.langchain_runs(tiny_book, tmp_path / "plain", embeddings)
    assert ours["chunks"] > 0 and ours["points_after_two"] == ours["chunks"]
    assert plain["points_after_two"] == 2 * plain["chunks"]
