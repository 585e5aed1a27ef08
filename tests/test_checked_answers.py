"""Answers a student can check, on the real sample book with the real embedding model: highlights on the sentence
that answers, an extractive answer made of those sentences, a follow-up that keeps its passage first without a
model, citations naming no source kept apart, and refusals that say what the book lacks."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient

from chains.answer import is_model_refusal, needs_context, not_in_book_text
from chains.book_terms import Vocabulary, distinctive_terms
from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from chains.vectorstore import ensure_collection
from ingest.indexer import Indexer, discover_files
from tests.conftest import app_client, vocabulary_ready
from tests.fakes import scripted_model

SAMPLE_BOOK = Path(__file__).resolve().parent.parent / "sample_book"


def test_a_follow_up_needs_the_conversation_only_when_it_cannot_stand_alone() -> None:
    assert not needs_context("How deep should the planting hole be?")
    assert needs_context("How deep should it be?")
    assert needs_context("And pears?")


def test_distinctive_terms_are_names_and_identifiers() -> None:
    assert distinctive_terms("How do I deploy the orchard logger on Kubernetes?") == ["Kubernetes"]
    assert distinctive_terms("What does moisture_log --probe do with Core Data?") == ["moisture_log", "Core Data"]
    assert distinctive_terms("When should I prune cherry trees?") == []
    vocabulary = Vocabulary.of(["Prune cherries in summer.", "Use Core Data for storage."])
    assert vocabulary.missing("Does Core Data or Realm store it?") == ["Realm"]


def test_the_refusal_says_what_the_book_lacks_and_offers_the_closest_sections() -> None:
    text = not_in_book_text(["Kubernetes"], ["Planting > Staking", "Site and Soil"])
    assert text.startswith("The book does not mention “Kubernetes”")
    assert "The closest sections: Planting > Staking; Site and Soil." in text


def test_a_model_saying_the_book_does_not_cover_it_is_a_refusal() -> None:
    assert is_model_refusal("The book does not cover tax rates.", [])
    assert is_model_refusal("I'm sorry, but the passages don't mention Norway at all.", [])
    assert not is_model_refusal("Dig the hole 30 cm deep [1]; the book does not mention clay here.", [1])
    assert not is_model_refusal("Prune cherries in summer [2].", [2])


@pytest.fixture
def sample_book_settings(settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings) -> Settings:
    ensure_collection(qdrant, settings, embeddings.dimension)
    report = Indexer(qdrant, embeddings, settings, embeddings.count_tokens).ingest(
        list(discover_files([SAMPLE_BOOK])), SAMPLE_BOOK
    )
    assert not report.failed
    return settings


@pytest.mark.integration
async def test_highlights_extractive_answer_follow_ups_and_term_refusals(
    sample_book_settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    clients: AsyncIterator[Any] = app_client(sample_book_settings, embeddings, qdrant)
    async for app, client in clients:
        answer = (await client.post("/ask", json={"question": "When should I prune cherry trees?"})).json()
        assert answer["mode"] == "extractive"
        first = answer["sources"][0]
        assert first["source"].endswith("04-pruning-and-pollination.mdx")
        quoted = [first["text"][start:end] for start, end in first["highlights"]]
        assert all(0 <= start < end <= len(first["text"]) for start, end in first["highlights"])
        assert any("pruned in summer" in q for q in quoted)
        # the extractive answer is made of those sentences, not of the passage's start
        assert "should only be pruned in summer" in answer["answer"]

        follow_up = {
            "question": "How deep should the planting hole be?",
            "history": [
                {"role": "user", "content": "Which rootstock keeps a tree smallest?"},
                {"role": "assistant", "content": "A dwarfing rootstock such as M27 [1]."},
            ],
        }
        after = (await client.post("/ask", json=follow_up)).json()
        assert "Depth and Width" in after["sources"][0]["heading_path"]

        await vocabulary_ready(app, qdrant)
        refused = (await client.post("/ask", json={"question": "How do I water my orchard with Kubernetes?"})).json()
        assert refused["mode"] == "not_in_book" and refused["sources"] == []
        assert "does not mention “Kubernetes”" in refused["answer"] and "closest sections" in refused["answer"]


@pytest.mark.integration
async def test_citations_naming_no_source_are_listed_apart(
    sample_book_settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    model = scripted_model("Thirty centimetres deep [1], never more [7].")
    async for _app, client in app_client(sample_book_settings, embeddings, qdrant, model):
        answer = (await client.post("/ask", json={"question": "How deep should the planting hole be?"})).json()
        assert answer["citations"] == [1]
        assert answer["invalid_citations"] == [7]


@pytest.mark.integration
async def test_the_models_own_refusal_is_reported_as_one(
    sample_book_settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    model = scripted_model("The book does not cover grafting knives.")
    async for _app, client in app_client(sample_book_settings, embeddings, qdrant, model):
        answer = (await client.post("/ask", json={"question": "How deep should the planting hole be?"})).json()
        assert answer["sources"] and answer["mode"] == "not_in_book"


@pytest.mark.integration
async def test_a_refusal_links_the_closest_sections_to_the_books_site(
    sample_book_settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    linked = sample_book_settings.model_copy(update={"book_base_url": "https://orchard.example/book/"})
    async for app, client in app_client(linked, embeddings, qdrant):
        await vocabulary_ready(app, qdrant)
        refused = (await client.post("/ask", json={"question": "How do I water my orchard with Kubernetes?"})).json()
        assert refused["mode"] == "not_in_book"
        offered = refused["answer"].split("The closest sections: ", 1)[1]
        links = re.findall(r"\[([^\]]+)\]\((https://orchard\.example/book/[^)]+)\)", offered)
        assert links, offered  # each section a Markdown link the widget renders, not bare text
        # To the section's anchor, not only the page (a chapter's own opening section is the top of its page).
        assert all("#" in url for label, url in links if " > " in label)
        assert any("#" in url for _, url in links)
