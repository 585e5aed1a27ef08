"""Settings: defaults that run offline, and wrong values that fail naming the variable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chains.settings import DEFAULT_COLLECTION, Settings, settings_error_message


def test_defaults_need_no_keys_or_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QDRANT_URL", raising=False)  # set when the suite runs against a server
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.qdrant_url is None and settings.qdrant_collection == DEFAULT_COLLECTION
    assert settings.embedding_provider == "local" and not settings.chat_model_configured


def test_cors_origins_from_a_comma_separated_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://book.example, http://localhost:3000")
    assert Settings(_env_file=None).cors_origins == ["https://book.example", "http://localhost:3000"]  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("variable", "value"),
    [("RETRIEVAL_K", "0"), ("QDRANT_URL", "not a url"), ("LOG_LEVEL", "loud"), ("EMBEDDING_PROVIDER", "magic")],
)
def test_wrong_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert variable in settings_error_message(info.value)


def test_a_wrong_value_names_only_its_own_variable_not_the_defaults_it_held_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # The cosine cuts default by the embedding model; one bad setting used to list all four of them as invalid too.
    monkeypatch.setenv("RETRIEVAL_SECTION_WHOLE_UP_TO", "abc")
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)  # type: ignore[call-arg]
    message = settings_error_message(info.value)
    assert message.startswith("invalid setting: RETRIEVAL_SECTION_WHOLE_UP_TO: Input should be a valid integer")
    assert ";" not in message and "THRESHOLD" not in message and "REFUSAL" not in message


def test_overlap_must_be_smaller_than_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNK_SIZE", "100")
    monkeypatch.setenv("CHUNK_OVERLAP", "100")
    with pytest.raises(ValidationError, match="CHUNK_OVERLAP"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_wildcard_cors_cannot_mix_with_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "*,https://a.example")
    with pytest.raises(ValidationError, match="CORS_ORIGINS"):
        Settings(_env_file=None)  # type: ignore[call-arg]
