"""The embedded store on Qdrant's own engine (chains/edge_client.py), the default without QDRANT_URL.

Real engine, real embedding model, the project's own indexer. The rest of the suite runs against it too; here:
parity with qdrant-client's own implementation of the same query API (its local mode, the previous embedded
store), LangChain's standard suites, concurrent queries during writes, the one-process lock, and the clear error
for a call it does not translate.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import RetrieversIntegrationTests, VectorStoreIntegrationTests
from qdrant_client import QdrantClient, models

from chains.edge_client import EdgeClient
from chains.embeddings import LocalEmbeddings
from chains.errors import DependencyUnavailable
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import DENSE_VECTOR, SPARSE_VECTOR, build_qdrant_client, build_vector_store, ensure_collection
from tests.conftest import ingest_into

pytestmark = pytest.mark.integration

CODES = {
    "ZX-4417": "the probe cable is cut; replace the cable before the next reading.",
    "ZX-4471": "the logger's clock battery is flat; fit a new coin cell and set the time again.",
    "ZX-7144": "the memory card is full; copy the readings off and format the card.",
    "ZX-1447": "the probe reads above its range; check that it is not standing in water.",
}
QUESTIONS = ("What does error ZX-4471 mean?", "moisture-log --probe A3", "when to prune apple trees", "water")


def edge_settings(tmp_path: Path, **values: object) -> Settings:
    chosen: dict[str, object] = {
        "qdrant_url": None,
        "qdrant_path": tmp_path / "qdrant",
        "qdrant_collection": f"edge_{uuid.uuid4().hex[:12]}",
        **values,
    }
    return Settings(_env_file=None, **chosen)  # type: ignore[arg-type]


@pytest.fixture
def codes_book(tmp_path: Path, book_dir: Path) -> Path:
    """The conftest book (watering, pruning) plus look-alike error codes, in one folder."""
    for number, (code, meaning) in enumerate(CODES.items()):
        (book_dir / f"code-{number}.md").write_text(
            f"# Logger error codes\n\nWhen the display shows error {code}, {meaning}\n", encoding="utf-8"
        )
    return book_dir


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[tuple[QdrantClient, Settings]]:
    settings = edge_settings(tmp_path)
    client = build_qdrant_client(settings)
    yield client, settings
    client.close()


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
@pytest.mark.filterwarnings("ignore:Local mode performs exact")  # the reference ignores QDRANT_HNSW_EF
@pytest.mark.parametrize(("mode", "fusion"), [("hybrid", "dbsf"), ("dense", "dbsf"), ("hybrid", "rrf")])
def test_edge_ranks_as_qdrant_clients_own_query_api(
    tmp_path: Path,
    embeddings: LocalEmbeddings,
    codes_book: Path,
    edge: tuple[QdrantClient, Settings],
    mode: str,
    fusion: str,
) -> None:
    """The same book, ingested by the indexer into qdrant-client's local mode (the same `query_points` request,
    prefetches and fusion computed by qdrant-client in Python) and into the edge engine (computed by Qdrant's
    engine): the same passages in the same order."""
    edge_client, settings = edge
    local_settings = settings.model_copy(update={"qdrant_path": tmp_path / "local"})
    local_client = QdrantClient(path=str(local_settings.qdrant_path))
    try:
        assert isinstance(edge_client, EdgeClient) and not isinstance(local_client, EdgeClient)
        for client, where in ((edge_client, settings), (local_client, local_settings)):
            assert not ingest_into(client, embeddings, where, codes_book).failed
        assert (
            edge_client.count(settings.qdrant_collection).count == local_client.count(settings.qdrant_collection).count
        )
        options = {"retrieval_mode": mode, "retrieval_fusion": fusion}
        on_edge = BookRetriever.from_settings(
            build_vector_store(edge_client, settings, embeddings), settings.model_copy(update=options)
        )
        today = BookRetriever.from_settings(
            build_vector_store(local_client, local_settings, embeddings), local_settings.model_copy(update=options)
        )
        for question in QUESTIONS:
            for call in ({"k": 4}, {"k": 3, "sources": ["book/code-1.md", "book/pruning.md"]}):
                got = on_edge.invoke(question, **call)
                wanted = today.invoke(question, **call)
                if fusion == "rrf":  # RRF gives equal scores to points at the same ranks: ties may break otherwise
                    assert {d.id for d in got} == {d.id for d in wanted}, (question, call)
                else:
                    assert [d.id for d in got] == [d.id for d in wanted], (question, call)
                cosine = {d.id: d.metadata["score"] for d in wanted}
                for document in got:  # the dense cosine each passage reports, whatever the engine
                    assert document.metadata["score"] == pytest.approx(cosine[document.id], abs=1e-5)
    finally:
        local_client.close()


def test_queries_during_writes_fail_none_and_lose_nothing(
    embeddings: LocalEmbeddings, edge: tuple[QdrantClient, Settings]
) -> None:
    """Three threads query while another upserts 600 points in batches and deletes 200: no query fails, every
    query answers, and the count is exactly what was written minus what was deleted."""
    client, settings = edge
    name = settings.qdrant_collection
    ensure_collection(client, settings, embeddings.dimension)
    vector = embeddings.embed_query("watering tomatoes")

    def points(first: int, count: int) -> list[models.PointStruct]:
        return [
            models.PointStruct(
                id=str(uuid.uuid5(uuid.NAMESPACE_OID, str(i))),
                vector={
                    DENSE_VECTOR: [x + (i % 7) * 1e-3 for x in vector],
                    SPARSE_VECTOR: models.SparseVector(indices=[i % 50, 1000], values=[1.0, 0.5]),
                },
                payload={"page_content": f"passage {i}", "metadata": {"source": f"s{i % 5}.md"}},
            )
            for i in range(first, first + count)
        ]

    client.upsert(name, points(0, 400))
    retriever = BookRetriever.from_settings(build_vector_store(client, settings, embeddings), settings)
    stop = threading.Event()
    errors: list[BaseException] = []
    answered = [0, 0, 0]

    def read(slot: int) -> None:
        while not stop.is_set():
            try:
                assert retriever._search(vector, "passage", 5, retriever._options({})[1])
                answered[slot] += 1
            except Exception as exc:
                errors.append(exc)
                return

    readers = [threading.Thread(target=read, args=(slot,)) for slot in range(3)]
    for thread in readers:
        thread.start()
    try:
        for first in range(400, 1000, 50):
            client.upsert(name, points(first, 50))
        gone = [str(uuid.uuid5(uuid.NAMESPACE_OID, str(i))) for i in range(200)]
        client.delete(name, points_selector=models.PointIdsList(points=gone))
        assert isinstance(client, EdgeClient)
        client.optimize(name)
    finally:
        stop.set()
        for thread in readers:
            thread.join(timeout=60)
    assert not errors, errors[0]
    assert all(answered)
    assert client.count(name, exact=True).count == 800
    assert not client.retrieve(name, gone[:5])


def test_a_store_open_elsewhere_is_refused_with_the_way_out(
    tmp_path: Path, embeddings: LocalEmbeddings, edge: tuple[QdrantClient, Settings]
) -> None:
    client, settings = edge
    ensure_collection(client, settings, embeddings.dimension)
    with pytest.raises(DependencyUnavailable, match=r"open in another process.*QDRANT_URL"):
        build_qdrant_client(settings)


def test_a_call_it_does_not_translate_names_itself(edge: tuple[QdrantClient, Settings]) -> None:
    client, _ = edge
    with pytest.raises(NotImplementedError, match=r"QdrantClient\.recommend .*embedded.*QDRANT_URL"):
        client.recommend("any", positive=[1])


class TestBookVectorStoreOnEdge(VectorStoreIntegrationTests):
    """LangChain's standard vector-store suite against `BookVectorStore` on the edge engine."""

    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Iterator[VectorStore]:  # type: ignore[override]
        settings = edge_settings(tmp_path)
        client = build_qdrant_client(settings)
        embeddings = self.get_embeddings()
        ensure_collection(client, settings, len(embeddings.embed_query("size")))
        try:
            yield build_vector_store(client, settings, embeddings)
        finally:
            client.close()


class TestBookRetrieverOnEdge(RetrieversIntegrationTests):
    """LangChain's standard retriever suite, over a book ingested into the edge engine by the project's indexer."""

    @pytest.fixture(autouse=True)
    def _book(self, tmp_path: Path, embeddings: LocalEmbeddings, codes_book: Path) -> Iterator[None]:
        settings = edge_settings(tmp_path)
        client = build_qdrant_client(settings)
        assert not ingest_into(client, embeddings, settings, codes_book).failed
        self.store = build_vector_store(client, settings, embeddings)
        yield
        client.close()

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return BookRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, object]:
        return {"vector_store": self.store}

    @property
    def retriever_query_example(self) -> str:
        return "What does error ZX-4471 mean?"
