"""Collection settings (shards, replication, on-disk storage, quantization, HNSW, payload indexes) reach Qdrant.

The embedded store keeps each vector's own parameters (size, distance, on_disk, HNSW, quantization) and reports
them back, so those are read back through the client here. It drops the cluster-level ones (shards, replication,
write consistency, payload on disk) and reports no payload indexes: for those, these tests check the exact
`create_collection` arguments, and the `qdrant_server` tests (tests/test_qdrant_server.py) read them back from a
real server.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from httpx import Headers
from pydantic import ValidationError
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from chains.embeddings import LocalEmbeddings
from chains.errors import CollectionMismatch
from chains.settings import Settings
from chains.vectorstore import (
    DENSE_VECTOR,
    INDEXED_FIELDS,
    SPARSE_VECTOR,
    collection_layout,
    ensure_collection,
    missing_payload_indexes,
)


def layout_settings(settings: Settings, **changes: Any) -> Settings:
    """`settings` with collection layout changes, validated like values from the environment."""
    return Settings(_env_file=None, **{**settings.model_dump(), **changes})  # type: ignore[call-arg]


def test_default_layout_is_one_shard_one_replica_in_ram_unquantized(settings: Settings) -> None:
    layout = collection_layout(settings, 384)
    assert layout["shard_number"] == 1
    assert layout["replication_factor"] == 1
    assert layout["write_consistency_factor"] is None
    assert layout["on_disk_payload"] is None
    dense = layout["vectors_config"][DENSE_VECTOR]
    assert dense == models.VectorParams(size=384, distance=models.Distance.COSINE)
    assert layout["sparse_vectors_config"] == {SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)}


def test_a_book_sized_collection_gets_no_hnsw_graph_embedded_or_on_a_server(settings: Settings) -> None:
    """The indexing threshold is above QDRANT_EXACT_UP_TO_CHUNKS vectors of the dimension (HNSW recall@5 at
    10,000 chunks was 0.91-0.95 with Qdrant's own threshold, 1.0 without a graph: docs/benchmarks.md)."""
    default = collection_layout(settings, 384)["optimizers_config"]
    assert default.indexing_threshold * 1024 > 20_000 * 384 * 4  # 20,000 chunks of 384 float32 stay exact
    wide = collection_layout(layout_settings(settings, qdrant_exact_up_to_chunks=5_000), 1536)["optimizers_config"]
    assert wide.indexing_threshold * 1024 > 5_000 * 1536 * 4
    assert wide.indexing_threshold * 1024 < 6_000 * 1536 * 4  # and not far above
    assert collection_layout(layout_settings(settings, qdrant_exact_up_to_chunks=0), 384)["optimizers_config"] is None


def test_create_collection_arguments_carry_cluster_and_storage_settings(settings: Settings) -> None:
    configured = layout_settings(
        settings,
        qdrant_shard_number=6,
        qdrant_replication_factor=2,
        qdrant_write_consistency_factor=2,
        qdrant_on_disk=True,
        qdrant_quantization="scalar",
        qdrant_hnsw_m=32,
        qdrant_hnsw_ef_construct=200,
    )
    layout = collection_layout(configured, 384)
    assert layout["shard_number"] == 6
    assert layout["replication_factor"] == 2
    assert layout["write_consistency_factor"] == 2
    assert layout["on_disk_payload"] is True
    dense = layout["vectors_config"][DENSE_VECTOR]
    assert dense.on_disk is True
    assert dense.hnsw_config == models.HnswConfigDiff(m=32, ef_construct=200)
    assert dense.quantization_config == models.ScalarQuantization(
        scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
    )


def test_binary_quantization_keeps_the_compressed_vectors_in_ram(settings: Settings) -> None:
    dense = collection_layout(layout_settings(settings, qdrant_quantization="binary"), 384)["vectors_config"][
        DENSE_VECTOR
    ]
    assert dense.quantization_config == models.BinaryQuantization(
        binary=models.BinaryQuantizationConfig(always_ram=True)
    )


def test_layout_settings_come_from_their_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "QDRANT_SHARD_NUMBER": "4",
        "QDRANT_REPLICATION_FACTOR": "3",
        "QDRANT_WRITE_CONSISTENCY_FACTOR": "2",
        "QDRANT_ON_DISK": "true",
        "QDRANT_QUANTIZATION": "binary",
        "QDRANT_HNSW_M": "24",
        "QDRANT_HNSW_EF_CONSTRUCT": "128",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.qdrant_shard_number, settings.qdrant_replication_factor) == (4, 3)
    assert settings.qdrant_write_consistency_factor == 2
    assert settings.qdrant_on_disk is True
    assert settings.qdrant_quantization == "binary"
    assert (settings.qdrant_hnsw_m, settings.qdrant_hnsw_ef_construct) == (24, 128)


def test_older_qdrant_shards_variable_still_sets_the_shard_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QDRANT_SHARDS", "3")
    assert Settings(_env_file=None).qdrant_shard_number == 3  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("QDRANT_QUANTIZATION", "product", "qdrant_quantization"),
        ("QDRANT_SHARD_NUMBER", "0", "qdrant_shard_number"),
        ("QDRANT_HNSW_M", "2", "qdrant_hnsw_m"),
    ],
)
def test_bad_layout_value_fails_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, named: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=named):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_write_consistency_above_replication_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QDRANT_REPLICATION_FACTOR", "2")
    monkeypatch.setenv("QDRANT_WRITE_CONSISTENCY_FACTOR", "3")
    with pytest.raises(ValidationError, match="QDRANT_WRITE_CONSISTENCY_FACTOR"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # compose passes `${OPENAI_BASE_URL:-}` as an empty string when the host has none
    for name in ("OPENAI_BASE_URL", "QDRANT_API_KEY", "QDRANT_URL", "QDRANT_WRITE_CONSISTENCY_FACTOR", "API_KEYS"):
        monkeypatch.setenv(name, "")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.openai_base_url is None
    assert settings.qdrant_api_key is None
    assert settings.qdrant_url is None
    assert settings.qdrant_write_consistency_factor is None
    assert settings.api_keys == []


@pytest.mark.integration
def test_collection_reports_the_vector_layout_from_settings(
    qdrant: QdrantClient, settings: Settings, embeddings: LocalEmbeddings
) -> None:
    configured = layout_settings(
        settings,
        qdrant_on_disk=True,
        qdrant_quantization="scalar",
        qdrant_hnsw_m=32,
        qdrant_hnsw_ef_construct=200,
    )
    ensure_collection(qdrant, configured, embeddings.dimension)

    params = qdrant.get_collection(configured.qdrant_collection).config.params
    assert isinstance(params.vectors, dict)
    dense = params.vectors[DENSE_VECTOR]
    assert (dense.size, dense.distance) == (embeddings.dimension, models.Distance.COSINE)
    assert dense.on_disk is True
    assert dense.hnsw_config is not None
    assert (dense.hnsw_config.m, dense.hnsw_config.ef_construct) == (32, 200)
    assert isinstance(dense.quantization_config, models.ScalarQuantization)
    assert dense.quantization_config.scalar.type == models.ScalarType.INT8
    assert dense.quantization_config.scalar.always_ram is True
    assert params.sparse_vectors is not None
    assert params.sparse_vectors[SPARSE_VECTOR].modifier == models.Modifier.IDF


@pytest.mark.integration
def test_ensure_collection_creates_an_index_for_each_filter_field(
    qdrant: QdrantClient, settings: Settings, embeddings: LocalEmbeddings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The embedded store reports no payload indexes, so record what ensure_collection asks the client for.
    created = record_index_requests(qdrant, monkeypatch)
    ensure_collection(qdrant, settings, embeddings.dimension)
    assert created == INDEXED_FIELDS
    assert {"metadata.source", "metadata.chapter"} <= set(created)


def record_index_requests(qdrant: QdrantClient, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The payload indexes asked of `qdrant` from now on (passed on to the real client)."""
    created: dict[str, Any] = {}
    create_payload_index = qdrant.create_payload_index

    def recording(collection_name: str, field_name: str, field_schema: Any = None, **kwargs: Any) -> Any:
        created[field_name] = field_schema
        return create_payload_index(collection_name, field_name=field_name, field_schema=field_schema, **kwargs)

    monkeypatch.setattr(qdrant, "create_payload_index", recording)
    return created


def test_missing_payload_indexes_are_the_filter_fields_a_payload_schema_lacks() -> None:
    keyword = models.PayloadIndexInfo(data_type=models.PayloadSchemaType.KEYWORD, points=0)
    assert missing_payload_indexes({}) == INDEXED_FIELDS
    assert missing_payload_indexes({field: keyword for field in INDEXED_FIELDS}) == {}
    partly = {"metadata.source": keyword, "metadata.unrelated": keyword}
    assert missing_payload_indexes(partly) == {k: v for k, v in INDEXED_FIELDS.items() if k != "metadata.source"}


@pytest.mark.integration
def test_collection_made_without_indexes_is_asked_for_each_on_ensure_since_the_embedded_store_reports_none(
    qdrant: QdrantClient, settings: Settings, embeddings: LocalEmbeddings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Made as an older version (or a person) would: the same layout, no payload indexes.
    qdrant.create_collection(settings.qdrant_collection, **collection_layout(settings, embeddings.dimension))
    assert qdrant.get_collection(settings.qdrant_collection).payload_schema == {}  # what the embedded store reports
    created = record_index_requests(qdrant, monkeypatch)
    ensure_collection(qdrant, settings, embeddings.dimension)
    assert created == INDEXED_FIELDS


@pytest.mark.integration
def test_payload_index_refused_by_qdrant_is_a_warning_not_a_failed_start(
    qdrant: QdrantClient,
    settings: Settings,
    embeddings: LocalEmbeddings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    qdrant.create_collection(settings.qdrant_collection, **collection_layout(settings, embeddings.dimension))

    def refusing(collection_name: str, field_name: str, **kwargs: Any) -> Any:
        # what a server answers a key that may read but not manage collections
        raise UnexpectedResponse(403, "Forbidden", b'{"status":{"error":"forbidden"}}', Headers())

    monkeypatch.setattr(qdrant, "create_payload_index", refusing)
    with caplog.at_level(logging.WARNING, logger="chains.vectorstore"):
        ensure_collection(qdrant, settings, embeddings.dimension)
    refused = [r.getMessage() for r in caplog.records if "could not create the payload index" in r.getMessage()]
    assert len(refused) == len(INDEXED_FIELDS)
    assert "metadata.source" in refused[0] and settings.qdrant_collection in refused[0]


@pytest.mark.integration
def test_existing_collection_of_another_vector_size_fails_naming_both_sizes(
    qdrant: QdrantClient, settings: Settings, embeddings: LocalEmbeddings
) -> None:
    ensure_collection(qdrant, settings, 8)
    with pytest.raises(CollectionMismatch, match=rf"stores 8-dimensional .* makes {embeddings.dimension}-dimensional"):
        ensure_collection(qdrant, settings, embeddings.dimension)


@pytest.mark.integration
def test_existing_collection_keeps_its_layout_when_settings_change(
    qdrant: QdrantClient, settings: Settings, embeddings: LocalEmbeddings
) -> None:
    ensure_collection(qdrant, settings, embeddings.dimension)
    ensure_collection(qdrant, layout_settings(settings, qdrant_quantization="binary"), embeddings.dimension)
    dense = qdrant.get_collection(settings.qdrant_collection).config.params.vectors[DENSE_VECTOR]  # type: ignore[index]
    assert dense.quantization_config is None
