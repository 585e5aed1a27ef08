"""`Annotated` dependencies that hand the start-up state to routes.

Every dependency in this API is `async def` although none awaits anything: FastAPI runs a plain `def` dependency
in a worker thread, a thread hop per dependency per request that only adds latency (and on a busy machine, a
wait for a free thread) to what is a dictionary lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from rag_api.state import AppState


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.rag
    return state


async def get_request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


State = Annotated[AppState, Depends(get_state)]
RequestId = Annotated[str | None, Depends(get_request_id)]
