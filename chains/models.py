"""The chat model: `ChatOpenAI` against OpenAI or any OpenAI-compatible server, or none (extractive answers)."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel

from chains.settings import Settings

# Local servers (Ollama, llama.cpp, vLLM) accept any key, but the OpenAI client insists on one.
_PLACEHOLDER_KEY = "not-needed"


def build_chat_model(settings: Settings) -> BaseChatModel | None:
    """The configured chat model, or None when CHAT_MODEL is unset."""
    if settings.chat_model is None:
        return None
    from langchain_openai import ChatOpenAI

    kwargs: dict[str, Any] = {
        "model": settings.chat_model,
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
