"""The pages a browser opens: /docs without a CDN, /widget.js as one cached script, the book's pages with heading
ids as the site builds them, and / pointing at them."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from httpx import AsyncClient
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from tests.conftest import app_client

SAMPLE_BOOK = Path(__file__).resolve().parent.parent / "sample_book"


class _Assets(HTMLParser):
    """Every URL a page loads by itself: scripts, stylesheets, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in {"script", "img"} and values.get("src"):
            self.urls.append(str(values["src"]))
        if tag == "link" and values.get("href"):
            self.urls.append(str(values["href"]))


def assets_of(html: str) -> list[str]:
    parser = _Assets()
    parser.feed(html)
    return parser.urls


@pytest.fixture
async def site_client(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> AsyncIterator[AsyncClient]:
    changed = settings.model_copy(update={"book_site_dir": SAMPLE_BOOK})
    async for _, http in app_client(changed, embeddings, qdrant):
        yield http


@pytest.fixture
async def plain_client(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> AsyncIterator[AsyncClient]:
    async for _, http in app_client(settings, embeddings, qdrant):
        yield http


async def test_docs_load_only_same_origin_assets_and_each_is_served(plain_client: AsyncClient) -> None:
    for page in ("/docs", "/redoc"):
        response = await plain_client.get(page)
        assert response.status_code == 200
        urls = assets_of(response.text)
        assert urls, f"{page} loads its UI from files"
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from another origin"
            asset = await plain_client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 1000, url
        assert "cdn." not in response.text and "fonts.googleapis" not in response.text


async def test_widget_js_is_one_script_with_an_etag_and_a_304_when_unchanged(plain_client: AsyncClient) -> None:
    response = await plain_client.get("/widget.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "max-age" in response.headers["cache-control"]
    etag = response.headers["etag"]
    body = response.text
    # The vendored libraries and the widget in one file, each library in a function scope.
    assert "marked v18.2.1" in body and "DOMPurify 3.5.0" in body and "customElements.define" in body
    assert body.lstrip().startswith("/*!") and body.rstrip().endswith("})();")
    assert "sourceMappingURL" not in body
    again = await plain_client.get("/widget.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag and not again.content
    # Sent compressed (httpx asks for gzip and decodes it): what a browser downloads.
    assert response.headers["content-encoding"] == "gzip"
    raw = await plain_client.get("/widget.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers and raw.content == response.content
    licenses = await plain_client.get("/widget-licenses.txt")
    assert "MIT" in licenses.text and "Apache" in licenses.text
    assert int(response.headers["content-length"]) < 60_000 < len(raw.content), "the gzipped script is what is sent"


async def test_the_book_site_serves_each_chapter_with_heading_ids_a_sidebar_and_the_widget(
    site_client: AsyncClient,
) -> None:
    home = await site_client.get("/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/book/"
    contents = await site_client.get("/book/")
    assert contents.status_code == 200 and "Tending a Small Orchard" in contents.text
    for path in ("site-and-soil", "choosing-trees", "planting", "pruning-and-pollination", "pests-harvest-and-storage"):
        assert f'href="/book/{path}"' in contents.text

    page = await site_client.get("/book/planting")
    assert page.status_code == 200
    text = page.text
    assert '<h3 id="depth-and-width">Depth and Width</h3>' in text
    assert '<h2 id="digging-the-hole">Digging the Hole</h2>' in text
    assert '<a href="/book/planting" aria-current=page>Planting</a>' in text
    assert '<script src="/widget.js" defer></script>' in text
    assert "<strong>wide and shallow</strong>" in text
    assert "sidebar_position" not in text, "front matter is not shown"
    mdx = await site_client.get("/book/pruning-and-pollination")
    assert "import Callout" not in mdx.text and "&lt;Callout" not in mdx.text, "MDX imports and JSX are dropped"
    assert re.search(r'<h2 id="why-we-prune">', mdx.text)
    css = await site_client.get("/book/book.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")

    assert (await site_client.get("/book/planting/", follow_redirects=False)).headers["location"] == "/book/planting"
    missing = await site_client.get("/book/no-such-page")
    assert missing.status_code == 404 and "no-such-page" in missing.json()["error"]["message"]


async def test_without_a_book_site_the_chat_page_is_home_and_book_pages_say_how_to_turn_them_on(
    plain_client: AsyncClient,
) -> None:
    home = await plain_client.get("/")
    chat = await plain_client.get("/chat")
    assert home.status_code == chat.status_code == 200 and home.text == chat.text
    assert "<book-chat></book-chat>" in home.text and '<script src="/widget.js">' in home.text, "the widget, inline"
    response = await plain_client.get("/book/planting")
    assert response.status_code == 404 and "BOOK_SITE_DIR" in response.json()["error"]["message"]


def test_a_book_site_dir_that_does_not_exist_stops_start_up_naming_the_variable(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="book_site_dir"):
        Settings(_env_file=None, book_site_dir=tmp_path / "missing")  # type: ignore[call-arg]
