"""`GET /metrics`: the app's Prometheus metrics (rag_api.metrics), unauthenticated like /health.

Expose it to the scraper only: keep it off the public proxy (docs/deployment.md has an nginx example).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rag_api.metrics import metrics_of

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={
        200: {
            "description": "Request counts and latency, retrieval and model time, tokens streamed",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics_endpoint(request: Request) -> Response:
    metrics = metrics_of(request)
    body = generate_latest(metrics.registry) if metrics is not None else b""
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
