"""API keys: optional for the public endpoints (API_KEYS), required for the admin ones (ADMIN_API_KEYS).

A key comes in `X-API-Key: <key>` or `Authorization: Bearer <key>`. It is compared with every configured key in
constant time (`hmac.compare_digest` on SHA-256 digests, all keys checked, no early exit), so neither the timing
nor the length of a guess tells anything. Keys are never logged: a client is known in logs and to the rate
limiter by `key:<first 8 hex of its digest>`, or by its IP address when it sent no key. A refused key spends a
token of the sender's address (`rag_api.ratelimit.count_failed_auth`): N wrong keys from one client get 429.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from chains.settings import Settings
from rag_api.deps import State
from rag_api.errors import ApiError
from rag_api.ratelimit import count_failed_auth

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key (or use Bearer)")
_bearer = HTTPBearer(auto_error=False, description="An API key as a bearer token (or use X-API-Key)")

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="bookrag"'}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def key_matches(given: str, keys: Sequence[SecretStr]) -> bool:
    """True when `given` is one of `keys`, in time that depends on neither where nor whether it matches."""
    given_digest = _digest(given)
    found = False
    for key in keys:
        found |= hmac.compare_digest(given_digest, _digest(key.get_secret_value()))
    return found


def client_label(key: str) -> str:
    """How logs and the rate limiter name a key-holding client, without the key."""
    return "key:" + _digest(key).hex()[:8]


async def presented_key(
    header_key: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> str | None:
    if header_key:
        return header_key
    if bearer is not None and bearer.credentials:
        return bearer.credentials
    return None


PresentedKey = Annotated[str | None, Depends(presented_key)]


def _remember_client(request: Request, key: str) -> None:
    request.state.client_id = client_label(key)


async def require_api_key(request: Request, state: State, key: PresentedKey) -> None:
    """Public endpoints: open when API_KEYS is unset; else 401 without one of those keys (or an admin key)."""
    allowed = [*state.settings.api_keys, *state.settings.admin_api_keys]
    if key is not None and key_matches(key, allowed):
        _remember_client(request, key)
        return
    if not state.settings.api_keys:
        return
    count_failed_auth(request)
    message = "a valid API key is required (X-API-Key or Authorization: Bearer)"
    raise HTTPException(401, message if key is None else "the API key is not valid", headers=_CHALLENGE)


async def require_admin_key(request: Request, state: State, key: PresentedKey) -> None:
    """Admin endpoints (ingest, delete): 401 without a key, 403 with a key that is not an admin key."""
    if key is None:
        count_failed_auth(request)
        raise HTTPException(401, "an admin API key is required (X-API-Key or Authorization: Bearer)", _CHALLENGE)
    if not state.settings.admin_api_keys:
        raise ApiError(403, "admin_disabled", "admin endpoints are disabled: set ADMIN_API_KEYS to enable them")
    if not key_matches(key, state.settings.admin_api_keys):
        count_failed_auth(request)
        raise HTTPException(403, "this API key may not use admin endpoints")
    _remember_client(request, key)


def document_optional_keys(app: FastAPI, settings: Settings, public_paths: Collection[str]) -> None:
    """Without API_KEYS the public endpoints take a key but do not need one: say so in OpenAPI (`{}` = anonymous).
    Admin endpoints always need their key, so they are left as they are."""
    if settings.api_keys:
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path, item in schema.get("paths", {}).items():
                if path not in public_paths:
                    continue
                for operation in item.values():
                    security = operation.get("security") if isinstance(operation, dict) else None
                    if security and {} not in security:
                        security.append({})
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
