"""Tests that only make sense against a Qdrant server (`qdrant_server`): what the embedded store cannot show.

Without QDRANT_URL they are collected and skipped with the command that starts a server (tests/conftest.py).
The rest of the integration suite runs against the same server when QDRANT_URL is set.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from chains.vectorstore import DENSE_VECTOR, INDEXED_FIELDS, collection_layout, ensure_collection
from tests.conftest import SERVER_SKIP_REASON

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.qdrant_server
def test_server_creates_the_collection_with_shards_replication_and_indexes_from_settings(
    qdrant: QdrantClient, settings: Settings, embeddings: LocalEmbeddings
) -> None:
    configured = settings.model_copy(
        update={
            "qdrant_shard_number": 2,
            "qdrant_replication_factor": 2,
            "qdrant_write_consistency_factor": 1,
            "qdrant_on_disk": True,
            "qdrant_quantization": "scalar",
        }
    )
    ensure_collection(qdrant, configured, embeddings.dimension)

    info = qdrant.get_collection(configured.qdrant_collection)
    params = info.config.params
    assert params.shard_number == 2
    assert params.replication_factor == 2
    assert params.write_consistency_factor == 1
    assert params.on_disk_payload is True
    assert isinstance(params.vectors, dict)
    assert isinstance(params.vectors[DENSE_VECTOR].quantization_config, models.ScalarQuantization)
    assert set(info.payload_schema) == set(INDEXED_FIELDS)
    assert all(info.payload_schema[f].data_type == schema for f, schema in INDEXED_FIELDS.items())
    # A standalone server holds every shard itself; a cluster spreads them over its peers.
    cluster = qdrant.collection_cluster_info(configured.qdrant_collection)
    assert cluster.shard_count == 2
    shards = [*cluster.local_shards, *cluster.remote_shards]
    assert {shard.shard_id for shard in shards} == {0, 1}


@pytest.mark.qdrant_server
def test_server_collection_made_without_payload_indexes_gets_them_on_ensure(
    qdrant: QdrantClient, settings: Settings, embeddings: LocalEmbeddings
) -> None:
    name = settings.qdrant_collection
    qdrant.create_collection(name, **collection_layout(settings, embeddings.dimension))  # as an older version did
    assert qdrant.get_collection(name).payload_schema == {}
    ensure_collection(qdrant, settings, embeddings.dimension)
    # An existing collection's indexes are built without waiting (start-up is not held): poll, bounded.
    for _ in range(100):
        schema = qdrant.get_collection(name).payload_schema
        if set(schema) >= set(INDEXED_FIELDS):
            break
        time.sleep(0.1)
    assert {field: schema[field].data_type for field in INDEXED_FIELDS} == INDEXED_FIELDS


@pytest.mark.qdrant_server
def test_server_with_an_api_key_refuses_a_client_without_it(settings: Settings) -> None:
    if settings.qdrant_api_key is None:
        pytest.skip("the server's API key is unknown here: start it and run the tests with QDRANT_API_KEY set")
    anonymous = QdrantClient(url=str(settings.qdrant_url), check_compatibility=False)
    try:
        with pytest.raises(UnexpectedResponse) as refused:
            anonymous.get_collections()
        assert refused.value.status_code in (401, 403)
    finally:
        anonymous.close()


def test_server_tests_are_skipped_with_how_to_start_one_when_qdrant_url_is_unset() -> None:
    # a wide terminal, so that the summary line shows the whole reason
    env = {**{k: v for k, v in os.environ.items() if k != "QDRANT_URL"}, "COLUMNS": "400"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-m", "qdrant_server", __file__],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 skipped" in run.stdout
    assert SERVER_SKIP_REASON in run.stdout
