"""What ingest may read and prune: nothing outside the root it was given (symbolic links met in a walk
included), a clear 400 for a path that is not a path, and `prune` kept to the folders ingested."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from httpx import AsyncClient
from pydantic import SecretStr
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from chains.vectorstore import METADATA_KEY
from ingest.cli import main as ingest_main
from tests.conftest import app_client

pytestmark = pytest.mark.integration

ADMIN_KEY = "admin-key-0123456789abcdef"
ADMIN = {"X-API-Key": ADMIN_KEY}
SECRET = "root:x:0:0:the secret line that must never be indexed:/root:/bin/bash"


def stored_sources(client: QdrantClient, settings: Settings) -> set[str]:
    if not client.collection_exists(settings.qdrant_collection):
        return set()
    points, _ = client.scroll(settings.qdrant_collection, limit=10_000, with_payload=True)
    return {p.payload[METADATA_KEY]["source"] for p in points if p.payload}


def stored_text(client: QdrantClient, settings: Settings) -> str:
    points, _ = client.scroll(settings.qdrant_collection, limit=10_000, with_payload=True)
    return "\n".join(str(p.payload) for p in points)


@pytest.fixture
def outside_secret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file in another temporary folder: outside the test's INGEST_ROOT and --base-dir (its tmp_path)."""
    secret = tmp_path_factory.mktemp("elsewhere") / "passwd"
    secret.write_text(SECRET + "\n", encoding="utf-8")
    return secret


@pytest.fixture
def linked_book(book_dir: Path, outside_secret: Path) -> Path:
    """The book, with a folder of links: one out of the root (a file and a folder), one to a chapter inside."""
    links = book_dir / "links"
    links.mkdir()
    (links / "passwd.txt").symlink_to(outside_secret)
    (links / "etc.md").symlink_to(outside_secret.parent, target_is_directory=True)
    (links / "watering-again.md").symlink_to(book_dir / "watering.md")
    return book_dir


@pytest.fixture
def admin_settings(settings: Settings, book_dir: Path) -> Settings:
    return settings.model_copy(update={"ingest_root": book_dir.parent, "admin_api_keys": [SecretStr(ADMIN_KEY)]})


@pytest.fixture
async def client(
    admin_settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> AsyncIterator[AsyncClient]:
    async for _, http in app_client(admin_settings, embeddings, qdrant):
        yield http


async def test_admin_ingest_skips_and_names_links_leading_outside_ingest_root(
    client: AsyncClient, linked_book: Path, qdrant: QdrantClient, admin_settings: Settings
) -> None:
    response = await client.post("/admin/ingest", json={"paths": ["book"]}, headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    errors = {f["source"]: f["error"] for f in body["files"] if f["error"]}
    assert set(errors) == {"book/links/passwd.txt", "book/links/etc.md"}  # a link to a file, one to a folder
    assert "outside INGEST_ROOT" in errors["book/links/passwd.txt"]
    assert body["failed"] == 2
    sources = stored_sources(qdrant, admin_settings)
    assert sources == {"book/watering.md", "book/pruning.md"}  # the inside link is its chapter, stored once
    assert "secret line" not in stored_text(qdrant, admin_settings)
    found = await client.post("/search", json={"query": "the secret line root bash", "k": 5})
    assert "secret line" not in found.text


async def test_admin_ingest_of_the_link_folder_itself_reads_nothing_outside(
    client: AsyncClient, linked_book: Path, qdrant: QdrantClient, admin_settings: Settings
) -> None:
    direct = await client.post("/admin/ingest", json={"paths": ["book/links/passwd.txt"]}, headers=ADMIN)
    assert direct.status_code == 400 and "outside INGEST_ROOT" in direct.text
    walked = await client.post("/admin/ingest", json={"paths": ["book/links"], "include": ["**/*"]}, headers=ADMIN)
    assert walked.status_code == 200, walked.text
    failed = {f["source"] for f in walked.json()["files"] if f["error"]}
    assert failed == {"book/links/passwd.txt", "book/links/etc.md"}
    assert "secret line" not in stored_text(qdrant, admin_settings)


@pytest.mark.parametrize("path", ["book\x00/watering.md", "a" * 5000])
async def test_admin_ingest_path_that_is_not_a_path_is_a_400(client: AsyncClient, path: str) -> None:
    response = await client.post("/admin/ingest", json={"paths": [path]}, headers=ADMIN)
    assert response.status_code == 400, response.text
    assert "not a valid path" in response.json()["error"]["message"]


def run_cli(settings: Settings, *args: str) -> Result:
    env = {"QDRANT_PATH": str(settings.qdrant_path), "QDRANT_COLLECTION": settings.qdrant_collection}
    return CliRunner().invoke(ingest_main, list(args), env=env, catch_exceptions=False)


def test_cli_skips_links_out_of_the_folder_names_them_and_exits_1(
    settings: Settings, linked_book: Path, tmp_path: Path
) -> None:
    result = run_cli(settings, str(linked_book), "--base-dir", str(tmp_path), "-q")
    assert result.exit_code == 1, result.output
    assert "failed: book/links/passwd.txt: a symbolic link leading outside the folder given" in result.stderr
    assert "4 files (2 failed, 2 changed)" in result.stdout  # the inside link is its chapter, counted once
    from chains.vectorstore import build_qdrant_client

    client = build_qdrant_client(settings)
    try:
        assert stored_sources(client, settings) == {"book/watering.md", "book/pruning.md"}
        assert "secret line" not in stored_text(client, settings)
    finally:
        client.close()


def test_cli_file_outside_the_base_dir_is_refused_unread(
    settings: Settings, outside_secret: Path, tmp_path: Path
) -> None:
    named = outside_secret.with_suffix(".txt")
    outside_secret.rename(named)
    result = run_cli(settings, str(named), "--base-dir", str(tmp_path), "-q")
    assert result.exit_code == 1, result.output
    assert "outside the base folder" in result.stderr
    from chains.vectorstore import build_qdrant_client

    client = build_qdrant_client(settings)
    try:
        assert not any(source.startswith("/") for source in stored_sources(client, settings))
    finally:
        client.close()


def two_folder_book(root: Path) -> None:
    for folder, name in (("part1", "soil"), ("part2", "bees")):
        (root / folder).mkdir(parents=True)
        (root / folder / f"{name}.md").write_text(
            f"# {name.title()}\n\nA chapter about {name} in the orchard, long enough to be a chunk of its own.\n",
            encoding="utf-8",
        )


async def test_admin_prune_is_scoped_to_the_paths_ingested_unless_all(
    client: AsyncClient, book_dir: Path, qdrant: QdrantClient, admin_settings: Settings
) -> None:
    two_folder_book(book_dir)
    first = await client.post("/admin/ingest", json={"paths": ["book"]}, headers=ADMIN)
    assert first.status_code == 200 and first.json()["failed"] == 0
    (book_dir / "part1" / "soil.md").unlink()
    scoped = await client.post("/admin/ingest", json={"paths": ["book/part1"], "prune": True}, headers=ADMIN)
    assert scoped.status_code == 200, scoped.text
    assert scoped.json()["pruned_sources"] == ["book/part1/soil.md"]
    assert stored_sources(qdrant, admin_settings) == {"book/watering.md", "book/pruning.md", "book/part2/bees.md"}

    everything = await client.post("/admin/ingest", json={"paths": ["book/part2"], "prune": "all"}, headers=ADMIN)
    assert everything.status_code == 200, everything.text
    assert sorted(everything.json()["pruned_sources"]) == ["book/pruning.md", "book/watering.md"]
    assert stored_sources(qdrant, admin_settings) == {"book/part2/bees.md"}


def test_cli_prune_is_scoped_to_the_paths_given_unless_prune_all(
    settings: Settings, book_dir: Path, tmp_path: Path
) -> None:
    two_folder_book(book_dir)
    assert run_cli(settings, str(book_dir), "--base-dir", str(tmp_path), "-q").exit_code == 0
    scoped = run_cli(settings, str(book_dir / "part1"), "--base-dir", str(tmp_path), "--prune", "-q")
    assert scoped.exit_code == 0 and "pruned" not in scoped.stdout
    pruned_all = run_cli(settings, str(book_dir / "part1"), "--base-dir", str(tmp_path), "--prune-all", "-q")
    assert pruned_all.exit_code == 0
    assert "pruned book/part2/bees.md" in pruned_all.stdout and "pruned book/watering.md" in pruned_all.stdout
