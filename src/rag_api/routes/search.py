"""`POST /search`: the top passages for a query, with scores and metadata; no chat model involved."""

from __future__ import annotations

from fastapi import APIRouter

from rag_api.deps import State
from rag_api.schemas import ErrorResponse, SearchRequest, SearchResponse, SearchResult

router = APIRouter(tags=["search"])


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Search the book's passages",
    responses={422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def search(body: SearchRequest, state: State) -> SearchResponse:
    documents = await state.retriever.ainvoke(body.query, k=body.k, sources=body.sources, chapter=body.chapter)
    return SearchResponse(
        results=[
            SearchResult(
                text=d.page_content,
                score=float(d.metadata.get("score", 0.0)),
                metadata={k: v for k, v in d.metadata.items() if k != "score"},
            )
            for d in documents
        ]
    )
