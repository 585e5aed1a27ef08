"""`GET /health` (is the process up, and how are its dependencies) and `GET /ready` (can it answer now)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from rag_api.deps import State
from rag_api.schemas import DependencyHealth, HealthResponse
from rag_api.state import AppState

router = APIRouter(tags=["health"])


def _probe(state: AppState) -> tuple[DependencyHealth, int | None]:
    name = state.settings.qdrant_collection
    try:
        if not state.client.collection_exists(name):
            return DependencyHealth(ok=False, detail=f"collection {name!r} does not exist: run rag-ingest"), None
        count = state.client.count(name, exact=True).count
    except Exception as exc:  # any client failure means "unreachable" to a health check
        return DependencyHealth(ok=False, detail=f"unreachable ({type(exc).__name__})"), None
    if state.collection_error:
        return DependencyHealth(ok=False, detail=state.collection_error), count
    return DependencyHealth(ok=True), count


async def health_of(state: AppState) -> HealthResponse:
    qdrant, points = await asyncio.to_thread(_probe, state)
    return HealthResponse(
        status="ok" if qdrant.ok else "degraded",
        qdrant=qdrant,
        collection=state.settings.qdrant_collection,
        points=points,
        chat_model=state.settings.chat_model,
        embedding_model=state.settings.embedding_model,
    )


@router.get("/health", response_model=HealthResponse, summary="Liveness, with the state of each dependency")
async def health(state: State) -> HealthResponse:
    return await health_of(state)


@router.get(
    "/ready",
    response_model=HealthResponse,
    summary="Readiness: 200 when every dependency answers, else 503 naming the one that does not",
    responses={503: {"model": HealthResponse}},
)
async def ready(state: State) -> HealthResponse | JSONResponse:
    report = await health_of(state)
    if report.status != "ok":
        return JSONResponse(report.model_dump(), status_code=503)
    return report
