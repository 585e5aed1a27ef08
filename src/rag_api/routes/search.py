"""`POST /search`: the top passages for a query, with scores and metadata; no chat model involved."""

from __future__ import annotations

import asyncio

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
                metadata={
                    **{k: v for k, v in d.metadata.items() if k != "score"},
                    "url": section_url(state.settings.book_base_url, d.metadata),
                },
            )
            for d in documents
        ]
    )
