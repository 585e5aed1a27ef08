"""The chat model: any provider LangChain's `init_chat_model` knows (`CHAT_MODEL=provider:model`), or by default
`ChatOpenAI` against OpenAI or any OpenAI-compatible server (`CHAT_MODEL=gpt-4o-mini` + OPENAI_BASE_URL), or none
(extractive answers).

On purpose: a name without a provider prefix is always the OpenAI-compatible endpoint, never guessed from the name
(a local server's `llama3` is not a provider); a prefix is a provider when it is a plain identifier, so an Ollama
tag such as `llama3:8b` on an OpenAI-compatible server is written `openai:llama3:8b`. A provider other than
`openai` reads its own credentials and base URL from its own environment variables (`ANTHROPIC_API_KEY`,
`ANTHROPIC_BASE_URL`...) and needs its package installed (an optional extra: `pip install "bookrag[anthropic]"`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel

from chains.errors import ConfigurationError
from chains.settings import Settings

# Local servers (Ollama, llama.cpp, vLLM) accept any key, but the OpenAI client insists on one.
_PLACEHOLDER_KEY = "not-needed"
OPENAI = "openai"
_PROVIDER = re.compile(r"^([a-z][a-z0-9_-]*):(.+)$")


@dataclass(frozen=True, slots=True)
class ChatModelName:
    """`CHAT_MODEL` split into its provider (`openai` when there is no prefix) and the provider's model name."""

    provider: str
    model: str

    @classmethod
    def parse(cls, value: str) -> ChatModelName:
        match = _PROVIDER.match(value.strip())
        if match is None:
            return cls(OPENAI, value.strip())
        return cls(match.group(1).replace("-", "_"), match.group(2))


def build_chat_model(settings: Settings) -> BaseChatModel | None:
    """The configured chat model, or None when CHAT_MODEL is unset; a provider that cannot be used (unknown, or
    its package not installed) is a `ConfigurationError` naming CHAT_MODEL."""
    if settings.chat_model is None:
        return None
    name = ChatModelName.parse(settings.chat_model)
    if name.provider == OPENAI:
        return _openai_compatible(name.model, settings)
    from langchain.chat_models import init_chat_model

    kwargs: dict[str, Any] = {
        "temperature": settings.chat_temperature,
        "timeout": settings.chat_timeout_s,
        "max_retries": settings.chat_max_retries,
    }
    if settings.chat_max_tokens is not None:
        kwargs["max_tokens"] = settings.chat_max_tokens
    try:
        model: BaseChatModel = init_chat_model(name.model, model_provider=name.provider, **kwargs)
        return model
    except ImportError as exc:
        raise ConfigurationError(
            f"CHAT_MODEL={settings.chat_model}: the package of provider {name.provider!r} is not installed ({exc})"
        ) from exc
    except ValueError as exc:
        raise ConfigurationError(
            f"CHAT_MODEL={settings.chat_model}: {exc}. For a model of an OpenAI-compatible server whose name has a "
            f"colon, write CHAT_MODEL=openai:{settings.chat_model}"
        ) from exc


def _openai_compatible(model: str, settings: Settings) -> BaseChatModel:
    from langchain_openai import ChatOpenAI

    kwargs: dict[str, Any] = {
        "model": model,
        "temperature": settings.chat_temperature,
        "timeout": settings.chat_timeout_s,
        "max_retries": settings.chat_max_retries,
        "streaming": True,
        "stream_usage": True,
        # The idle limit between streamed chunks is enforced once, cheaply, by chains.guard.ModelGate
        # (STREAM_IDLE_TIMEOUT_S); ChatOpenAI's own would wrap every chunk in `asyncio.wait_for`, a task per token.
        "stream_chunk_timeout": None,
        "api_key": settings.openai_api_key.get_secret_value() if settings.openai_api_key else _PLACEHOLDER_KEY,
    }
    if settings.openai_base_url is not None:
        kwargs["base_url"] = str(settings.openai_base_url)
    if settings.chat_max_tokens is not None:
        kwargs["max_tokens"] = settings.chat_max_tokens
    return ChatOpenAI(**kwargs)
