"""The stand-alone chat page (`/chat`, the widget inline) in a real browser: headless Debian Chromium driven by
Playwright, against a live server on 127.0.0.1 with a fake chat model (the widget on a book's page from another
origin: tests/test_widget.py). Skipped, with the reason, when Chromium is not installed (`make test` installs it
with apt-get when it can)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from pydantic import SecretStr
from qdrant_client import QdrantClient

from chains.embeddings import LocalEmbeddings
from chains.settings import Settings
from rag_api.app import create_app
from rag_api.state import Overrides
from tests.fakes import CountingChatModel, FailingChatModel
from tests.live import free_port, serve

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
QUESTION = "How much should I water a young tree?"
API_KEY = "page-key-0123456789abcdef"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium when run as root with apt-get; "
        "or `apt-get install -y chromium`, or set CHROMIUM to a Chromium binary",
    ),
]

# Records every text the typing indicator shows, however briefly (it lives in the widget's shadow root).
WATCH_STATUS = """() => {
  window.__statuses = [];
  const root = document.querySelector('book-chat').shadowRoot;
  new MutationObserver(() => {
    for (const el of root.querySelectorAll('.typing')) {
      if (!el.hidden && window.__statuses.at(-1) !== el.textContent) window.__statuses.push(el.textContent);
    }
  }).observe(root, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


# Playwright's 5 s default wait is too short for a loaded CI machine; the assertions still wait for the behaviour.
EXPECT_TIMEOUT_MS = 60_000


@asynccontextmanager
async def chromium_page() -> AsyncIterator[Any]:
    """A page in headless Chromium (not a fixture: Playwright must run on the test's own event loop)."""
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield await browser.new_page()
        finally:
            await browser.close()


@pytest.fixture
def live_app(
    settings: Settings, embeddings: LocalEmbeddings, qdrant: QdrantClient, indexed_book: Path
) -> Callable[..., Any]:
    """Start the app with `model` and `settings` changed by `**update`; yields its base URL."""

    @contextmanager
    def start(model: BaseChatModel, **update: Any) -> Iterator[str]:
        changed = settings.model_copy(update=update)
        app = create_app(changed, Overrides(chat_model=model, embeddings=embeddings, client=qdrant))
        with serve(app, free_port()) as base_url:
            yield base_url

    return start


async def open_chat(page: Any, base_url: str) -> None:
    from playwright.async_api import expect

    await page.goto(base_url + "/chat")
    await expect(page.get_by_role("textbox", name="Your question")).to_be_visible()


async def ask(page: Any, question: str) -> None:
    box = page.get_by_role("textbox", name="Your question")
    await box.fill(question)
    await box.press("Enter")


def turns(page: Any) -> Any:
    return page.locator("article.turn")


def stop_button(page: Any) -> Any:
    return page.get_by_role("button", name="Stop the answer")


def send_button(page: Any) -> Any:
    return page.get_by_role("button", name="Ask", exact=True)


async def test_chat_page_streams_tokens_shows_sources_and_sends_the_conversation(
    live_app: Callable[..., Any],
) -> None:
    from playwright.async_api import expect

    # Two answers of 60 words, 40 ms apart; the follow-up is first condensed (one `ainvoke`).
    model = CountingChatModel(delay_s=0.04, words=60, messages=iter([AIMessage(content=QUESTION)]))
    with live_app(model) as base_url:
        async with chromium_page() as page:
            await open_chat(page, base_url)
            await page.evaluate(WATCH_STATUS)
            await ask(page, QUESTION)

            answer = turns(page).nth(0).locator(".answer")
            await expect(answer).to_contain_text("word1 ")
            partial = await answer.inner_text()
            assert "word59" not in partial, "tokens arrive one after another, not all at the end"
            await expect(stop_button(page)).to_be_visible()

            source = turns(page).nth(0).locator(".sources li").first
            await expect(source).to_contain_text("Watering Young Trees")
            await expect(stop_button(page)).to_be_hidden(timeout=30_000)
            await expect(answer).to_contain_text("word59")
            assert await page.locator("article.turn .error").count() == 0
            statuses = await page.evaluate("window.__statuses")
            assert "Searching the book" in statuses and "Writing the answer" in statuses
            await expect(page.locator(".key-form")).to_be_hidden()
            await expect(page.locator(".key-status")).to_be_hidden()

            await ask(page, "And in a heat wave?")
            await expect(turns(page).nth(1).locator(".answer")).to_contain_text("word59", timeout=30_000)
            follow_up_prompt = model.prompts[-1]
            assert any(isinstance(m, AIMessage) and "word0 word1" in str(m.content) for m in follow_up_prompt)


async def test_chat_page_stop_cancels_the_answer_on_the_server(live_app: Callable[..., Any]) -> None:
    from playwright.async_api import expect

    model = CountingChatModel(delay_s=0.02, words=2000)
    with live_app(model) as base_url:
        async with chromium_page() as page:
            await open_chat(page, base_url)
            await ask(page, "What does the drip logger write?")
            turn = turns(page).nth(0)
            await expect(turn.locator(".answer")).to_contain_text("word2 ")
            await stop_button(page).click()
            await expect(turn.locator(".error")).to_have_text("Stopped.")
            await expect(send_button(page)).to_be_visible()
            for _ in range(250):
                if model.finished:
                    break
                await asyncio.sleep(0.02)
            assert model.stopped_early and model.chunks_produced < model.words, "Stop cancels generation on the server"


async def test_chat_page_shows_the_error_event(live_app: Callable[..., Any]) -> None:
    from playwright.async_api import expect

    with live_app(FailingChatModel(fail_after=2)) as base_url:
        async with chromium_page() as page:
            await open_chat(page, base_url)
            await ask(page, QUESTION)
            turn = turns(page).nth(0)
            await expect(turn.locator(".error")).to_contain_text("internal_error")
            await expect(turn.locator(".answer")).to_have_text("partial0 partial1")


async def enter_key(page: Any, key: str) -> None:
    field = page.get_by_label("API key")
    await field.fill(key)
    await field.press("Enter")


SHADOW_HTML = "document.querySelector('book-chat').shadowRoot.innerHTML"


async def test_chat_page_asks_for_the_api_key_keeps_it_for_the_tab_and_asks_again_for_a_wrong_one(
    live_app: Callable[..., Any],
) -> None:
    from playwright.async_api import expect

    # After the reload the conversation is back, so the next question is a follow-up: condensed first.
    model = CountingChatModel(delay_s=0.0, words=8, messages=iter([AIMessage(content=QUESTION)] * 3))
    with live_app(model, api_keys=[SecretStr(API_KEY)]) as base_url:
        async with chromium_page() as page:
            urls: list[str] = []
            page.on("request", lambda request: urls.append(request.url))
            await open_chat(page, base_url)
            key_form, key_input = page.locator(".key-form"), page.get_by_label("API key")
            key_status = page.locator(".key-status")
            await expect(key_form).to_be_hidden()

            # No key yet: a clear message and the key field, not "HTTP 401".
            await ask(page, QUESTION)
            turn = turns(page).last
            await expect(turn.locator(".error")).to_contain_text("needs an API key")
            await expect(key_form).to_be_visible()
            await expect(key_input).to_have_attribute("type", "password")
            await expect(key_input).to_be_focused()
            assert "401" not in await turn.inner_text() and model.calls == 0

            # The right key sends the refused question again, and it is answered.
            await enter_key(page, API_KEY)
            await expect(key_form).to_be_hidden()
            turn = turns(page).last
            await expect(turn.locator(".sources li").first).to_contain_text("Watering Young Trees")
            await expect(turn.locator(".answer")).to_contain_text("word7")
            await expect(send_button(page)).to_be_visible()
            assert await turns(page).count() == 1, "the refused turn gives way to its answer"
            assert await page.locator("article.turn .error").count() == 0
            await expect(key_status).to_be_visible()
            await expect(key_input).to_have_value("")
            assert await page.evaluate("sessionStorage.getItem('bookrag.apiKey')") == API_KEY
            assert await page.evaluate("localStorage.length") == 0
            assert API_KEY not in await page.evaluate(SHADOW_HTML), "the key is never shown back"

            # A reload in the same tab keeps the key (and the conversation).
            await page.reload()
            await expect(key_status).to_be_visible()
            await ask(page, QUESTION)
            turn = turns(page).nth(1)
            await expect(turn.locator(".answer")).to_contain_text("word7")
            await expect(send_button(page)).to_be_visible()
            await expect(key_form).to_be_hidden()
            assert model.calls == 2

            # Forgotten, then a wrong key: the prompt comes back, and the wrong key is not kept.
            await page.get_by_role("button", name="Forget the key").click()
            await expect(key_status).to_be_hidden()
            assert await page.evaluate("sessionStorage.getItem('bookrag.apiKey')") is None
            await ask(page, QUESTION)
            await expect(turns(page).last.locator(".error")).to_contain_text("needs an API key")
            await enter_key(page, "wrong-key-0123456789abcdef")
            await expect(turns(page).last.locator(".error")).to_contain_text("API key was not accepted")
            await expect(key_form).to_be_visible()
            await expect(key_status).to_be_hidden()
            assert await page.evaluate("sessionStorage.getItem('bookrag.apiKey')") is None
            assert model.calls == 2
            assert not [url for url in urls if API_KEY in url or "wrong-key" in url], "keys never go in a URL"
