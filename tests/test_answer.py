"""The answer pipeline with fake chat models over a real store: grounding, refusal, conversation, selection."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.tracers.context import collect_runs
from langchain_core.tracers.schemas import Run
from qdrant_client import QdrantClient

from chains.answer import (
    Answer,
    AnswerRequest,
    DoneEvent,
    SourcesEvent,
    StatusEvent,
    TokenEvent,
    Turn,
    answer_events,
    build_answer_chain,
    fold_answer,
)
from chains.embeddings import LocalEmbeddings
from chains.prompts import NOT_IN_BOOK
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import build_vector_store
from tests.fakes import CountingChatModel, cycling_model, recording_model, scripted_model

pytestmark = pytest.mark.integration


def all_runs(roots: list[Run]) -> list[Run]:
    """Every run of the traced trees, depth first (the steps of the chain are children of its run)."""
    return [run for root in roots for run in (root, *all_runs(root.child_runs))]


async def answer_with(
    retriever: BookRetriever, model: BaseChatModel | None, settings: Settings, request: AnswerRequest
) -> Answer:
    return await fold_answer(answer_events(build_answer_chain(retriever, model, settings), request))


@pytest.fixture
def retriever(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, indexed_book: Path
) -> BookRetriever:
    return BookRetriever(vector_store=build_vector_store(qdrant, settings, embeddings), k=3)


async def test_stream_yields_status_sources_tokens_done(retriever: BookRetriever, settings: Settings) -> None:
    chain = build_answer_chain(retriever, scripted_model("Mulch eight centimetres deep [1]."), settings)
    events = [e async for e in answer_events(chain, AnswerRequest("How deep should mulch be?"))]
    assert isinstance(events[0], StatusEvent) and isinstance(events[1], SourcesEvent)
    assert isinstance(events[-1], DoneEvent)
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == "Mulch eight centimetres deep [1]."
    assert events[-1].citations == [1] and events[-1].mode == "generated"
    assert "eight centimetres" in events[1].sources[0].text


async def test_highlights_come_after_the_first_text_and_fold_into_the_sources(
    retriever: BookRetriever, settings: Settings
) -> None:
    """Scored by the embedding model (the default), a generated answer's highlights never hold back its sources or
    its first token: the chain streams them after the first text; `ainvoke` and the folded answer carry them."""
    assert settings.source_highlights == "embedding"
    chain = build_answer_chain(retriever, scripted_model("Mulch eight centimetres deep [1].", "Eight [1]."), settings)
    chunks = [chunk async for chunk in chain.astream("How deep should mulch be?")]
    keys = [next(iter(chunk)) for chunk in chunks]
    assert keys[0] == "sources" and all(not s.highlights for s in chunks[0]["sources"])
    assert keys.index("answer") < keys.index("highlights") and keys.count("highlights") == 1
    spans = chunks[keys.index("highlights")]["highlights"]
    assert len(spans) == len(chunks[0]["sources"]) and spans[0]
    text = chunks[0]["sources"][0].text
    assert any("eight centimetres" in text[start:end] for start, end in spans[0])
    answer = await fold_answer(answer_events(chain, AnswerRequest("How deep should mulch be?")))
    assert answer.sources[0].highlights and answer.text == "Eight [1]."


async def test_out_of_book_question_is_refused_without_calling_the_model(
    retriever: BookRetriever, settings: Settings
) -> None:
    model = CountingChatModel()
    answer = await answer_with(retriever, model, settings, AnswerRequest("What is the capital of Mongolia?"))
    assert answer.mode == "not_in_book" and answer.text.startswith(NOT_IN_BOOK)
    assert model.calls == 0


async def test_follow_up_is_condensed_before_retrieval(retriever: BookRetriever, settings: Settings) -> None:
    model = scripted_model("When should apple trees be pruned?", "In late winter [1].")
    request = AnswerRequest(
        "and when should I do that?",
        history=(Turn("user", "How do I prune apple trees?"), Turn("assistant", "Cut above a bud [1].")),
    )
    answer = await answer_with(retriever, model, settings, request)
    assert answer.text == "In late winter [1]."
    assert "late winter" in answer.sources[0].text


async def test_selected_text_is_the_first_passage(retriever: BookRetriever, settings: Settings) -> None:
    model = CountingChatModel(words=3, delay_s=0)
    selected = "Prune apple trees in late winter. Remove the three Ds first."
    request = AnswerRequest("Why should I do this?", selected_text=selected, selected_from="pruning")
    answer = await answer_with(retriever, model, settings, request)
    assert answer.sources[0].text == selected and answer.sources[0].source == "pruning"
    assert answer.sources[1].source.endswith("pruning.md")  # its passage in the book, found through the selection
    prompt = str(model.prompts[0][-1].content)
    assert prompt.index(selected) < prompt.index("</passage>")


async def test_a_selection_whose_passage_is_not_found_is_not_echoed_as_the_only_source(
    retriever: BookRetriever, settings: Settings
) -> None:
    request = AnswerRequest("What is this?", selected_text="Quarterly VAT returns are due in May.")
    answer = await answer_with(retriever, None, settings, request)
    assert answer.mode == "not_in_book" and answer.sources == []


async def test_extractive_answer_without_a_model_is_labelled(retriever: BookRetriever, settings: Settings) -> None:
    answer = await answer_with(retriever, None, settings, AnswerRequest("How much water for a young tree?"))
    assert answer.mode == "extractive"
    assert answer.text.startswith("No chat model is configured")
    assert "[1]" in answer.text and "twenty litres" in answer.text


async def test_the_chain_used_directly_with_astream_yields_sources_then_text(
    retriever: BookRetriever, settings: Settings
) -> None:
    chain = build_answer_chain(retriever, scripted_model("Twenty litres once a week [1]."), settings)
    chunks = [chunk async for chunk in chain.astream({"question": "How much water for a young tree?"})]
    assert "sources" in chunks[0] and chunks[0]["mode"] == "generated"
    assert "twenty litres" in chunks[0]["sources"][0].text
    assert all("sources" not in chunk for chunk in chunks[1:])
    assert "".join(chunk.get("answer", "") for chunk in chunks[1:]) == "Twenty litres once a week [1]."


async def test_the_chain_invoked_directly_returns_the_merged_answer_and_streams_events_per_step(
    retriever: BookRetriever, settings: Settings
) -> None:
    chain = build_answer_chain(retriever, cycling_model("Twenty litres [1]."), settings)
    result = await chain.ainvoke("How much water for a young tree?")
    assert result["answer"] == "Twenty litres [1]." and result["mode"] == "generated" and result["sources"]
    events = [e async for e in chain.astream_events("How much water for a young tree?", version="v2")]
    tokens = "".join(e["data"]["chunk"].text for e in events if e["event"] == "on_chat_model_stream")
    assert tokens == "Twenty litres [1]."
    started = [e["name"] for e in events if e["event"].endswith("_start")]
    assert {"book_answer", "retrieve_sources", "generate_answer", "ChatPromptTemplate"} <= set(started)


async def test_follow_up_is_rewritten_by_the_model_and_retrieval_uses_the_rewrite(
    retriever: BookRetriever, settings: Settings
) -> None:
    rewrite = "When should apple trees be pruned?"
    model = recording_model(rewrite, "In late winter [1].")
    request = AnswerRequest(
        "and when should I do that?",
        history=(Turn("user", "How do I prune apple trees?"), Turn("assistant", "Cut above a bud [1].")),
    )
    with collect_runs() as runs:
        answer = await answer_with(retriever, model, settings, request)

    condense = model.prompts[0][-1].text
    assert "How do I prune apple trees?" in condense and "and when should I do that?" in condense
    retrievals = [run for run in all_runs(runs.traced_runs) if run.run_type == "retriever"]
    assert [run.inputs["query"] for run in retrievals] == [rewrite]
    assert len(model.prompts) == 2 and rewrite not in model.prompts[1][-1].text  # the answer sees the real question
    assert "late winter" in answer.sources[0].text


async def test_citations_are_numbers_of_the_sources_sent_to_the_model(
    retriever: BookRetriever, settings: Settings
) -> None:
    model = recording_model("Prune in late winter [2], and water young trees weekly [1]. See also [9].")
    answer = await answer_with(
        retriever,
        model,
        settings.model_copy(update={"retrieval_score_threshold": -1.0}),
        AnswerRequest("How do I care for young apple trees?"),
    )
    assert answer.citations == [2, 1]  # in order of use; [9] names no passage
    assert [s.number for s in answer.sources] == list(range(1, len(answer.sources) + 1))
    prompt = model.prompts[0][-1].text
    for source in answer.sources:
        assert source.source in {"book/watering.md", "book/pruning.md"}
        block = prompt.split(f'<passage number="{source.number}"', 1)[1].split("</passage>", 1)[0]
        assert source.text in block  # number n in the answer is the passage numbered n in the prompt


async def test_out_of_book_question_with_hybrid_retrieval_is_refused_without_a_model_call(
    retriever: BookRetriever, settings: Settings
) -> None:
    assert retriever.mode == "hybrid"
    model = recording_model("should never be used")
    answer = await answer_with(retriever, model, settings, AnswerRequest("Who won the World Cup in 1998?"))
    assert (answer.mode, answer.sources, answer.citations) == ("not_in_book", [], [])
    assert answer.text.startswith(NOT_IN_BOOK)
    assert model.prompts == []
