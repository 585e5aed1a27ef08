"""The answer pipeline with fake chat models over a real store: grounding, refusal, conversation, selection."""

from __future__ import annotations

from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from chains.answer import (
    Answerer,
    AnswerRequest,
    DoneEvent,
    SourcesEvent,
    StatusEvent,
    TokenEvent,
    Turn,
    build_answer_chain,
)
from chains.embeddings import LocalEmbeddings
from chains.prompts import NOT_IN_BOOK
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import build_vector_store
from tests.fakes import CountingChatModel, scripted_model

pytestmark = pytest.mark.integration


@pytest.fixture
def retriever(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, indexed_book: Path
) -> BookRetriever:
    return BookRetriever(vector_store=build_vector_store(qdrant, settings, embeddings), k=3)


async def test_stream_yields_status_sources_tokens_done(retriever: BookRetriever, settings: Settings) -> None:
    answerer = Answerer(retriever, scripted_model("Mulch eight centimetres deep [1]."), settings)
    events = [e async for e in answerer.stream(AnswerRequest("How deep should mulch be?"))]
    assert isinstance(events[0], StatusEvent) and isinstance(events[1], SourcesEvent)
    assert isinstance(events[-1], DoneEvent)
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == "Mulch eight centimetres deep [1]."
    assert events[-1].citations == [1] and events[-1].mode == "generated"
    assert "eight centimetres" in events[1].sources[0].text


async def test_out_of_book_question_is_refused_without_calling_the_model(
    retriever: BookRetriever, settings: Settings
) -> None:
    model = CountingChatModel()
    answer = await Answerer(retriever, model, settings).answer(AnswerRequest("What is the capital of Mongolia?"))
    assert answer.mode == "not_in_book" and answer.text == NOT_IN_BOOK
    assert model.calls == 0


async def test_follow_up_is_condensed_before_retrieval(retriever: BookRetriever, settings: Settings) -> None:
    model = scripted_model("When should apple trees be pruned?", "In late winter [1].")
    answerer = Answerer(retriever, model, settings)
    request = AnswerRequest(
        "and when should I do that?",
        history=(Turn("user", "How do I prune apple trees?"), Turn("assistant", "Cut above a bud [1].")),
    )
    answer = await answerer.answer(request)
    assert answer.text == "In late winter [1]."
    assert "late winter" in answer.sources[0].text


async def test_selected_text_is_the_first_passage(retriever: BookRetriever, settings: Settings) -> None:
    model = CountingChatModel(words=3, delay_s=0)
    answerer = Answerer(retriever, model, settings)
    request = AnswerRequest("What does this mean?", selected_text="Remove the three Ds first.", selected_from="pruning")
    answer = await answerer.answer(request)
    assert answer.sources[0].text == "Remove the three Ds first." and answer.sources[0].source == "pruning"
    prompt = str(model.prompts[0][-1].content)
    assert prompt.index("Remove the three Ds first.") < prompt.index("</passage>")


async def test_extractive_answer_without_a_model_is_labelled(retriever: BookRetriever, settings: Settings) -> None:
    answer = await Answerer(retriever, None, settings).answer(AnswerRequest("How much water for a young tree?"))
    assert answer.mode == "extractive"
    assert answer.text.startswith("No chat model is configured")
    assert "[1]" in answer.text and "twenty litres" in answer.text


async def test_lcel_chain_answers_from_the_same_parts(retriever: BookRetriever) -> None:
    chain = build_answer_chain(retriever, scripted_model("Twenty litres [1]."))
    assert await chain.ainvoke("How much water for a young tree?") == "Twenty litres [1]."
