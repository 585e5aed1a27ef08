"""The server's end of the local ingest channel (ingest/channel.py): `rag-ingest`, run by the store's owner while
this server holds the embedded store, hands its job here and reads the progress back.

One connection, one job. The CLI sends one line, `{"secret": ..., "job": {...}}` (`ingest.job.IngestJob`); the
server answers with one JSON object a line: `started`, then `note` and `progress` events as the job goes, a
`report` per report (`IngestReport.as_dict`), and last `done` or `error` (`code`, `message`, `exit_code`: the
CLI's own exit code for it). Before reading anything the caller's uid is checked on the socket (the server's own,
or root); the secret is compared in constant time; the request must arrive within HEADER_TIMEOUT_S.

The job runs as POST /admin/ingest's does (`admin.run_exclusive`: one ingest at a time, in a worker thread, on
the server's client with its lock shared with queries, the same per-file limits and parse worker), with the path
rules of a local `rag-ingest` run (`ingest.job.run_job`), since the caller is the store's owner. A caller that
goes away (Ctrl-C) stops the job at its next file or batch, as a server shutdown does; every file keeps its
previous complete version.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import threading
from typing import Any

from fastapi import FastAPI
from pydantic import ValidationError

from chains.embeddings import embedding_dimension
from chains.errors import IngestStopped, RagError
from chains.settings import Settings
from chains.vectorstore import ensure_collection
from ingest.book_root import BookRootError
from ingest.channel import (
    MAX_REQUEST_BYTES,
    ChannelUnavailable,
    ClaimedChannel,
    claim_channel,
    encode,
    peer_credentials,
)
from ingest.indexer import Indexer, IngestReport
from ingest.job import IngestJob, JobUsageError, ProgressFigures, re_embedding_note, run_job
from rag_api.errors import ApiError
from rag_api.routes.admin import ingest_stop, run_exclusive
from rag_api.state import AppState

logger = logging.getLogger(__name__)

_CLOSE_WAIT_S = 30.0  # at shutdown, how long a running job may take to stop at its next file or batch


class _StopEither(threading.Event):
    """Set by the channel when its caller left, or by the server's shutdown event: either stops the job."""

    def __init__(self, shutdown: threading.Event) -> None:
        super().__init__()
        self._shutdown = shutdown

    def is_set(self) -> bool:
        return super().is_set() or self._shutdown.is_set()


class _Refusal(Exception):
    def __init__(self, code: str, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.event = {"event": "error", "code": code, "message": message, "exit_code": exit_code}


class IngestChannel:
    """The Unix socket server taking `rag-ingest` jobs for the store this server holds."""

    def __init__(self, app: FastAPI, claimed: ClaimedChannel, settings: Settings) -> None:
        self._app = app
        self._claimed = claimed
        self._settings = settings
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    @classmethod
    async def open(cls, app: FastAPI, settings: Settings) -> IngestChannel | None:
        """Claim the store's channel and serve it; None (logged) when it cannot be had."""
        try:
            claimed = await asyncio.to_thread(claim_channel, settings.qdrant_path, settings.qdrant_collection)
        except (ChannelUnavailable, OSError) as exc:
            logger.warning("rag-ingest cannot hand work to this server (%s): it will say the store is taken", exc)
            return None
        channel = cls(app, claimed, settings)
        try:
            channel._server = await asyncio.start_unix_server(
                channel._serve, sock=claimed.listener, limit=MAX_REQUEST_BYTES
            )
        except Exception:
            claimed.release()
            raise
        logger.info("rag-ingest hands its work to this server over %s", claimed.folder)
        return channel

    async def close(self) -> None:
        """Remove the files first (no new caller finds them), stop listening, let a running job stop."""
        self._claimed.remove_files()
        if self._server is not None:
            self._server.close()  # closes the listening socket too
        if self._handlers:
            _, pending = await asyncio.wait(self._handlers, timeout=_CLOSE_WAIT_S)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._handle(reader, writer)
        except _Refusal as refusal:
            logger.warning("refused a rag-ingest hand-over: %s", refusal)
            with contextlib.suppress(ConnectionError):
                writer.write(encode(refusal.event))
                await writer.drain()
        except ConnectionError:
            logger.info("rag-ingest went away before its ingest finished")
        except Exception:
            logger.exception("the local ingest channel failed")
            with contextlib.suppress(ConnectionError):
                message = "the server failed running the ingest (see its log)"
                writer.write(encode({"event": "error", "code": "internal_error", "message": message, "exit_code": 1}))
                await writer.drain()
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> IngestJob | None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=self._settings.header_timeout_s)
        except TimeoutError as exc:
            raise _Refusal("timeout", f"no request within {self._settings.header_timeout_s:g} s") from exc
        except ValueError as exc:  # asyncio's limit on one line
            raise _Refusal("too_large", f"the request is over {MAX_REQUEST_BYTES} bytes") from exc
        if not line:
            return None  # connected and left: someone checking that this server is alive
        try:
            message = json.loads(line)
            secret = message["secret"]
            if not isinstance(secret, str):
                raise TypeError("secret is not a string")
        except (ValueError, KeyError, TypeError) as exc:
            raise _Refusal("bad_request", "the request is not the JSON line rag-ingest sends") from exc
        if not hmac.compare_digest(secret.encode("utf-8"), self._claimed.secret.encode("utf-8")):
            raise _Refusal(
                "forbidden",
                "the secret does not match this server's: read it again from the store's secret file (only the "
                "store's owner can) or restart the server",
            )
        try:
            return IngestJob.model_validate(message.get("job"))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'job'}: {e['msg']}" for e in exc.errors())
            raise _Refusal("invalid_job", f"invalid ingest job: {problems}", exit_code=2) from exc

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_pid, peer_uid, _ = peer_credentials(writer.get_extra_info("socket"))
        if peer_uid not in (os.geteuid(), 0):
            raise _Refusal(
                "forbidden", f"this server takes ingest only from its own user (uid {os.geteuid()}), not uid {peer_uid}"
            )
        job = await self._read_request(reader)
        if job is None:
            return
        state: AppState = self._app.state.rag
        if job.collection != state.settings.qdrant_collection:
            raise _Refusal(
                "other_collection",
                f"the API server holding the store serves collection {state.settings.qdrant_collection!r}, not "
                f"{job.collection!r}: stop it to ingest into another collection, or use a Qdrant server (QDRANT_URL)",
            )
        if state.qdrant_needs_reopen:
            raise _Refusal("qdrant_unavailable", f"the API server could not open the store: {state.collection_error}")
        logger.info("rag-ingest (pid %d) hands over an ingest of %d path(s)", peer_pid, len(job.paths))
        await self._send(writer, {"event": "started", "pid": os.getpid(), "collection": job.collection})
        await self._run(state, job, reader, writer)

    async def _run(
        self, state: AppState, job: IngestJob, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        stop = _StopEither(ingest_stop(self._app))

        def emit(event: dict[str, Any]) -> None:  # from the worker thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        def on_progress(figures: ProgressFigures) -> None:
            emit({"event": "progress", **dataclasses.asdict(figures)})

        def note(message: str) -> None:
            emit({"event": "note", "message": message})

        def work(indexer: Indexer) -> list[IngestReport]:
            if not job.dry_run:
                ensure_collection(indexer.client, state.settings, embedding_dimension(indexer.embeddings))
            switched = re_embedding_note(indexer.client, state.settings)
            if switched is not None:
                note(switched)
            return run_job(indexer, job, on_progress, note)

        hangup = asyncio.create_task(_wait_for_hangup(reader, stop))
        running = asyncio.create_task(run_exclusive(self._app, state, work, stop=stop, batch_size=job.batch_size))
        try:
            while not running.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({running, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    await self._send(writer, getter.result())
                else:
                    getter.cancel()
        except ConnectionError:
            stop.set()  # the caller left: the job stops at its next file or batch
            with contextlib.suppress(Exception):
                await running
            raise
        finally:
            hangup.cancel()
        try:
            reports = running.result()
        except ApiError as exc:  # another ingest is running
            raise _Refusal(exc.code, str(exc.detail)) from exc
        except IngestStopped as exc:
            raise _Refusal("stopped", str(exc)) from exc
        except (JobUsageError, BookRootError) as exc:
            raise _Refusal("usage", str(exc), exit_code=2) from exc
        except RagError as exc:
            raise _Refusal(exc.code, str(exc)) from exc
        for report in reports:
            await self._send(writer, {"event": "report", "report": report.as_dict()})
            logger.info("rag-ingest through the local channel: %s", report.summary())
        await self._send(writer, {"event": "done"})

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, event: dict[str, Any]) -> None:
        writer.write(encode(event))
        await writer.drain()


async def _wait_for_hangup(reader: asyncio.StreamReader, stop: threading.Event) -> None:
    """Set `stop` when the caller closes its end (it sends nothing after its request)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass
    stop.set()
