"""Prometheus metrics of one app, in a registry of its own (so that two apps in one process, as in the tests,
never share counters); `GET /metrics` (routes/metrics.py) exposes them.

Recorded from the places that already see each number: the request middleware (requests by route and status,
latency), and the answer route (retrieval time, model time, time to first token, tokens streamed, model usage).
Routes are labelled by their template (`/ask`), never by the raw path, so that scanners cannot blow up the
number of series; requests that match no route share one label.

With several uvicorn workers each process has its own registry and a scrape reaches one of them: scrape each
replica, or run one worker per container (docs/deployment.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Histogram

UNMATCHED_ROUTE = "<unmatched>"
# Streams last as long as the answer: the buckets reach two minutes (REQUEST_TIMEOUT_S defaults to 120 s).
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    request_seconds: Histogram
    retrieval_seconds: Histogram
    model_seconds: Histogram
    first_token_seconds: Histogram
    tokens_streamed: Counter
    model_tokens: Counter

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(method, route).observe(seconds)

    def observe_answer(
        self,
        mode: str,
        retrieval_ms: float,
        total_ms: float,
        first_token_ms: float | None,
        usage: dict[str, int] | None,
    ) -> None:
        self.retrieval_seconds.observe(retrieval_ms / 1000)
        if mode == "generated":  # extractive and not-in-book answers call no model
            self.model_seconds.observe(max(total_ms - retrieval_ms, 0.0) / 1000)
            if first_token_ms is not None:
                self.first_token_seconds.observe(first_token_ms / 1000)
        for kind in ("input", "output"):
            count = (usage or {}).get(f"{kind}_tokens")
            if count:
                self.model_tokens.labels(kind).inc(count)


def build_metrics() -> Metrics:
    """The app's metrics in a fresh registry; built once by `create_app`."""
    registry = CollectorRegistry(auto_describe=True)
    return Metrics(
        registry=registry,
        requests=Counter(
            "bookrag_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        ),
        request_seconds=Histogram(
            "bookrag_http_request_duration_seconds",
            "Time from request to the end of the response (for a stream: its last event).",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        ),
        retrieval_seconds=Histogram(
            "bookrag_retrieval_duration_seconds",
            "Time to embed the question and query Qdrant, per answer.",
            buckets=_STAGE_BUCKETS,
            registry=registry,
        ),
        model_seconds=Histogram(
            "bookrag_model_duration_seconds",
            "Time from the end of retrieval to the end of the model's answer, per generated answer.",
            buckets=_STAGE_BUCKETS,
            registry=registry,
        ),
        first_token_seconds=Histogram(
            "bookrag_first_token_seconds",
            "Time from the request to the model's first token, per generated answer.",
            buckets=_STAGE_BUCKETS,
            registry=registry,
        ),
        tokens_streamed=Counter(
            "bookrag_streamed_tokens",
            "Text deltas (model tokens) of streamed answers, counted before coalescing joins them into events.",
            ["endpoint"],
            registry=registry,
        ),
        model_tokens=Counter(
            "bookrag_model_tokens",
            "Tokens the chat model reported using, by kind (input or output).",
            ["kind"],
            registry=registry,
        ),
    )


def metrics_of(request: Request) -> Metrics | None:
    """The app's metrics (None for an app built without them)."""
    metrics = getattr(request.app.state, "metrics", None)
    return metrics if isinstance(metrics, Metrics) else None
