"""LangChain's standard vector-store suite against `BookVectorStore` on the embedded Qdrant.

The suite uses its own deterministic fake embeddings (`get_embeddings()`, six dimensions), so each test gets a
fresh collection made by the project's own `ensure_collection` for that size.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from chains.settings import Settings
from chains.vectorstore import build_qdrant_client, build_vector_store, ensure_collection
from tests.conftest import QDRANT_URL

pytestmark = pytest.mark.integration


class TestBookVectorStore(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Iterator[VectorStore]:  # type: ignore[override]
        values: dict[str, object] = {
            "qdrant_path": tmp_path / "qdrant",
            "qdrant_collection": f"standard_{uuid.uuid4().hex[:12]}",
        }
        if QDRANT_URL:
            values["qdrant_url"] = QDRANT_URL
        settings = Settings(_env_file=None, **values)  # type: ignore[arg-type]
        client = build_qdrant_client(settings)
        embeddings = self.get_embeddings()
        ensure_collection(client, settings, len(embeddings.embed_query("size")))
        try:
            yield build_vector_store(client, settings, embeddings)
        finally:
            if QDRANT_URL:
                client.delete_collection(settings.qdrant_collection)
            client.close()
