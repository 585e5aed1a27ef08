"""`rag-api`: several workers need a Qdrant server; the worker factory is importable by the string uvicorn uses."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from uvicorn.importer import import_from_string

from rag_api.main import app_from_environment, main


@pytest.mark.parametrize(
    ("args", "env", "named"), [(["--workers", "2"], {}, "--workers 2"), ([], {"WEB_CONCURRENCY": "3"}, "--workers 3")]
)
def test_several_workers_on_the_embedded_store_is_a_usage_error_naming_the_fix(
    args: list[str], env: dict[str, str], named: str
) -> None:
    result = CliRunner().invoke(main, args, env={"QDRANT_URL": None, **env})
    assert result.exit_code == 2
    assert named in result.output
    assert "needs a Qdrant server" in result.output
    assert "QDRANT_URL=http://127.0.0.1:6333" in result.output


def test_worker_factory_is_importable_by_its_uvicorn_string() -> None:
    assert import_from_string("rag_api.main:app_from_environment") is app_from_environment
