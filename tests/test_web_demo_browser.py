"""The web demo in a real browser: Debian's headless Chromium, driven by Playwright.

Without a ``chromium`` on PATH the test skips, saying so; CI installs it and sets
CHANNEL_LAYER_PG_REQUIRE_BROWSER=1, which turns that skip into a failure. To refresh the
README's picture: ``CHANNEL_LAYER_PG_SCREENSHOT=docs/screenshot.png pytest tests/test_web_demo_browser.py``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TIMEOUT
from tests.web_demo import Demo, running_demo

REQUIRED = os.environ.get("CHANNEL_LAYER_PG_REQUIRE_BROWSER") == "1"
SCREENSHOT = os.environ.get("CHANNEL_LAYER_PG_SCREENSHOT")
# Playwright may not download browsers here; these flags keep Chromium off the network too.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason}, and CHANNEL_LAYER_PG_REQUIRE_BROWSER=1 requires the browser test")
    pytest.skip(reason)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install -e . --group dev)")
    chromium = shutil.which("chromium")
    if chromium is None:
        _unavailable("no chromium on PATH: install Debian's package (apt-get install chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def demo(database_url: str) -> AsyncIterator[Demo]:
    async with running_demo(f"--url={database_url}", "--workers=2") as demo:
        yield demo


async def test_two_pages_in_one_room_see_each_others_messages(browser: Any, demo: Demo) -> None:
    from playwright.async_api import expect

    room = f"room-{uuid.uuid4().hex[:8]}"
    alice = await _open(browser, f"{demo.page}?room={room}&name=Alice")
    await expect(alice.locator("#count")).to_have_text("1", timeout=TIMEOUT * 1000)
    bob = await _open(browser, f"{demo.page}?room={room}&name=Bob")
    for page in (alice, bob):
        await expect(page.locator("#count")).to_have_text("2", timeout=TIMEOUT * 1000)
        # Each page says which worker serves it.
        served_by = await page.locator("#my-pid").inner_text()
        assert int(served_by.removeprefix("worker pid ")) in demo.pids

    await _say(alice, "Hello from Alice")
    await expect(bob.locator(".message .text")).to_have_text(["Hello from Alice"], timeout=TIMEOUT * 1000)
    await _say(bob, "Hello from Bob")
    for page in (alice, bob):
        texts = page.locator(".message .text")
        await expect(texts).to_have_text(["Hello from Alice", "Hello from Bob"], timeout=TIMEOUT * 1000)
        await expect(page.locator(".message .from")).to_have_text(["Alice", "Bob"])
    await expect(alice.locator(".message.mine .text")).to_have_text(["Hello from Alice"])


@pytest.mark.skipif(
    not SCREENSHOT, reason="set CHANNEL_LAYER_PG_SCREENSHOT=docs/screenshot.png to refresh it"
)
async def test_screenshot_of_two_people_chatting(browser: Any, demo: Demo) -> None:
    """Two windows side by side, served by different workers, for the README."""
    from playwright.async_api import expect

    page = await browser.new_page(viewport={"width": 1600, "height": 680}, device_scale_factor=1)
    await page.set_content(
        "<style>body{margin:0;display:flex;gap:8px;background:#8a94a6}"
        "iframe{flex:1;height:680px;border:0}</style><iframe id=a></iframe><iframe id=b></iframe>"
    )
    alice, bob = page.frame_locator("#a"), page.frame_locator("#b")
    for _ in range(20):  # the kernel picks the worker for each connection: retry until they differ
        for frame in ("a", "b"):
            await page.eval_on_selector(f"#{frame}", "frame => frame.src = 'about:blank'")
        await page.eval_on_selector(
            "#a", "(frame, url) => frame.src = url", f"{demo.page}?room=lobby&name=Alice"
        )
        await expect(alice.locator("#count")).to_have_text("1", timeout=TIMEOUT * 1000)
        await page.eval_on_selector(
            "#b", "(frame, url) => frame.src = url", f"{demo.page}?room=lobby&name=Bob"
        )
        await expect(alice.locator("#count")).to_have_text("2", timeout=TIMEOUT * 1000)
        await expect(bob.locator("#count")).to_have_text("2", timeout=TIMEOUT * 1000)
        if await alice.locator("#my-pid").inner_text() != await bob.locator("#my-pid").inner_text():
            break
    lines = [
        (alice, "Hi Bob! Which worker are you on?"),
        (bob, "The other one. Your message came through PostgreSQL."),
        (alice, "One row for each of us and a NOTIFY, then each worker claims its row."),
    ]
    for count, (person, text) in enumerate(lines, start=1):
        await person.locator("#text").fill(text)
        await person.locator("#text").press("Enter")
        for frame in (alice, bob):
            await expect(frame.locator(".message")).to_have_count(count, timeout=TIMEOUT * 1000)
    await page.screenshot(path=str(Path(SCREENSHOT or "screenshot.png")))


async def _open(browser: Any, url: str) -> Any:
    page = await browser.new_page()
    await page.goto(url)
    return page


async def _say(page: Any, text: str) -> None:
    await page.locator("#text").fill(text)
    await page.locator("#text").press("Enter")
