"""`Annotated` dependencies that hand the start-up state to routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from rag_api.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.rag
    return state


def get_request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


State = Annotated[AppState, Depends(get_state)]
RequestId = Annotated[str | None, Depends(get_request_id)]
