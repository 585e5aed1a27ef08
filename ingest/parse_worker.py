"""Load files in a child process that can be killed: the per-file time and memory budget of ingest.

On purpose: a crafted file (a PDF content stream or a DOCX part that inflates a thousandfold) can keep a parser
busy for minutes and take gigabytes, and Python cannot stop a thread. So files are loaded in a child process,
forked from a forkserver that has already imported the parsers (a new child costs a fork, not the seconds of
importing `unstructured`). One child loads the files of a run one after another (`ParseWorker`): before each
file it caps its own address space at INGEST_MAX_PARSER_MB more than it holds then; the parent kills it at
INGEST_MAX_SECONDS_PER_FILE or when the ingest is stopped (shutdown), and whatever it held goes with it. A child
that was killed, died, or failed a file is not reused: the next file gets a fresh one, and a child is retired
after `_FILES_PER_CHILD` files so that what a parser leaks does not pile up. The limits that count pages,
characters, inflated bytes and elements run in the child too (`ingest.loaders.IngestLimits`), so most bombs are
named by those long before the clock runs out.

Why one child for many files: with a child per file, the benchmark book's 34 files took 7.3 s to load (215 ms a
file: fork, start, exit), with one child for all of them 2.5-2.9 s (load average 7; docs/benchmarks.md).
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


_FILES_PER_CHILD = 64
_NO_MEMORY = "needs more than {:,} MiB to parse (INGEST_MAX_PARSER_MB)"


def _cap_address_space(limits: IngestLimits) -> None:
    """Allow this process INGEST_MAX_PARSER_MB more address space than it holds now (the soft limit only, so
    that the next file can be given its own budget)."""
    start = _address_space()
    if start is not None:
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        cap = start + limits.max_parser_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))


def _lift_cap() -> None:
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def _load_one(loader: Loader[Any], path: Path, limits: IngestLimits) -> tuple[str, Any]:
    try:
        _cap_address_space(limits)
        return ("ok", loader(path, limits))
    except DocumentError as exc:
        return ("error", exc.reason)
    except MemoryError:
        return ("error", _NO_MEMORY.format(limits.max_parser_mb))
    except Exception as exc:  # a parser's own bug on a strange file: that file fails, the ingest goes on
        return ("error", f"the parser failed ({type(exc).__name__}: {exc})")


def _serve(connection: Connection, limits: IngestLimits) -> None:
    """The child: run each (loader, path) it is sent within the budget, and send back the result or the reason."""
    try:
        while True:
            try:
                request = connection.recv()
            except EOFError:
                return
            if request is None:
                return
            loader, path = request
            result = _load_one(loader, path, limits)
            try:
                connection.send(result)
            except MemoryError:
                connection.send(("error", _NO_MEMORY.format(limits.max_parser_mb)))
            finally:
                _lift_cap()
            if result[0] == "error":
                return  # the parent starts a fresh child for the next file
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


class ParseWorker:
    """Loads files one after another in a child process within the time and memory budget of `limits`.

    Used from one thread at a time; `close()` (or the `with` block) ends the child.
    """

    def __init__(self, limits: IngestLimits, stop: threading.Event | None = None) -> None:
        self.limits = limits
        self.stop = stop
        self._child: Any = None
        self._connection: Connection | None = None
        self._files = 0  # loaded by the current child

    @property
    def pid(self) -> int | None:
        """The current child's process id (None between children)."""
        return self._child.pid if self._child is not None else None

    def __enter__(self) -> ParseWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> tuple[Any, Connection]:
        mine, theirs = _context.Pipe(duplex=True)
        child = _context.Process(target=_serve, args=(theirs, self.limits), name="bookrag-parse", daemon=True)
        with _main_module_hidden():
            child.start()
        theirs.close()
        self._child, self._connection, self._files = child, mine, 0
        return child, mine

    def _end(self, kill: bool) -> None:
        """End the current child: asked to exit, or killed (a file over its budget, a stop)."""
        child, connection = self._child, self._connection
        self._child = self._connection = None
        if child is None or connection is None:
            return
        if not kill and child.is_alive():
            with contextlib.suppress(OSError):
                connection.send(None)
            child.join(5)
        if child.is_alive():
            child.kill()
        child.join()
        connection.close()

    def close(self) -> None:
        self._end(kill=False)

    def load(self, path: Path) -> LoadedDocument:
        """`load_document(path, limits)` in the child; raises `DocumentError` naming the limit when the file needs
        more, `IngestStopped` when `stop` is set (the child is killed in both cases)."""
        return self.run(load_document, path)

    def run(self, loader: Loader[_T], path: Path) -> _T:
        """`loader(path, limits)` in the child (a module-level function, or a partial of one: the child imports
        it by name); raises as `load` does."""
        if self._child is None or self._connection is None or not self._child.is_alive():
            self._end(kill=True)
            self._start()
        child, connection = self._child, self._connection
        assert connection is not None
        deadline = time.monotonic() + self.limits.max_seconds
        finished = False
        try:
            connection.send((loader, path))
            while not connection.poll(_POLL_S):
                if self.stop is not None and self.stop.is_set():
                    raise IngestStopped()
                if not child.is_alive() and not connection.poll():
                    raise DocumentError(
                        str(path),
                        f"the parser died (exit code {child.exitcode}); if the system killed it for memory, lower "
                        "INGEST_MAX_PARSER_MB or give the machine more",
                    )
                if time.monotonic() > deadline:
                    raise DocumentError(
                        str(path),
                        f"took longer than {self.limits.max_seconds:g} s to parse (INGEST_MAX_SECONDS_PER_FILE); "
                        "not ingested",
                    )
            try:
                kind, value = connection.recv()
            except EOFError as exc:
                raise DocumentError(str(path), f"the parser died (exit code {child.exitcode})") from exc
            finished = True
        except BrokenPipeError as exc:  # the child died between two files
            raise DocumentError(str(path), f"the parser died (exit code {child.exitcode})") from exc
        finally:
            if not finished:
                self._end(kill=True)
        self._files += 1
        if kind == "error" or self._files >= _FILES_PER_CHILD:
            self._end(kill=False)  # a child that failed a file exits by itself; a fresh one takes the next
        if kind == "error":
            raise DocumentError(str(path), str(value))
        loaded: _T = value
        return loaded


def load_isolated(path: Path, limits: IngestLimits, stop: threading.Event | None = None) -> LoadedDocument:
    """`load_document(path, limits)` in a child process of its own, within the time and memory budget of `limits`.

    Raises `DocumentError` naming the limit when the file needs more, `IngestStopped` when `stop` is set.
    """
    return run_isolated(load_document, path, limits, stop)


def run_isolated(loader: Loader[_T], path: Path, limits: IngestLimits, stop: threading.Event | None = None) -> _T:
    """`loader(path, limits)` (a module-level function: the child imports it by name) in a child process of its
    own, within the time and memory budget of `limits`."""
    with ParseWorker(limits, stop) as worker:
        return worker.run(loader, path)
