"""Filters as readers type them: case, number prefixes, extensions and folders do not matter; a filter that names
nothing stored is a 422 naming what exists, never a false "not in the book"."""

from __future__ import annotations

from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from chains.catalogue import Catalogue, FilterMatchesNothing, match_chapter, match_source, normalise
from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from tests.conftest import app_client

SOURCES = ("sample_book/01-site-and-soil.md", "sample_book/03-planting.md", "sample_book/04-pruning.mdx")
CHAPTERS = ("Choosing Trees", "Planting", "Site and Soil")


def test_names_compare_without_case_prefixes_or_extensions() -> None:
    assert normalise("03-Planting.md") == normalise("planting") == "planting"
    assert normalise("Chapter 3: Site and Soil") == "site and soil"
    # A classic's Roman numbers (Standard Ebooks: "I: Variation Under Domestication"); a title word stays.
    assert normalise("I: Variation Under Domestication") == normalise("variation under domestication")
    assert normalise("Chapter XII. Geographical Distribution") == "geographical distribution"
    assert normalise("I think, therefore") == "i think therefore" and normalise("Mix: Soil") == "mix soil"


def test_a_source_matches_by_trailing_path_and_by_name() -> None:
    assert match_source("03-planting.md", SOURCES) == ["sample_book/03-planting.md"]
    assert match_source("planting", SOURCES) == ["sample_book/03-planting.md"]
    assert match_source("sample_book/04-pruning.mdx", SOURCES) == ["sample_book/04-pruning.mdx"]
    assert match_source("harvest", SOURCES) == []


def test_a_chapter_matches_as_typed() -> None:
    assert match_chapter("planting", CHAPTERS) == ["Planting"]
    assert match_chapter("site & soil", CHAPTERS) == ["Site and Soil"]


def test_nothing_matched_names_the_closest_values_first() -> None:
    with pytest.raises(FilterMatchesNothing) as caught:
        Catalogue(SOURCES, CHAPTERS).resolve(None, "Plantng trees")
    assert caught.value.suggestions[0] == "Planting"
    assert "Planting" in str(caught.value) and "chapter" in str(caught.value)


@pytest.mark.integration
async def test_filters_through_the_api(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> None:
    async for _app, client in app_client(settings, embeddings, qdrant):
        # the stored chapter is "Watering Young Trees", the source ".../watering.md"
        found = await client.post("/search", json={"query": "mulch", "chapter": "watering young trees"})
        assert found.status_code == 200 and found.json()["results"]
        assert {r["metadata"]["chapter"] for r in found.json()["results"]} == {"Watering Young Trees"}
        by_name = await client.post("/ask", json={"question": "How deep is the mulch?", "sources": ["watering.md"]})
        assert by_name.status_code == 200 and by_name.json()["mode"] != "not_in_book"
        for body in (
            {"question": "How deep is the mulch?", "chapter": "Irrigation"},
            {"question": "How deep is the mulch?", "sources": ["irrigation.md"], "stream": True},
        ):
            refused = await client.post("/ask", json=body)
            assert refused.status_code == 422, refused.text
            error = refused.json()["error"]
            assert error["code"] == "filter_matches_nothing"
            assert "Watering Young Trees" in error["message"] or "watering.md" in error["message"]
        search = await client.post("/search", json={"query": "mulch", "sources": ["nothing.md"]})
        assert search.status_code == 422
