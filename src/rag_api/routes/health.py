"""`GET /health` (liveness, with the state of each dependency) and `GET /ready` (503 naming what is down).

Both probe on each call, so a dependency that comes back is seen at once: while Qdrant is down they retry
opening the store and checking the collection (`rag_api.recovery`), and the service recovers without a restart.
The chat
model is reported as its provider and name (`model`); an OpenAI-compatible endpoint is probed with a short
`GET {base}/models` (free: no tokens): any HTTP answer but 401/403/5xx means it is up. Other providers are not
probed, since none has a free call that proves a key works: their failures show as 503 `chat_model_unavailable`.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from chains.models import OPENAI, ChatModelName
from chains.vectorstore import local_store_problem
from rag_api.deps import State
from rag_api.recovery import recheck_qdrant
from rag_api.schemas import ChatModelInfo, DependencyHealth, HealthResponse
from rag_api.state import AppState

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

MODEL_PROBE_TIMEOUT_S = 2.0
DEFAULT_OPENAI_BASE = "https://api.openai.com/v1"


def _probe_qdrant(state: AppState) -> tuple[DependencyHealth, int | None]:
    name = state.settings.qdrant_collection
    if state.collection_error:
        recheck_qdrant(state)
    if state.collection_error:
        return DependencyHealth(ok=False, detail=state.collection_error), None
    if not state.settings.uses_qdrant_server:  # a file deleted or overwritten under the running server
        problem = local_store_problem(state.settings.qdrant_path)
        if problem is not None:
            return DependencyHealth(ok=False, detail=problem), None
    try:
        if not state.client.collection_exists(name):
            return DependencyHealth(ok=False, detail=f"collection {name!r} does not exist: run rag-ingest"), None
        count = state.client.count(name, exact=True).count
    except Exception as exc:  # any client failure means "unreachable" to a health check
        return DependencyHealth(ok=False, detail=f"unreachable ({type(exc).__name__})"), None
    return DependencyHealth(ok=True), count


async def _probe_chat_model(state: AppState) -> DependencyHealth:
    settings = state.settings
    if state.chat_model is None:
        return DependencyHealth(ok=True, detail="none configured: extractive answers")
    if settings.chat_model is None:
        return DependencyHealth(ok=True, detail="in-process model")
    provider = ChatModelName.parse(settings.chat_model).provider
    if provider != OPENAI:
        return DependencyHealth(ok=True, detail=f"{provider}: not probed (no free call to make)")
    base = str(settings.openai_base_url or DEFAULT_OPENAI_BASE).rstrip("/")
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed"
    try:
        async with httpx.AsyncClient(timeout=MODEL_PROBE_TIMEOUT_S) as http:
            response = await http.get(f"{base}/models", headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        return DependencyHealth(ok=False, detail=f"unreachable ({type(exc).__name__})")
    if response.status_code in (401, 403):
        return DependencyHealth(ok=False, detail="the endpoint rejected the configured API key")
    if response.status_code >= 500:
        return DependencyHealth(ok=False, detail=f"the endpoint answered HTTP {response.status_code}")
    return DependencyHealth(ok=True)


def _probe_embeddings(state: AppState) -> DependencyHealth:
    if state.settings.embedding_provider == "local":
        return DependencyHealth(ok=True, detail="local model, in process")
    return DependencyHealth(ok=True, detail="remote: failures show as 503 embeddings_unavailable")


def model_info(state: AppState) -> ChatModelInfo | None:
    """The chat model answers come from: provider and name, from the settings (no call made)."""
    if state.settings.chat_model is not None:
        name = ChatModelName.parse(state.settings.chat_model)
        return ChatModelInfo(provider=name.provider, name=name.model)
    if state.chat_model is not None:  # handed in ready-made (tests, benchmarks)
        return ChatModelInfo(provider="in-process", name=type(state.chat_model).__name__)
    return None


async def health_of(state: AppState) -> HealthResponse:
    (qdrant, points), chat_model = await asyncio.gather(
        asyncio.to_thread(_probe_qdrant, state), _probe_chat_model(state)
    )
    dependencies = {"qdrant": qdrant, "chat_model": chat_model, "embeddings": _probe_embeddings(state)}
    down = [name for name, health in dependencies.items() if not health.ok]
    return HealthResponse(
        status="degraded" if down else "ok",
        down=down,  # type: ignore[arg-type]
        dependencies=dependencies,
        qdrant=qdrant,
        collection=state.settings.qdrant_collection,
        points=points,
        chat_model=state.settings.chat_model,
        model=model_info(state),
        embedding_model=state.settings.embedding_model,
    )


@router.get("/health", response_model=HealthResponse, summary="Liveness, with the state of each dependency")
async def health(state: State) -> HealthResponse:
    return await health_of(state)


@router.get(
    "/ready",
    response_model=HealthResponse,
    summary="Readiness: 200 when every dependency answers, else 503 naming the ones that do not (`down`)",
    responses={503: {"model": HealthResponse}},
)
async def ready(state: State) -> HealthResponse | JSONResponse:
    report = await health_of(state)
    if report.status != "ok":
        return JSONResponse(report.model_dump(), status_code=503)
    return report
