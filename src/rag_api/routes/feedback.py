"""`POST /feedback`: a reader's rating of an answer, stored beside the answer's record for `rag-report`."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, status

from rag_api.deps import State
from rag_api.errors import ERROR_RESPONSES
from rag_api.records import UnknownAnswer
from rag_api.schemas import ErrorResponse, FeedbackRequest, FeedbackResponse

router = APIRouter(tags=["feedback"])


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    status_code=status.HTTP_201_CREATED,
    summary="Rate an answer (thumbs up or down, with an optional comment)",
    responses={
        **ERROR_RESPONSES,
        404: {"model": ErrorResponse, "description": "No recorded answer has this id: `not_found`"},
    },
)
async def post_feedback(body: FeedbackRequest, state: State) -> FeedbackResponse:
    if state.records_error is not None:
        raise HTTPException(503, state.records_error)
    if state.records is None:
        raise HTTPException(404, "this service does not record answers (RECORD_QUESTIONS=false), so none can be rated")
    if state.recorder is not None:
        await state.recorder.drain()  # a rating may arrive before its answer's record is written
    try:
        await asyncio.to_thread(state.records.add_feedback, body.answer_id, body.rating, body.comment)
    except UnknownAnswer:
        raise HTTPException(404, f"no recorded answer has the id {body.answer_id!r} (or it was pruned)") from None
    return FeedbackResponse(answer_id=body.answer_id, rating=body.rating)
