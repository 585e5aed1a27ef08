"""`rag-api`: serve the API with uvicorn, in one process or several workers.

With several workers uvicorn starts each one from an import string, so each builds its own app (settings,
clients, models) through `app_from_environment`. Workers share nothing but the Qdrant server: the embedded store
opens in one process only, hence the refusal below.
"""

from __future__ import annotations

import click
import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from chains.settings import Settings, settings_error_message
from chains.vectorstore import local_store_problem
from rag_api.app import create_app
from rag_api.logging_setup import configure_logging
from rag_api.server import configure_header_timeout, uvicorn_options

# uvicorn restarts a worker that does not answer its health check within this time (its default is 5 s). A
# starting worker imports torch and loads the embedding model, which on a busy CPU takes longer than that.
WORKER_HEALTHCHECK_TIMEOUT_S = 60


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--host", envvar="HOST", default="127.0.0.1", help="Interface to listen on.")
@click.option("--port", envvar="PORT", type=click.IntRange(1, 65535), default=8000, help="Port to listen on.")
@click.option(
    "--workers",
    envvar="WEB_CONCURRENCY",
    type=click.IntRange(1, 64),
    default=1,
    help="Worker processes. More than one needs a Qdrant server (QDRANT_URL); each loads its own embedding model.",
)
def main(host: str, port: int, workers: int) -> None:
    """Serve the book's question-answering API (settings from the environment or `.env`)."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise click.UsageError(settings_error_message(exc)) from exc
    if workers > 1 and not settings.uses_qdrant_server:
        raise click.UsageError(
            f"--workers {workers} (WEB_CONCURRENCY) needs a Qdrant server: the embedded store at "
            f"{settings.qdrant_path} opens in one process only. Start one (docker compose up -d qdrant) and set "
            "QDRANT_URL=http://127.0.0.1:6333, or serve with --workers 1."
        )
    if not settings.uses_qdrant_server and (problem := local_store_problem(settings.qdrant_path, deep=True)):
        raise click.ClickException(problem)  # exit code 1, one paragraph, no traceback
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    options = uvicorn_options(settings)  # header timeout, proxy headers from TRUSTED_PROXIES only
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False, **options)
        return
    uvicorn.run(
        "rag_api.main:app_from_environment",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_TIMEOUT_S,
        **options,
    )


def app_from_environment() -> FastAPI:
    """The app of one worker process: settings read again from the environment, logging configured again."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    configure_header_timeout(settings)
    return create_app(settings)


if __name__ == "__main__":
    main()
