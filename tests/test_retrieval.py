"""The retriever on a real embedded Qdrant with the real embedding model: hybrid vs dense, filters, MMR, reranking,
collections from before hybrid retrieval, and LangChain's standard retriever suite."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_tests.integration_tests import RetrieversIntegrationTests
from qdrant_client import QdrantClient, models

from chains.embeddings import LocalEmbeddings
from chains.errors import CollectionMismatch, ConfigurationError
from chains.rerank import Reranker, build_reranker
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import (
    DENSE_VECTOR,
    build_vector_store,
    check_collection,
    ensure_collection,
    points_without_sparse,
)
from rag_api.app import warn_if_sparse_missing
from tests.conftest import ingest_into

pytestmark = pytest.mark.integration

# Six look-alike error codes: the embedding model sees them as nearly the same string, the sparse vector does not.
ERROR_CODES = {
    "ZX-4417": "the probe cable is cut; replace the cable before the next reading.",
    "ZX-4471": "the logger's clock battery is flat; fit a new coin cell and set the time again.",
    "ZX-7144": "the memory card is full; copy the readings off and format the card.",
    "ZX-1447": "the probe reads above its range; check that it is not standing in water.",
    "ZX-4714": "the firmware is out of date; update it from the maker's site.",
    "ZX-7441": "the probe is not calibrated; run the calibration in dry air and in water.",
}


@pytest.fixture
def error_code_book(tmp_path: Path) -> Path:
    folder = tmp_path / "codes"
    folder.mkdir()
    for number, (code, meaning) in enumerate(ERROR_CODES.items()):
        (folder / f"code-{number}.md").write_text(
            f"# Logger error codes\n\nWhen the display shows error {code}, {meaning}\n", encoding="utf-8"
        )
    return folder


def code_of(document: Document) -> str:
    return document.page_content.split("error ", 1)[1][:7]


def with_settings(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update=changes)


def test_hybrid_finds_an_exact_identifier_that_dense_only_misses(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, error_code_book: Path
) -> None:
    assert not ingest_into(qdrant, embeddings, settings, error_code_book).failed
    store = build_vector_store(qdrant, settings, embeddings)
    question = "What does error ZX-4471 mean?"

    dense = BookRetriever.from_settings(store, with_settings(settings, retrieval_mode="dense")).invoke(question, k=1)
    hybrid = BookRetriever.from_settings(store, settings).invoke(question, k=1)

    assert settings.retrieval_mode == "hybrid"  # the default
    assert code_of(dense[0]) != "ZX-4471"
    assert code_of(hybrid[0]) == "ZX-4471"
    assert "coin cell" in hybrid[0].page_content


def test_documents_carry_cosine_score_rank_and_fusion_score(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, indexed_book: Path
) -> None:
    store = build_vector_store(qdrant, settings, embeddings)
    documents = BookRetriever.from_settings(store, settings).invoke("How deep should the mulch be?", k=2)
    assert [d.metadata["rank"] for d in documents] == [1, 2]
    assert all(-1.0 <= d.metadata["score"] <= 1.0 and "fusion_score" in d.metadata for d in documents)
    query = embeddings.embed_query("How deep should the mulch be?")
    best = qdrant.query_points(settings.qdrant_collection, query=query, using=DENSE_VECTOR, limit=1).points[0]
    assert documents[0].metadata["score"] == pytest.approx(best.score, abs=1e-4)  # the same cosine Qdrant computes


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_filters_restrict_results_to_sources_and_chapter(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, indexed_book: Path, mode: str
) -> None:
    retriever = BookRetriever.from_settings(
        build_vector_store(qdrant, settings, embeddings), with_settings(settings, retrieval_mode=mode)
    )
    question = "How much water does a young tree need?"
    pruning = retriever.invoke(question, k=5, sources=["book/pruning.md"])
    assert pruning and {d.metadata["source"] for d in pruning} == {"book/pruning.md"}
    chapter = retriever.invoke("When do I prune?", k=5, chapter="Watering Young Trees")
    assert chapter and {d.metadata["chapter"] for d in chapter} == {"Watering Young Trees"}
    assert retriever.invoke(question, sources=["book/no-such-file.md"]) == []


def test_mmr_skips_a_near_duplicate_passage(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "dupes"
    folder.mkdir()
    text = "Water a young apple tree with twenty litres once a week through its first summer."
    (folder / "a.md").write_text(f"# Watering\n\n{text}\n", encoding="utf-8")
    (folder / "b.md").write_text(f"# Watering again\n\n{text} Really.\n", encoding="utf-8")
    (folder / "c.md").write_text("# Heat waves\n\nIn a heat wave, water young trees twice a week.\n", encoding="utf-8")
    assert not ingest_into(qdrant, embeddings, settings, folder).failed
    store = build_vector_store(qdrant, settings, embeddings)
    question = "How often should I water a young apple tree?"

    plain = BookRetriever.from_settings(store, with_settings(settings, retrieval_mode="dense")).invoke(question, k=2)
    diverse = BookRetriever.from_settings(
        store, with_settings(settings, retrieval_mode="dense", retrieval_mmr=True, retrieval_mmr_lambda=0.5)
    ).invoke(question, k=2)

    assert {d.metadata["source"] for d in plain} == {"dupes/a.md", "dupes/b.md"}
    assert {d.metadata["source"] for d in diverse} == {plain[0].metadata["source"], "dupes/c.md"}


class ShortestFirst(Reranker):
    """A stand-in cross-encoder: scores shorter passages higher, so its effect on the order is plain to see."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        self.calls.append((query, len(passages)))
        return [-float(len(p)) for p in passages]


def test_reranker_reorders_the_fused_candidates(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, error_code_book: Path
) -> None:
    assert not ingest_into(qdrant, embeddings, settings, error_code_book).failed
    reranker = ShortestFirst()
    retriever = BookRetriever.from_settings(build_vector_store(qdrant, settings, embeddings), settings, reranker)
    documents = retriever.invoke("logger error", k=2)
    assert reranker.calls == [("logger error", len(ERROR_CODES))]  # every candidate, not only the top k
    shortest = sorted(ERROR_CODES, key=lambda code: len(ERROR_CODES[code]))[:2]
    assert [code_of(d) for d in documents] == shortest
    assert all("rerank_score" in d.metadata for d in documents)


def test_rerank_model_must_be_a_local_directory(settings: Settings, tmp_path: Path) -> None:
    assert build_reranker(settings) is None  # off by default
    with pytest.raises(ConfigurationError, match="RERANK_MODEL"):
        build_reranker(with_settings(settings, rerank_model=tmp_path / "missing"))


def test_points_without_sparse_vectors_are_still_found_and_reported(
    qdrant: QdrantClient,
    embeddings: LocalEmbeddings,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What a collection ingested before hybrid retrieval holds: points with the dense vector only.
    ensure_collection(qdrant, settings, embeddings.dimension)
    store = build_vector_store(qdrant, settings, embeddings)
    store.add_texts(["Mulch keeps the soil moist.", "Prune in late winter."], [{"source": "old.md"}] * 2)
    assert points_without_sparse(qdrant, settings.qdrant_collection) == 2

    documents = BookRetriever.from_settings(store, settings).invoke("What keeps soil moist?", k=1)
    assert documents[0].page_content == "Mulch keeps the soil moist."

    with caplog.at_level(logging.WARNING):
        warn_if_sparse_missing(qdrant, settings)
    assert "2 points" in caplog.text and "rag-ingest again" in caplog.text


def test_collection_without_a_sparse_vector_is_refused_with_a_hint(qdrant: QdrantClient, settings: Settings) -> None:
    qdrant.create_collection(
        settings.qdrant_collection,
        vectors_config={DENSE_VECTOR: models.VectorParams(size=384, distance=models.Distance.COSINE)},
    )
    with pytest.raises(CollectionMismatch, match=r"no sparse vector.*fresh collection"):
        check_collection(qdrant, settings.qdrant_collection, 384)


class TestBookRetrieverStandard(RetrieversIntegrationTests):
    """LangChain's standard retriever suite, over a small book ingested by the project's own indexer."""

    @pytest.fixture(autouse=True)
    def _book(
        self, qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, error_code_book: Path
    ) -> None:
        assert not ingest_into(qdrant, embeddings, settings, error_code_book).failed
        self.store = build_vector_store(qdrant, settings, embeddings)

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return BookRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, object]:
        return {"vector_store": self.store}

    @property
    def retriever_query_example(self) -> str:
        return "What does the logger's error code mean?"


def test_each_ingest_is_searched_at_once(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, error_code_book: Path
) -> None:
    assert not ingest_into(qdrant, embeddings, settings, error_code_book).failed
    retriever = BookRetriever.from_settings(build_vector_store(qdrant, settings, embeddings), settings)
    assert code_of(retriever.invoke("error ZX-4471", k=1)[0]) == "ZX-4471"
    (error_code_book / "code-9.md").write_text("# Logger error codes\n\nError QQ-9 means the lid is open.\n")
    assert not ingest_into(qdrant, embeddings, settings, error_code_book).failed  # one point more
    assert "QQ-9" in retriever.invoke("QQ-9", k=1)[0].page_content
    (error_code_book / "code-9.md").write_text("# Logger error codes\n\nError RR-7 means the lid is open.\n")
    assert not ingest_into(qdrant, embeddings, settings, error_code_book).failed  # as many points as before
    assert "RR-7" in retriever.invoke("RR-7", k=1)[0].page_content


def test_each_qdrant_query_is_logged_at_debug_with_its_mode_and_time(
    qdrant: QdrantClient, settings: Settings, embeddings: LocalEmbeddings, book_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    ingest_into(qdrant, embeddings, settings, book_dir)
    retriever = BookRetriever.from_settings(build_vector_store(qdrant, settings, embeddings), settings)
    with caplog.at_level(logging.DEBUG, logger="chains.retrieval"):
        retriever.invoke("How much water does a young tree need?")
    lines = [r.getMessage() for r in caplog.records if r.name == "chains.retrieval" and "query" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("qdrant hybrid query (") and " ms" in lines[0]


# An essay with an editor's introduction about its author: the introduction writes "Mill" in every paragraph, the
# essay, in the author's own voice, never does.
ESSAY = {
    "introduction.md": "# Introduction\n\n"
    + "\n\n".join(
        [
            "Mill was born in London in 1806, and Mill's father taught him Greek at the age of three.",
            "Mill worked for the East India Company for thirty-five years, and Mill wrote at his desk there.",
            "Mill met Harriet Taylor in 1830; Mill married her after her husband's death.",
            "Mill sat in Parliament for Westminster, where Mill spoke for the vote for women.",
        ]
    ),
    "chapter-1.md": "# Introductory\n\n"
    + "\n\n".join(
        [
            "The object of this essay is to assert one very simple principle: the only purpose for which power can "
            "be rightfully exercised over any member of a civilized community, against his will, is to prevent "
            "harm to others.",
            "His own good, either physical or moral, is not a sufficient warrant. He cannot rightfully be compelled "
            "to do or forbear because it will be better for him.",
        ]
    ),
    "chapter-2.md": "# Of the Liberty of Thought\n\n"
    + "\n\n".join(
        [
            "If all mankind minus one were of one opinion, mankind would be no more justified in silencing that "
            "one person than he would be in silencing mankind.",
            "We can never be sure that the opinion we are endeavouring to stifle is a false opinion.",
        ]
    ),
}


@pytest.fixture
def essay(tmp_path: Path) -> Path:
    folder = tmp_path / "essay"
    folder.mkdir()
    for name, text in ESSAY.items():
        (folder / name).write_text(text + "\n", encoding="utf-8")
    return folder


def test_the_authors_name_in_a_question_does_not_pull_in_the_introduction_about_him(
    qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings, essay: Path
) -> None:
    assert not ingest_into(qdrant, embeddings, settings, essay).failed
    store = build_vector_store(qdrant, settings, embeddings)
    retriever = BookRetriever.from_settings(store, settings)
    question = "In Mill's view, may the public push people around for their own good?"

    found = retriever.invoke(question, k=2)

    assert found[0].metadata["source"] == "essay/chapter-1.md"
    assert "prevent harm to others" in found[0].page_content
