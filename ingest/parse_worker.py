"""Load one file in a child process that can be killed: the per-file time and memory budget of ingest.

On purpose: a crafted file (a PDF content stream or a DOCX part that inflates a thousandfold) can keep a parser
busy for minutes and take gigabytes, and Python cannot stop a thread. So each file is loaded in a child process,
forked from a forkserver that has already imported the parsers (a file costs a fork, not the seconds of
importing `unstructured`). The child caps its own address space at INGEST_MAX_PARSER_MB more than it starts
with; the parent kills it at INGEST_MAX_SECONDS_PER_FILE or when the ingest is stopped (shutdown), and whatever
it held goes with it. The limits that count pages, characters, inflated bytes and elements run in the child too
(`ingest.loaders.IngestLimits`), so most bombs are named by those long before the clock runs out.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from chains.errors import DocumentError, IngestStopped
from ingest.loaders import IngestLimits, LoadedDocument, load_document

logger = logging.getLogger(__name__)

# Imported once by the forkserver, so that each child starts with the parsers loaded.
_PRELOAD = [
    "ingest.loaders",
    "ingest.parse_preload",
    "pypdf",
    "unstructured.partition.md",
    "unstructured.partition.html",
    "unstructured.partition.text",
    "unstructured.partition.docx",
    "ingest.epub",
    "ebooklib.epub",
]
_POLL_S = 0.05
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(_PRELOAD)
_T = TypeVar("_T")
Loader = Callable[[Path, IngestLimits], _T]


def _address_space() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _child(connection: Connection, path: Path, limits: IngestLimits, loader: Loader[Any] = load_document) -> None:
    try:
        start = _address_space()
        if start is not None:
            cap = start + limits.max_parser_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
        result: tuple[str, Any] = ("ok", loader(path, limits))
    except DocumentError as exc:
        result = ("error", exc.reason)
    except MemoryError:
        result = ("error", f"needs more than {limits.max_parser_mb:,} MiB to parse (INGEST_MAX_PARSER_MB)")
    except Exception as exc:  # a parser's own bug on a strange file: that file fails, the ingest goes on
        result = ("error", f"the parser failed ({type(exc).__name__}: {exc})")
    try:
        connection.send(result)
    except MemoryError:
        connection.send(("error", f"needs more than {limits.max_parser_mb:,} MiB to parse (INGEST_MAX_PARSER_MB)"))
    finally:
        connection.close()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """While a child starts, `__main__` shows no file or spec, so the child does not run the main script again.

    On purpose: the child runs a function of this module and needs nothing of `__main__`, but multiprocessing
    re-imports the main script in every child, and Python 3.11's forkserver never gets the path to preload it
    once. Under `rag-api` or `rag-ingest` that import is the whole app (a second or more per file).
    """
    main = sys.modules.get("__main__")
    saved: dict[str, Any] = {n: main.__dict__[n] for n in ("__file__", "__spec__") if main and n in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)
            if "__spec__" not in saved:
                main.__dict__.pop("__spec__", None)


def load_isolated(path: Path, limits: IngestLimits, stop: threading.Event | None = None) -> LoadedDocument:
    """`load_document(path, limits)` in a child process, within the time and memory budget of `limits`.

    Raises `DocumentError` naming the limit when the file needs more, `IngestStopped` when `stop` is set.
    """
    return run_isolated(load_document, path, limits, stop)


def run_isolated(loader: Loader[_T], path: Path, limits: IngestLimits, stop: threading.Event | None = None) -> _T:
    """`loader(path, limits)` (a module-level function: the child imports it by name) in a child process."""
    receiver, sender = _context.Pipe(duplex=False)
    child = _context.Process(target=_child, args=(sender, path, limits, loader), name="bookrag-parse", daemon=True)
    with _main_module_hidden():
        child.start()
    sender.close()
    deadline = time.monotonic() + limits.max_seconds
    try:
        while not receiver.poll(_POLL_S):
            if stop is not None and stop.is_set():
                raise IngestStopped()
            if not child.is_alive() and not receiver.poll():
                raise DocumentError(
                    str(path),
                    f"the parser died (exit code {child.exitcode}); if the system killed it for memory, lower "
                    "INGEST_MAX_PARSER_MB or give the machine more",
                )
            if time.monotonic() > deadline:
                raise DocumentError(
                    str(path),
                    f"took longer than {limits.max_seconds:g} s to parse (INGEST_MAX_SECONDS_PER_FILE); not ingested",
                )
        try:
            kind, value = receiver.recv()
        except EOFError as exc:
            raise DocumentError(str(path), f"the parser died (exit code {child.exitcode})") from exc
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receiver.close()
    if kind == "error":
        raise DocumentError(str(path), str(value))
    loaded: _T = value
    return loaded
