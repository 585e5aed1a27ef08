"""A real PostgreSQL server for the tests: a fresh cluster made by `initdb`, started on a free loopback port.

Skipped, with the reason, where the binaries are not on the machine. The cluster lives in a temporary folder and
is stopped (fast shutdown) when the session ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SKIP_REASON = "PostgreSQL's initdb/postgres are not on this machine (apt-get install postgresql)"


def postgres_binaries() -> tuple[str, str] | None:
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres:
        return initdb, postgres
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").exists() and (folder / "postgres").exists():
            return str(folder / "initdb"), str(folder / "postgres")
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres_user() -> dict[str, object]:
    """initdb and postgres refuse to run as root: run them as `nobody`-like uid of the cluster's owner."""
    if os.geteuid() != 0:
        return {}
    import pwd

    user = pwd.getpwnam("postgres") if _has_user("postgres") else pwd.getpwnam("nobody")
    return {"user": user.pw_uid, "group": user.pw_gid}


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip(SKIP_REASON)
    initdb, postgres = binaries
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'psycopg[binary]')")
    folder = Path(tempfile.mkdtemp(prefix="bookrag-pg-"))
    run_as = _as_postgres_user()
    if run_as:
        os.chown(folder, int(run_as["user"]), int(run_as["group"]))  # type: ignore[call-overload]
    data = folder / "data"
    subprocess.run(
        [initdb, "-D", str(data), "-U", "bookrag", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        **run_as,  # type: ignore[arg-type]
    )
    port = _free_port()
    server = subprocess.Popen(
        [postgres, "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(folder), "-F"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **run_as,  # type: ignore[arg-type]
    )
    url = f"postgresql+psycopg://bookrag@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    err = server.stderr.read().decode() if server.stderr else ""
                    pytest.fail(f"PostgreSQL did not start: {err[-2000:]}")
                time.sleep(0.1)
        _wait_ready(url)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                with engine.connect() as connection:
                    connection.execute(sa.text("select 1"))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        engine.dispose()
