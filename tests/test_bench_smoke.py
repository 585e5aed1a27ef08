"""The benchmark harnesses in bench/ run end to end on tiny sizes.

No figure is checked here (speed is measured by `make bench` and written to docs/benchmarks.md); what is checked
is that every harness runs, that every stream it sends ends well, and that its report holds each figure.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bench import ingest_bench, retrieval_bench, stream_bench
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
    targets = "bookrag,reference" if LANGSERVE_MISSING else "bookrag,reference,langserve"
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
        assert result["cpu"]["failed"] == 0 and result["cpu"]["model_tokens"] == 2 * 5
        assert result["concurrency"]["steps"][0]["failed"] == 0
    bookrag_rows = report["targets"]["bookrag"]["first_events"]
    assert all(row["sources_p50_ms"] is not None for row in bookrag_rows)
    assert "reference" in report["ratios"]
    assert report["floor"]["model_tokens"] > 0


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
