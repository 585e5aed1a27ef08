"""`POST /search`: the top passages for a query, with scores and metadata; no chat model involved."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from chains.guard import call_within_deadline
from chains.site_urls import section_url
from rag_api.deps import State
from rag_api.errors import ERROR_RESPONSES
from rag_api.limits import check_search_limits
from rag_api.schemas import SearchRequest, SearchResponse, SearchResult

router = APIRouter(tags=["search"])


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Search the book's passages",
    responses={**ERROR_RESPONSES},
)
async def search(body: SearchRequest, state: State) -> SearchResponse:
    check_search_limits(body, state.settings)
    sources, chapter = body.sources, body.chapter
    if sources or chapter:
        catalogue = await asyncio.to_thread(state.catalogue.current, state.client)
        sources, chapter = catalogue.resolve(sources, chapter)
    documents = await call_within_deadline(
        state.retriever.ainvoke(body.query, k=body.k, sources=sources, chapter=chapter),
        state.settings.request_timeout_s,
    )
    return SearchResponse(
        results=[
            SearchResult(
                text=d.page_content,
                score=float(d.metadata.get("score", 0.0)),
                metadata=result_metadata(d.metadata, state.settings.book_base_url),
            )
            for d in documents
        ]
    )


def result_metadata(metadata: dict[str, Any], base_url: object | None) -> dict[str, Any]:
    """A passage's metadata as /search shows it: with its section's `url`, and each spanned section's too."""
    shown = {k: v for k, v in metadata.items() if k != "score"}
    shown["url"] = section_url(base_url, metadata)
    if isinstance(sections := metadata.get("sections"), list):
        shown["sections"] = [{**part, "url": section_url(base_url, part)} for part in sections]
    return shown
