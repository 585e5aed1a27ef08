"""The widget (`GET /widget.js`) on a book's page served from another origin, in headless Debian Chromium driven by
Playwright, against a live API on 127.0.0.1 over the real sample book with a scripted chat model. Skipped, with
the reason, when Chromium (or, for the accessibility check, tests/js's axe-core) is not installed."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from qdrant_client import QdrantClient
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from rag_api.app import create_app
from rag_api.state import Overrides
from tests.conftest import STRINGS_CHAPTER, STRINGS_QUESTION, STRINGS_SETTINGS, ingest_into
from tests.fakes import FakeChatModel
from tests.live import free_port, serve

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ROOT = Path(__file__).resolve().parent.parent
SAMPLE_BOOK = ROOT / "sample_book"
AXE = ROOT / "tests" / "js" / "node_modules" / "axe-core" / "axe.min.js"
EXPECT_TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"no Chromium at {CHROMIUM}: `make chromium` installs Debian's (as root with apt-get)",
    ),
]

QUESTION = "How deep should the planting hole be?"
# Markdown, citations, and everything a hostile passage or model could try: none of it may run.
ANSWER = """Dig the hole **wide and shallow**: about 30 centimetres deep [1], never deeper [9].

- roughen the sides with a fork
- keep the graft union above the soil

```python
depth_cm = 30
width_cm = 90
```

<img src=x onerror="window.__pwned = 'img'"><script>window.__pwned = 'script'</script>
<svg onload="window.__pwned = 'svg'"></svg><a href="javascript:window.__pwned='a'">raw link</a>
[a link](javascript:window.__pwned='md') and [1](javascript:window.__pwned='cite') and [book](https://example.org/)
"""
LONG_ANSWER = ANSWER + "\n\n" + "\n\n".join(f"Paragraph {n}: more on the planting hole [2]." for n in range(40))
SELECTED = "Young roots grow outwards, not downwards, and a wide hole gives them loose soil to explore."

HOST_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Planting · The host book</title><link rel="icon" href="data:,">
<style>* { color: red !important; font-family: serif !important; } button { display: none; }</style>
{head}<script>window.__globalsBefore = Object.getOwnPropertyNames(window);</script>
</head><body>
<main><h1>Planting</h1><p id="passage">{selected}</p><p>More of the chapter.</p></main>
<script src="{api}/widget.js" data-title="Ask the book" data-theme="{theme}" data-unknown="x" {attrs}defer></script>
</body></html>
"""


class SlowScriptedModel(FakeChatModel):
    """Streams its scripted answer piece by piece, a little apart, so the stream can be seen arriving."""

    delay_s: float = 0.01

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in super()._astream(messages, stop, run_manager, **kwargs):
            await asyncio.sleep(self.delay_s)
            yield chunk


def answers(text: str, count: int = 20) -> Iterator[AIMessage]:
    return iter([AIMessage(content=text) for _ in range(count)])


@pytest.fixture
def sample_book_indexed(qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings) -> Settings:
    """The real sample book ingested into this test's collection, as `make run` does."""
    from chains.vectorstore import ensure_collection
    from ingest.indexer import Indexer, discover_files

    changed = settings.model_copy(update={"book_site_dir": SAMPLE_BOOK})
    ensure_collection(qdrant, changed, embeddings.dimension)
    indexer = Indexer(qdrant, embeddings, changed, embeddings.count_tokens)
    report = indexer.ingest(list(discover_files([SAMPLE_BOOK])), SAMPLE_BOOK)  # the book's root, as `rag-ingest`
    assert not report.failed
    return changed


@contextmanager
def live_site(
    settings: Settings,
    embeddings: LocalEmbeddings,
    qdrant: QdrantClient,
    theme: str = "auto",
    answer: str = ANSWER,
    attrs: str = "",
    book_base_url: bool = True,
    head: str = "",
    allow_host: bool = True,
) -> Iterator[Any]:
    """The API (with the book's pages) on one port and a host page on another: two origins (the host's in the API's
    CORS_ORIGINS unless `allow_host` is False)."""
    api_port, host_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    host = f"http://127.0.0.1:{host_port}"
    base = f"{api}/book/" if book_base_url else None
    origins = [host] if allow_host else ["https://another-book.example"]
    changed = settings.model_copy(update={"cors_origins": origins, "book_base_url": base})
    model = SlowScriptedModel(messages=answers(answer))
    app = create_app(changed, Overrides(chat_model=model, embeddings=embeddings, client=qdrant))

    async def page(request: Any) -> HTMLResponse:
        values = {"{api}": api, "{selected}": SELECTED, "{theme}": theme, "{attrs}": attrs, "{head}": head}
        text = HOST_PAGE
        for key, value in values.items():
            text = text.replace(key, value)
        return HTMLResponse(text)

    host_app = Starlette(routes=[Route("/chapter/planting", page)])
    with serve(app, api_port), serve(host_app, host_port):
        yield api, host + "/chapter/planting"


@asynccontextmanager
async def browser_context(**options: Any) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield await browser.new_context(**options)
        finally:
            await browser.close()


def watch_problems(page: Any) -> dict[str, list[str]]:
    """Page errors, console errors and dialogs, as they happen."""
    seen: dict[str, list[str]] = {"errors": [], "dialogs": [], "warnings": []}
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    page.on(
        "console",
        lambda message: (
            seen["errors" if message.type == "error" else "warnings"].append(message.text)
            if message.type in {"error", "warning"}
            else None
        ),
    )

    async def on_dialog(dialog: Any) -> None:
        seen["dialogs"].append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    return seen


def ask_bodies(page: Any) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda request: (
            bodies.append(json.loads(request.post_data))
            if request.url.endswith("/ask") and request.method == "POST"
            else None
        ),
    )
    return bodies


async def ask_on_the_page(page: Any, host_url: str, question: str) -> None:
    """Open the host page, open the panel from its launcher and send `question`, as a reader does."""
    await page.goto(host_url)
    await page.get_by_role("button", name="Ask the book").click()
    await page.get_by_role("textbox", name="Your question").fill(question)
    await page.keyboard.press("Enter")


async def test_the_widget_on_another_origin_streams_renders_safely_links_sections_and_remembers(
    sample_book_indexed: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    from playwright.async_api import expect

    with live_site(sample_book_indexed, embeddings, qdrant) as (api, host_url):
        async with browser_context(viewport={"width": 1280, "height": 800}) as context:
            await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=host_url.rsplit("/", 2)[0])
            page = await context.new_page()
            problems = watch_problems(page)
            bodies = ask_bodies(page)
            await page.goto(host_url)

            launcher = page.get_by_role("button", name="Ask the book")
            await expect(launcher).to_be_visible()
            await launcher.click()
            panel = page.get_by_role("dialog", name="Ask the book")
            await expect(panel).to_be_visible()
            await page.get_by_role("textbox", name="Your question").fill(QUESTION)
            await page.keyboard.press("Enter")

            turn = panel.locator("article.turn").nth(0)
            answer = turn.locator(".answer")
            await expect(answer).to_contain_text("wide and shallow")
            assert "a link" not in await answer.inner_text(), "the answer arrives piece by piece"
            await expect(panel.get_by_role("button", name="Stop the answer")).to_be_visible()
            await expect(answer).to_contain_text("book", timeout=30_000)
            await expect(panel.get_by_role("button", name="Stop the answer")).to_be_hidden()

            # Markdown: bold, a list, a code block that keeps its line breaks.
            await expect(answer.locator("strong")).to_have_text("wide and shallow")
            await expect(answer.locator("ul > li")).to_have_count(2)
            code = await answer.locator("pre code").inner_text()
            assert "depth_cm = 30\nwidth_cm = 90" in code

            # Nothing hostile ran or stayed: no handler, no script, no javascript: link.
            await page.wait_for_timeout(300)
            assert await page.evaluate("window.__pwned") is None
            assert problems["dialogs"] == []
            assert await answer.locator("img, script, svg, [onerror], [onload]").count() == 0
            hrefs = await answer.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
            assert not [h for h in hrefs if h and not h.startswith("http")], hrefs
            assert "https://example.org/" in hrefs
            for text in ("a link", "raw link"):
                await answer.get_by_text(text).click()
            await page.wait_for_timeout(200)
            assert await page.evaluate("window.__pwned") is None

            # Sources link to the section on the book's site; [1] links to source 1, [9] (no such source) does not.
            source_link = turn.locator(".sources a").first
            await expect(source_link).to_contain_text("Depth and Width")
            assert await source_link.get_attribute("href") == f"{api}/book/planting#depth-and-width"
            cite = answer.locator(".cite")
            await expect(cite).to_have_count(1)  # [1](javascript:...) lost its href and is plain "1"
            assert await cite.first.get_attribute("href") == await source_link.get_attribute("href")
            assert "[9]" in await answer.inner_text()

            # The section exists on the book's page with that id.
            section = await context.new_page()
            await section.goto(await source_link.get_attribute("href"))
            await expect(section.locator("h3#depth-and-width")).to_have_text("Depth and Width")
            await section.close()

            # Copy answer puts the Markdown on the clipboard.
            await turn.get_by_role("button", name="Copy answer").click()
            await expect(turn.get_by_role("button", name="Copied")).to_be_visible()
            assert await page.evaluate("navigator.clipboard.readText()") == ANSWER

            # Text selected on the host page goes with the next question, and so does the page's URL.
            await page.get_by_role("button", name="Close").click()
            await page.evaluate(
                """() => { const range = document.createRange();
                range.selectNodeContents(document.getElementById('passage'));
                const selection = getSelection(); selection.removeAllRanges(); selection.addRange(range); }"""
            )
            ask_about = page.get_by_role("button", name="Ask about this")
            await expect(ask_about).to_be_visible()
            await ask_about.click()
            await expect(panel.locator(".chip")).to_contain_text("Young roots grow outwards")
            await page.keyboard.type("Why wide rather than deep?")
            await page.keyboard.press("Enter")
            await expect(panel.locator("article.turn")).to_have_count(2)
            await expect(panel.locator("article.turn").nth(1).locator(".meta")).to_be_visible(timeout=30_000)
            assert len(bodies) == 2
            first, second = bodies
            assert first["question"] == QUESTION and "selected_text" not in first and first["history"] == []
            assert second["question"] == "Why wide rather than deep?"
            assert second["selected_text"] == SELECTED
            assert second["page_url"] == host_url and second["selected_from"] == "Planting · The host book"
            assert second["history"] == [
                {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": ANSWER},
            ], "the follow-up carries the conversation"

            # A reload (or another page of the book in this tab) brings the conversation back, panel open.
            await page.reload()
            panel = page.get_by_role("dialog", name="Ask the book")
            await expect(panel).to_be_visible()
            await expect(panel.locator("article.turn")).to_have_count(2)
            await expect(panel.locator("article.turn").nth(0).locator(".answer strong")).to_have_text(
                "wide and shallow"
            )
            await expect(panel.locator("article.turn .sources a").first).to_contain_text("Depth and Width")
            assert await page.evaluate("localStorage.length") == 0, "sessionStorage only"

            # No globals but the custom element; no page errors; the one unknown data- attribute ignored quietly.
            added = await page.evaluate(
                "Object.getOwnPropertyNames(window).filter(n => !window.__globalsBefore.includes(n))"
            )
            assert [name for name in added if not name.startswith("__")] == []
            await panel.get_by_role("button", name="Clear the conversation").click()
            await expect(panel.locator("article.turn")).to_have_count(0)
            await page.reload()
            await expect(page.get_by_role("dialog", name="Ask the book").locator("article.turn")).to_have_count(0)
            assert problems["errors"] == [], problems["errors"]


async def test_the_widget_works_from_the_keyboard_fits_a_phone_and_passes_axe(
    sample_book_indexed: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    from playwright.async_api import expect

    with live_site(sample_book_indexed, embeddings, qdrant, answer=LONG_ANSWER) as (_, host_url):
        for scheme in ("light", "dark"):
            async with browser_context(
                viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, color_scheme=scheme
            ) as context:
                page = await context.new_page()
                problems = watch_problems(page)
                await page.goto(host_url)
                await expect(page.get_by_role("button", name="Ask the book")).to_be_visible()

                # Keyboard only: Tab reaches the launcher, Enter opens, typing and Enter send, Esc closes.
                for _ in range(10):
                    await page.keyboard.press("Tab")
                    focused = await page.evaluate(
                        "document.activeElement?.shadowRoot?.activeElement?.getAttribute('aria-label') ?? null"
                    )
                    if focused == "Ask the book":
                        break
                assert focused == "Ask the book", "Tab reaches the launcher"
                await page.keyboard.press("Enter")
                panel = page.get_by_role("dialog", name="Ask the book")
                await expect(panel).to_be_visible()
                await expect(panel.get_by_role("textbox", name="Your question")).to_be_focused()
                await page.keyboard.type("How deep")
                await page.keyboard.press("Shift+Enter")
                await page.keyboard.type("should the hole be?")
                await page.keyboard.press("Enter")
                turn = panel.locator("article.turn").nth(0)
                await expect(turn.locator(".question")).to_have_text("How deep\nshould the hole be?")
                await expect(turn.locator(".meta")).to_be_visible(timeout=30_000)

                # The panel fills the phone's screen and the question box stays on it under a long answer.
                box = await panel.bounding_box()
                assert box and box["x"] >= 0 and box["y"] >= 0
                assert box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844
                textbox = await panel.get_by_role("textbox", name="Your question").bounding_box()
                assert textbox and textbox["y"] >= 0 and textbox["y"] + textbox["height"] <= 844
                assert await panel.locator(".log").evaluate("log => log.scrollHeight > 2 * log.clientHeight")
                # ... which is read from its start: the question stays at the top of the log, not scrolled away
                # by the answer streaming in below it.
                log_box = await panel.locator(".log").bounding_box()
                question_box = await turn.locator(".question").bounding_box()
                first_line = await turn.locator(".answer strong").bounding_box()
                assert log_box and question_box and first_line
                assert log_box["y"] <= question_box["y"] <= log_box["y"] + 40, (log_box, question_box)
                assert first_line["y"] + first_line["height"] <= log_box["y"] + log_box["height"]
                assert await panel.locator(".log").evaluate(
                    "log => log.scrollHeight - log.scrollTop - log.clientHeight > log.clientHeight"
                ), "the end of the long answer is below the view"

                # A real accessibility engine over the open panel (its shadow root included).
                if AXE.exists():
                    await page.add_script_tag(path=str(AXE))
                    result = await page.evaluate(
                        """async () => { const r = await axe.run({include: [['book-chat']]});
                        return {violations: r.violations.map(v => ({id: v.id, impact: v.impact,
                                 nodes: v.nodes.map(n => n.target)})),
                                inShadow: r.passes.flatMap(p => p.nodes).filter(n => n.target[0] &&
                                 Array.isArray(n.target[0])).length}; }"""
                    )
                    assert result["inShadow"] > 20, "axe looked inside the widget's shadow root"
                    serious = [v for v in result["violations"] if v["impact"] in {"serious", "critical"}]
                    assert serious == [], f"{scheme}: {serious}"

                await page.keyboard.press("Escape")
                await expect(panel).to_be_hidden()
                await expect(page.get_by_role("button", name="Ask the book")).to_be_focused()
                assert problems["errors"] == [], problems["errors"]
        if not AXE.exists():
            pytest.skip(f"keyboard and phone checked; no axe-core at {AXE}: run `make js-deps` for the axe check")


async def test_bad_data_attributes_warn_naming_the_attribute_and_fall_back_to_defaults(
    sample_book_indexed: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    from playwright.async_api import expect

    with live_site(sample_book_indexed, embeddings, qdrant, theme="purple") as (_, host_url):
        async with browser_context() as context:
            page = await context.new_page()
            problems = watch_problems(page)
            await page.goto(host_url)
            await expect(page.get_by_role("button", name="Ask the book")).to_be_visible()
            assert any("data-theme" in warning for warning in problems["warnings"]), problems["warnings"]
            assert await page.evaluate("document.querySelector('book-chat').shadowRoot.querySelector('.root.auto')")
            assert problems["errors"] == []


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        (
            'data-book-base-url="https://book.example.org/docs/" ',
            "https://book.example.org/docs/planting#depth-and-width",
        ),
        ("", None),
    ],
    ids=["data-book-base-url", "no-base-url"],
)
async def test_without_book_base_url_sources_link_through_the_tags_base_or_not_at_all(
    sample_book_indexed: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, attrs: str, expected: str | None
) -> None:
    from playwright.async_api import expect

    with live_site(sample_book_indexed, embeddings, qdrant, attrs=attrs, book_base_url=False) as (_, host_url):
        async with browser_context() as context:
            page = await context.new_page()
            problems = watch_problems(page)
            await ask_on_the_page(page, host_url, QUESTION)
            sources = page.get_by_role("dialog").locator("article.turn .sources li")
            await expect(sources.first).to_contain_text("Depth and Width")
            links = sources.first.locator("a")
            if expected is None:
                await expect(links).to_have_count(0)
                assert await page.get_by_role("dialog").locator("a[href='#'], a[href='']").count() == 0
            else:
                assert await links.get_attribute("href") == expected
            assert problems["errors"] == []


async def test_a_quote_from_a_neighbouring_subsection_links_to_that_subsection(
    tmp_path: Path, settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    """A passage joined from nearby chunks of one chapter is found by one subsection and quoted from another: the
    source's label, its link and the answer's [1] name and open the subsection the quote is from."""
    from playwright.async_api import expect

    book = tmp_path / "book"
    book.mkdir()
    (book / "strings.md").write_text(STRINGS_CHAPTER, encoding="utf-8")
    small = settings.model_copy(update=STRINGS_SETTINGS)
    assert not ingest_into(qdrant, embeddings, small, book / "strings.md").failed
    answer = "Yes: `push` adds one character at the end [1]."
    with live_site(small, embeddings, qdrant, answer=answer) as (api, host_url):
        async with browser_context(viewport={"width": 390, "height": 844}) as context:
            page = await context.new_page()
            problems = watch_problems(page)
            await ask_on_the_page(page, host_url, STRINGS_QUESTION)
            turn = page.get_by_role("dialog").locator("article.turn").first
            await expect(turn.locator(".meta")).to_be_visible(timeout=EXPECT_TIMEOUT_MS)
            first = turn.locator(".sources li").first
            await expect(first.locator("q")).to_contain_text("land in the middle of a letter")
            link = first.locator("a")
            await expect(link).to_have_text("Strings › Storing text › Internal representation")
            assert await link.get_attribute("href") == f"{api}/book/strings#internal-representation"
            cite = turn.locator(".answer .cite").first
            assert await cite.get_attribute("href") == await link.get_attribute("href")
            assert "Internal representation" in (await cite.get_attribute("title") or "")
            assert problems["errors"] == []


async def test_a_page_the_api_does_not_allow_is_told_so_and_a_service_that_is_down_is_told_apart(
    sample_book_indexed: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    """The browser hides why a cross-origin request failed; the widget tells a page missing from the API's
    CORS_ORIGINS (the service is up: a setup mistake, named with the origin to add) from a service it cannot reach."""
    from playwright.async_api import expect

    async def failed_turn(host_url: str) -> tuple[str, list[str]]:
        async with browser_context() as context:
            page = await context.new_page()
            problems = watch_problems(page)
            await ask_on_the_page(page, host_url, QUESTION)
            error = page.get_by_role("dialog").locator("article.turn .error")
            await expect(error).to_be_visible(timeout=EXPECT_TIMEOUT_MS)
            return await error.inner_text(), problems["warnings"]

    with live_site(sample_book_indexed, embeddings, qdrant, allow_host=False) as (api, host_url):
        origin = host_url.rsplit("/", 2)[0]
        refused, warnings = await failed_turn(host_url)
        assert "not set up for this page" in refused and origin in refused
        assert any("CORS_ORIGINS" in w and origin in w and api in w for w in warnings), warnings
    closed = f'data-api-base="http://127.0.0.1:{free_port()}" '
    with live_site(sample_book_indexed, embeddings, qdrant, attrs=closed) as (_, host_url):
        down, warnings = await failed_turn(host_url)
        assert down.startswith("Could not reach the book's assistant")
        assert not any("CORS_ORIGINS" in w for w in warnings)


# A page with an AMD loader and CommonJS-looking globals (RequireJS, old bundles): the vendored UMD builds must not
# register with them or write to them.
STRANGE_HEAD = """<script>
window.define = function () { window.__amd = true; }; window.define.amd = {};
window.module = {exports: {}}; window.exports = window.module.exports;
</script>"""


async def test_the_widget_works_on_a_page_with_an_amd_loader_and_commonjs_globals(
    sample_book_indexed: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    from playwright.async_api import expect

    with live_site(sample_book_indexed, embeddings, qdrant, head=STRANGE_HEAD) as (_, host_url):
        async with browser_context() as context:
            page = await context.new_page()
            problems = watch_problems(page)
            await ask_on_the_page(page, host_url, QUESTION)
            answer = page.get_by_role("dialog").locator("article.turn .answer strong")
            await expect(answer).to_have_text("wide and shallow")
            assert await page.evaluate("[window.__amd, Object.keys(window.module.exports).length]") == [None, 0]
            assert problems["errors"] == []


async def test_a_reader_rates_an_answer_down_with_a_comment_and_the_authors_report_shows_it(
    sample_book_indexed: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient
) -> None:
    from playwright.async_api import expect

    from rag_api.records import RecordStore

    with live_site(sample_book_indexed, embeddings, qdrant, answer="Thirty centimetres deep [1].") as (_, host_url):
        async with browser_context() as context:
            page = await context.new_page()
            problems = watch_problems(page)
            await ask_on_the_page(page, host_url, QUESTION)
            dialog = page.get_by_role("dialog")
            down = dialog.get_by_role("button", name="Not helpful")
            await expect(down).to_be_visible()
            # each source shows the sentences that answer (its highlights), as text
            await expect(dialog.locator(".sources li q.quote").first).to_contain_text("centimetres")
            await down.click()
            await dialog.get_by_role("textbox", name="What was missing or wrong? (optional)").fill("Say how wide too")
            await dialog.get_by_role("button", name="Send").click()
            await expect(dialog.get_by_text("Thanks for the feedback")).to_be_visible()
            await expect(down).to_have_attribute("aria-pressed", "true")
            await page.reload()  # the panel reopens as it was, the rating with it
            await expect(page.get_by_role("dialog").get_by_role("button", name="Not helpful")).to_have_attribute(
                "aria-pressed", "true"
            )
            assert problems["errors"] == []
    store = RecordStore.open(sample_book_indexed.database_url)
    try:
        (row,) = list(store.answers_since())
    finally:
        store.close()
    assert row["question"] == QUESTION
    assert row["feedback"] == [{"rating": "down", "comment": "Say how wide too"}]
