"""`rag-api`: serve the API with uvicorn."""

from __future__ import annotations

import click
import uvicorn
from pydantic import ValidationError

from chains.settings import Settings, settings_error_message
from rag_api.app import create_app
from rag_api.logging_setup import configure_logging


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--host", envvar="HOST", default="127.0.0.1", help="Interface to listen on.")
@click.option("--port", envvar="PORT", type=click.IntRange(1, 65535), default=8000, help="Port to listen on.")
def main(host: str, port: int) -> None:
    """Serve the book's question-answering API (settings from the environment or `.env`)."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise click.UsageError(settings_error_message(exc)) from exc
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
