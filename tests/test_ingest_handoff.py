"""`rag-ingest` while a live `rag-api` holds the embedded store: the job is handed to the server over the store's
local channel (ingest/channel.py). Real processes throughout: the server through its entry point, the CLI as a
second process, the chapter read back through `/search`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ingest.channel import CHANNEL_FOLDER, SECRET_NAME, SOCKET_NAME
from tests.conftest import CLOSED_PORT_URL, QDRANT_URL, SAMPLE_CHAPTER
from tests.live import free_port
from tests.test_ingest_limits import MIB, pdf_with_content, text_operators

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(QDRANT_URL), reason="the hand-over is for the embedded store, which one process holds"),
]

BIN = Path(sys.executable).parent
ONNX_DIR = Path(__file__).resolve().parents[1] / "data" / "onnx"
NEW_CHAPTER = """# Espaliers

An espalier is a fruit tree trained flat against a wall on horizontal wires. The quincunx lattice of the
cordon-trained pear gives the most fruit in the smallest garden; tie each tier of branches in early autumn.
"""


@dataclass
class Served:
    """A live rag-api on a store in `home`, with the book in `home/book`."""

    home: Path
    env: dict[str, str]
    base: str
    process: subprocess.Popen[bytes]

    @property
    def book(self) -> Path:
        return self.home / "book"

    @property
    def channel(self) -> Path:
        return self.home / "qdrant" / CHANNEL_FOLDER

    def search(self, query: str) -> list[dict[str, object]]:
        answer = httpx.post(f"{self.base}/search", json={"query": query, "k": 5}, timeout=60)
        assert answer.status_code == 200, answer.text
        results: list[dict[str, object]] = answer.json()["results"]
        return results


def environment(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "QDRANT_PATH": str(home / "qdrant"),
        "QDRANT_COLLECTION": "handoff_book",
        "EMBEDDING_ONNX_DIR": str(ONNX_DIR),
        "DATABASE_URL": f"sqlite:///{home / 'records.sqlite3'}",
        "OPENAI_BASE_URL": CLOSED_PORT_URL,
        "RATE_LIMIT_PER_MINUTE": "0",
    }


def make_book(home: Path) -> None:
    book = home / "book"
    book.mkdir(parents=True)
    (book / "watering.md").write_text(SAMPLE_CHAPTER, encoding="utf-8")
    (book / "pruning.md").write_text(
        "# Pruning\n\nPrune apple trees in late winter, when they are dormant, cutting just above an outward-facing "
        "bud. Remove the three Ds first: dead, damaged and diseased wood.\n",
        encoding="utf-8",
    )


def rag_ingest(
    env: dict[str, str], cwd: Path, *args: str, without_file_override: bool = False
) -> subprocess.CompletedProcess[str]:
    """`rag-ingest ARGS` as its own process; `without_file_override`: as a user bound by file permissions even
    when the tests run as root (setpriv drops the capabilities that bypass them)."""
    command = [str(BIN / "rag-ingest"), *args]
    if without_file_override and os.geteuid() == 0:
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def start_server(home: Path) -> Served:
    env = environment(home)
    port = free_port()
    with (home / "server.log").open("ab") as log:
        process = subprocess.Popen(
            [str(BIN / "rag-api"), "--port", str(port)], cwd=home, env=env, stdout=log, stderr=log
        )
    served = Served(home, env, f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None and time.monotonic() < deadline, "rag-api did not start"
        try:
            if httpx.get(f"{served.base}/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return served


def stop_server(served: Served, sig: signal.Signals = signal.SIGTERM) -> None:
    if served.process.poll() is None:
        served.process.send_signal(sig)
        try:
            served.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The book ingested by a plain local run, then a server on its store."""
    home = tmp_path_factory.mktemp("handoff")
    make_book(home)
    first = rag_ingest(environment(home), home, "book", "-q")
    assert first.returncode == 0, first.stderr
    server = start_server(home)
    try:
        yield server
    finally:
        stop_server(server)


def test_a_new_chapter_goes_in_through_the_running_server_and_is_searchable_at_once(served: Served) -> None:
    assert not any("quincunx" in str(r["text"]) for r in served.search("quincunx lattice espalier"))
    (served.book / "ch9.md").write_text(NEW_CHAPTER, encoding="utf-8")

    result = rag_ingest(served.env, served.home, "book/ch9.md")  # a relative path, as an author types it

    assert result.returncode == 0, result.stderr
    assert f"the API server (pid {served.process.pid}) holds the store" in result.stderr
    assert "1/1 files read" in result.stderr and "chunks embedded" in result.stderr  # the server's progress
    assert "1 files (0 failed, 1 changed); chunks: 1 added" in result.stdout
    assert "open in another process" not in result.stderr and "Traceback" not in result.stderr
    hits = [r for r in served.search("quincunx lattice espalier") if "quincunx" in str(r["text"])]
    assert hits and hits[0]["metadata"]["source"] == "ch9.md"  # type: ignore[index]  # keyed in the book's root

    again = rag_ingest(served.env, served.home, "book", "-q")
    assert again.returncode == 0, again.stderr
    assert "3 files (0 failed, 0 changed)" in again.stdout  # the whole book: nothing to do


def test_a_bad_file_is_named_and_fails_the_run_while_the_rest_goes_in(served: Served, tmp_path: Path) -> None:
    chapters = served.book / "more"
    chapters.mkdir()
    (chapters / "grafting.md").write_text(
        "# Grafting\n\nA whip-and-tongue graft joins a scion of the marmalade pippin to its rootstock.\n",
        encoding="utf-8",
    )
    (chapters / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really")
    private = tmp_path / "private.txt"  # outside the book: a link must not pull it into the searchable store
    private.write_text("The vault combination is tangerine-4471.\n", encoding="utf-8")
    (chapters / "private.txt").symlink_to(private)

    result = rag_ingest(served.env, served.home, str(chapters), "-q")

    assert result.returncode == 1, result.stderr
    assert "failed: more/broken.pdf: " in result.stderr
    assert "failed: more/private.txt: a symbolic link leading outside the folder given: skipped, not read" in (
        result.stderr
    )
    assert "3 files (2 failed, 1 changed)" in result.stdout
    assert any("marmalade pippin" in str(r["text"]) for r in served.search("marmalade pippin scion graft"))
    assert not any("tangerine" in str(r["text"]) for r in served.search("vault combination tangerine"))


def test_a_cli_that_goes_away_stops_its_job_in_the_server(served: Served) -> None:
    """Ctrl-C on rag-ingest stops the server's job at once, as a local run would stop: the lock is free again long
    before the slow file (about a minute of parsing) could have finished."""
    slow = pdf_with_content(served.book / "a-slow.pdf", text_operators(4 * MIB))
    try:
        cli = subprocess.Popen(
            [str(BIN / "rag-ingest"), "book/a-slow.pdf", "-q"],
            cwd=served.home,
            env=served.env,
            stderr=subprocess.PIPE,
            text=True,
            # as a terminal delivers it: a suite started in the background (`cmd &`) passes SIGINT on ignored
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        assert cli.stderr is not None
        assert "holds the store" in cli.stderr.readline()  # handed over; the server is parsing it now
        time.sleep(2)
        cli.send_signal(signal.SIGINT)
        cli.wait(timeout=30)
        assert cli.returncode != 0
        (served.book / "ch12.md").write_text("# Sloes\n\nSloes are picked after the first frost.\n", "utf-8")
        deadline = time.monotonic() + 40  # far below the parse's minute: only a stopped job frees the lock
        while True:
            after = rag_ingest(served.env, served.home, "book/ch12.md", "-q")
            if "another ingest is running" not in after.stderr or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert after.returncode == 0, after.stderr
    finally:
        slow.unlink()
    assert any("first frost" in str(r["text"]) for r in served.search("sloes picked after frost"))
    assert not any(r["metadata"]["source"] == "a-slow.pdf" for r in served.search("word word word"))  # type: ignore[index]


def test_a_path_outside_the_remembered_root_is_a_usage_error_from_the_server(served: Served, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "cider.md").write_text("# Cider\n\nPress the apples after a week of sweating.\n", encoding="utf-8")
    result = rag_ingest(served.env, served.home, str(other), "-q")
    assert result.returncode == 2, result.stderr
    assert "outside the book root this collection remembers" in result.stderr and "--root" in result.stderr


def test_a_wrong_secret_is_refused_and_nothing_is_ingested(served: Served) -> None:
    secret_file = served.channel / SECRET_NAME
    original = secret_file.read_bytes()
    data = json.loads(original)
    data["secret"] = "x" * 43
    try:
        secret_file.write_text(json.dumps(data), encoding="utf-8")
        (served.book / "ch10.md").write_text("# Quinces\n\nQuinces ripen golden in late October.\n", encoding="utf-8")
        result = rag_ingest(served.env, served.home, "book/ch10.md", "-q")
    finally:
        secret_file.write_bytes(original)
    assert result.returncode == 1, result.stderr
    assert "the secret does not match this server's" in result.stderr and "Traceback" not in result.stderr
    assert not any("golden in late October" in str(r["text"]) for r in served.search("quinces ripen golden"))


def test_a_user_who_cannot_read_the_secret_is_refused_with_a_clear_message(served: Served) -> None:
    secret_file = served.channel / SECRET_NAME
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600 and stat.S_IMODE(served.channel.stat().st_mode) == 0o700
    (served.book / "ch11.md").write_text("# Medlars\n\nMedlars are eaten bletted, soft and brown.\n", encoding="utf-8")
    try:
        secret_file.chmod(0o000)
        unreadable = rag_ingest(served.env, served.home, "book/ch11.md", "-q", without_file_override=True)
    finally:
        secret_file.chmod(0o600)
    assert unreadable.returncode == 1, unreadable.stderr
    assert "takes ingest only from the store's owner" in unreadable.stderr
    assert "cannot be read by this user" in unreadable.stderr and "Traceback" not in unreadable.stderr

    try:
        secret_file.chmod(0o644)  # readable by others: compromised, never sent
        untrusted = rag_ingest(served.env, served.home, "book/ch11.md", "-q")
    finally:
        secret_file.chmod(0o600)
    assert untrusted.returncode == 1, untrusted.stderr
    assert "is not trusted (readable by others: mode 0644" in untrusted.stderr
    assert not any("bletted" in str(r["text"]) for r in served.search("medlars bletted"))


IMPOSTOR = """
import json, os, socket, sys
folder = os.open(sys.argv[1], os.O_PATH | os.O_DIRECTORY)  # opened as root; the caller below is another user
secret = json.load(open(os.path.join(sys.argv[1], "secret.json")))["secret"]
os.setgid(65534)
os.setuid(65534)
sock = socket.socket(socket.AF_UNIX)
sock.connect(f"/proc/self/fd/{folder}/socket")
stream = sock.makefile()
job = {"paths": ["/etc/passwd"], "collection": "handoff_book"}
try:  # the secret and a job; the server may already have closed its end, refusing before reading
    sock.sendall(json.dumps({"secret": secret, "job": job}).encode() + b"\\n")
except BrokenPipeError:
    pass
print(stream.readline())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_with_the_secret_and_the_socket_opened_to_it_is_refused(served: Served) -> None:
    """Defence in depth: even with the folder and socket opened up and the secret leaked, the server checks the
    caller's uid on the socket and reads nothing for another user."""
    socket_file = served.channel / SOCKET_NAME
    try:
        served.channel.chmod(0o711)
        socket_file.chmod(0o666)
        result = subprocess.run(
            [sys.executable, "-c", IMPOSTOR, str(served.channel)], capture_output=True, text=True, timeout=60
        )
    finally:
        served.channel.chmod(0o700)
        socket_file.chmod(0o600)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["event"] == "error" and answer["code"] == "forbidden"
    assert "takes ingest only from its own user (uid 0), not uid 65534" in answer["message"]
    assert not any("root:x:0:0" in str(r["text"]) for r in served.search("root x 0 0 bin bash"))


def test_without_a_server_the_cli_ingests_itself_and_stale_files_of_a_killed_server_are_not_trusted(
    tmp_path: Path,
) -> None:
    make_book(tmp_path)
    env = environment(tmp_path)
    server = start_server(tmp_path)
    channel = server.channel
    assert (channel / SECRET_NAME).is_file() and (channel / SOCKET_NAME).is_socket()
    stop_server(server, signal.SIGKILL)  # a crash: its files stay behind
    assert (channel / SECRET_NAME).is_file()

    local = rag_ingest(env, tmp_path, "book")
    assert local.returncode == 0, local.stderr
    assert "holds the store" not in local.stderr  # the plain local run, as before
    assert "2/2 files read" in local.stderr and "2 files (0 failed, 2 changed)" in local.stdout

    restarted = start_server(tmp_path)  # replaces the stale files with its own
    try:
        (tmp_path / "book" / "ch3.md").write_text(NEW_CHAPTER, encoding="utf-8")
        handed = rag_ingest(env, tmp_path, "book/ch3.md", "-q")
        assert handed.returncode == 0, handed.stderr
        assert f"(pid {restarted.process.pid}) holds the store" in handed.stderr
        assert "1 files (0 failed, 1 changed)" in handed.stdout

        # SIGTERM while a handed-over job parses a slow file: the job stops, the CLI is told, the files go.
        pdf_with_content(tmp_path / "book" / "a-slow.pdf", text_operators(4 * MIB))
        cli = subprocess.Popen(
            [str(BIN / "rag-ingest"), "book/a-slow.pdf", "-q"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
        )
        assert cli.stderr is not None and "holds the store" in cli.stderr.readline()
        time.sleep(2)
        stop_server(restarted)
        assert cli.wait(timeout=60) == 1
        told = cli.stderr.read()
        assert "the ingest was stopped (the server is shutting down)" in told and "Traceback" not in told
    finally:
        stop_server(restarted)
    assert not (channel / SECRET_NAME).exists() and not (channel / SOCKET_NAME).exists()  # removed on shutdown
    log = (tmp_path / "server.log").read_text(encoding="utf-8")
    assert "Traceback" not in log, log[-3000:]
    shutil.rmtree(tmp_path / "qdrant")
