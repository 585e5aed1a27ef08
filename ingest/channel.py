"""Where a running `rag-api` takes ingest from `rag-ingest`, and the secret file that says who may hand it over.

The embedded store opens in one process at a time, so while the API server holds it `rag-ingest` hands its work
to the server (ingest/handoff.py, src/rag_api/ingest_channel.py) over a Unix socket in the store's own folder:
`QDRANT_PATH/.bookrag-ingest/socket`, beside `secret.json` (the server's pid, its collection and a random
secret). Nothing is configured: both sides derive the place from QDRANT_PATH.

Who may use it: the folder is 0700 and the secret file 0600, both the server user's, so only that user (and root)
can reach the socket or read the secret; the server also checks the caller's uid on the socket (SO_PEERCRED) and
compares the secret in constant time, and the CLI checks that the server on the socket runs as the file's owner.
So a caller could read the book's files anyway: the server reads them as that same user, under the path checks
of a local run, and no other local user can make it read (and serve) a file of the owner's.

On purpose: the secret file is written whole under a temporary name and renamed, so a reader never sees half of
one; the server removes both files when it stops; files left by a server that died (its pid gone, or nothing
answering on the socket) are never trusted nor reused; a folder or secret file with wider permissions, another
owner or a symbolic link in its place is refused, not read.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import socket
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CHANNEL_FOLDER = ".bookrag-ingest"
SECRET_NAME = "secret.json"
SOCKET_NAME = "socket"
FORMAT = 1
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # one request line: the job (at most 10,000 paths of a few hundred bytes)
_MAX_SECRET_FILE_BYTES = 64 * 1024
_UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the NUL


class ChannelRefused(Exception):
    """A server takes ingest for this store, but not from this user, or its files cannot be trusted."""


class ChannelUnavailable(Exception):
    """The server cannot open the channel (another server holds it, or its folder is not the server user's)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A running server's channel, as its secret file describes it."""

    folder: Path
    pid: int
    secret: str
    collection: str
    owner: int  # uid of the secret file's owner: the user the server runs as

    @property
    def socket_path(self) -> Path:
        return self.folder / SOCKET_NAME


def channel_folder(store: Path) -> Path:
    return store / CHANNEL_FOLDER


def encode(message: dict[str, Any]) -> bytes:
    """One message of the channel: a JSON object on one line (NDJSON)."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """`path` as an AF_UNIX address: itself, or, past sun_path's 108 bytes (a deep QDRANT_PATH), the same file
    reached through an open handle on its folder (`/proc/self/fd/N/name`, Linux)."""
    if len(os.fsencode(path)) <= _UNIX_PATH_MAX:
        yield str(path)
        return
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _untrusted(path: Path, why: str) -> ChannelRefused:
    return ChannelRefused(
        f"the ingest secret {path} of the server holding this store is not trusted ({why}): only a file of mode "
        "0600, owned by the store's owner, in a folder of mode 0700 is. Stop the API server and start it again to "
        "write a new one; nothing was sent to it."
    )


def read_endpoint(store: Path) -> Endpoint | None:
    """The channel described in the store's secret file; None when there is none (or it is damaged: not used).

    Raises `ChannelRefused` when this user may not read it (a server of another user, or a file made unreadable)
    or when it cannot be trusted.
    """
    folder = channel_folder(store)
    path = folder / SECRET_NAME
    try:
        folder_info = os.lstat(folder)
    except (FileNotFoundError, PermissionError):  # no server; or the store itself is closed to this user
        return None
    if not stat.S_ISDIR(folder_info.st_mode):
        raise _untrusted(path, f"{folder} is not a folder")
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise _cannot_read(store, path, folder_info.st_uid) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _untrusted(path, "it is a symbolic link") from exc
        raise
    with os.fdopen(handle, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _untrusted(path, "not a regular file")
        if info.st_uid != folder_info.st_uid:
            raise _untrusted(path, f"owned by uid {info.st_uid}, its folder by uid {folder_info.st_uid}")
        if info.st_mode & 0o077 or folder_info.st_mode & 0o077:
            modes = f"mode {stat.S_IMODE(info.st_mode):04o}, folder {stat.S_IMODE(folder_info.st_mode):04o}"
            raise _untrusted(path, f"readable by others: {modes}")
        raw = file.read(_MAX_SECRET_FILE_BYTES)
    try:
        data = json.loads(raw)
        endpoint = Endpoint(folder, int(data["pid"]), str(data["secret"]), str(data["collection"]), info.st_uid)
        if data.get("format") != FORMAT or len(endpoint.secret) < 32:
            raise ValueError("unknown format")
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring %s: %s", path, exc)
        return None
    return endpoint


def _cannot_read(store: Path, path: Path, owner: int) -> ChannelRefused:
    return ChannelRefused(
        f"the API server holding the embedded store at {store} takes ingest only from the store's owner (uid "
        f"{owner}): its "
        f"ingest secret {path} cannot be read by this user (uid {os.geteuid()}). Run rag-ingest as the user the "
        "server runs as, or ingest through POST /admin/ingest with an admin key (docs/ingest.md)."
    )


def connect(endpoint: Endpoint, timeout_s: float = 5.0) -> socket.socket | None:
    """A connection to the server's socket, checked to be the secret file owner's; None when the files are stale
    (the server died: its pid is gone or nothing answers on the socket)."""
    if not _pid_alive(endpoint.pid):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        with unix_address(endpoint.socket_path) as address:
            sock.connect(address)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError:
        sock.close()
        raise
    _, uid, _ = peer_credentials(sock)
    if uid != endpoint.owner:
        sock.close()
        raise ChannelRefused(
            f"the process on {endpoint.socket_path} runs as uid {uid}, not as the secret file's owner (uid "
            f"{endpoint.owner}): not the API server; nothing was sent to it"
        )
    sock.settimeout(None)  # an ingest takes as long as it takes; the server reports as it goes
    return sock


def find_server(store: Path) -> tuple[Endpoint, socket.socket] | None:
    """The live server taking ingest for `store`, connected; None when no server runs (stale files included)."""
    endpoint = read_endpoint(store)
    if endpoint is None:
        return None
    sock = connect(endpoint)
    if sock is None:
        logger.debug("stale ingest channel files in %s (pid %d not serving): not used", endpoint.folder, endpoint.pid)
        return None
    return endpoint, sock


@dataclass(slots=True)
class ClaimedChannel:
    """The server's side: the listening socket and the secret, until `release`."""

    folder: Path
    listener: socket.socket
    secret: str
    _socket_inode: int
    _released: bool = False

    def remove_files(self) -> None:
        """Remove the secret file (if it is still this server's) and the socket's file: no new caller finds them."""
        if self._released:
            return
        self._released = True
        path = self.folder / SECRET_NAME
        try:
            current = json.loads(path.read_bytes()).get("secret")
        except (OSError, ValueError, AttributeError):
            current = None
        if current == self.secret:
            path.unlink(missing_ok=True)
        socket_path = self.folder / SOCKET_NAME
        with contextlib.suppress(OSError):
            if os.lstat(socket_path).st_ino == self._socket_inode:
                socket_path.unlink()

    def release(self) -> None:
        """Remove the files and close the listening socket (when nothing else serves it)."""
        self.remove_files()
        self.listener.close()


def claim_channel(store: Path, collection: str) -> ClaimedChannel:
    """Open the store's channel for this process: make its folder (0700), replace stale files, listen on the
    socket (0600), then write the secret file atomically (0600). Raises `ChannelUnavailable` saying why not."""
    folder = channel_folder(store)
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise ChannelUnavailable(f"{folder} is not a folder owned by this user (uid {os.geteuid()})")
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)
    try:
        existing = read_endpoint(store)
    except ChannelRefused as exc:
        logger.warning("replacing the ingest channel files: %s", exc)
        existing = None
    if existing is not None:
        live = connect(existing)
        if live is not None:
            live.close()
            raise ChannelUnavailable(f"another server (pid {existing.pid}) takes ingest for this store")
    for name in (SECRET_NAME, SOCKET_NAME):
        (folder / name).unlink(missing_ok=True)  # stale: their server is gone
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        socket_path = folder / SOCKET_NAME
        with unix_address(socket_path) as address:
            listener.bind(address)
        os.chmod(socket_path, 0o600)
        listener.listen(8)
        secret = secrets.token_urlsafe(32)
        _write_secret(folder, {"format": FORMAT, "pid": os.getpid(), "collection": collection, "secret": secret})
        inode = os.lstat(socket_path).st_ino
    except BaseException:
        listener.close()
        raise
    return ClaimedChannel(folder, listener, secret, inode)


def _write_secret(folder: Path, data: dict[str, Any]) -> None:
    temporary = folder / f".{SECRET_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(json.dumps(data).encode("utf-8"))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, folder / SECRET_NAME)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
