"""`rag-ingest`'s side of handing a job to the API server that holds the embedded store (ingest/channel.py says
where and who may; src/rag_api/ingest_channel.py is the server's side and describes the messages)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from ingest.channel import Endpoint, encode
from ingest.job import IngestJob, ProgressFigures


class HandoffFailed(Exception):
    """The server refused or could not finish the job: the message for the user, and the CLI's exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def hand_over(
    endpoint: Endpoint,
    sock: socket.socket,
    job: IngestJob,
    on_progress: Callable[[ProgressFigures], None],
    on_note: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Send `job` with the server's secret, relay its progress and notes; returns its reports (`as_dict`).

    Raises `HandoffFailed` with the server's message when it refuses or fails, or when it goes away midway.
    """
    with sock, sock.makefile("rb") as stream:
        try:
            sock.sendall(encode({"secret": endpoint.secret, "job": job.model_dump(mode="json")}))
        except OSError as exc:
            raise HandoffFailed(f"could not send the job to the API server (pid {endpoint.pid}): {exc}") from exc
        reports: list[dict[str, Any]] = []
        for event in _events(stream, endpoint):
            kind = event.get("event")
            if kind == "progress":
                on_progress(ProgressFigures(**{k: v for k, v in event.items() if k != "event"}))
            elif kind == "note":
                on_note(str(event["message"]))
            elif kind == "report":
                reports.append(event["report"])
            elif kind == "error":
                raise HandoffFailed(
                    f"the API server (pid {endpoint.pid}) refused or stopped the ingest: {event['message']}",
                    int(event.get("exit_code", 1)),
                )
            elif kind == "done":
                return reports
    raise HandoffFailed(
        f"the API server (pid {endpoint.pid}) closed the channel before the ingest finished (did it stop?). Every "
        "file keeps its previous complete version; run the same rag-ingest again."
    )


def _events(stream: BinaryIO, endpoint: Endpoint) -> Iterator[dict[str, Any]]:
    try:
        for line in stream:
            event = json.loads(line)
            if isinstance(event, dict):
                yield event
    except (OSError, ValueError) as exc:
        raise HandoffFailed(
            f"the channel to the API server (pid {endpoint.pid}) broke ({type(exc).__name__}: {exc}). Every file "
            "keeps its previous complete version; run the same rag-ingest again."
        ) from exc
