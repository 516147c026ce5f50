"""Headless Debian Chromium driven by Playwright, for the tests that look at pages as a person would.

The browser is the system's /usr/bin/chromium (apt-get install chromium); Playwright never downloads one.
Without it the browser tests skip on a developer's machine but fail in CI (CI set), where .ci/run
installs it: a missing browser must not turn the tests green by skipping them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

# VGGEXPORT_TEST_CHROMIUM names another binary (the CI rules' own tests point it at nothing).
CHROMIUM = Path(os.environ.get("VGGEXPORT_TEST_CHROMIUM") or "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


def browser_missing_reason(chromium: Path | None = None) -> str | None:
    chromium = chromium or CHROMIUM
    if not chromium.is_file():
        return f"no Chromium at {chromium} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    return None


def require_browser(chromium: Path | None = None) -> None:
    """Skip without a browser on a developer's machine; fail in CI, where .ci/run installs one."""
    reason = browser_missing_reason(chromium)
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run in CI: {reason}")
        pytest.skip(reason)


class SharedBrowser:
    """One Playwright and one Chromium at a time, whichever test modules use the fixture.

    Each module that uses ``browser`` gets its own instance of the fixture; Playwright's sync API allows one
    running instance per thread, so they must share it, and it stops when the last user is done. The fixture
    is module-scoped: Playwright's sync API keeps an event loop running in the main thread while it lives, and
    a later module's ``asyncio.run`` (the batcher's tests) refuses to start under a running loop.
    """

    def __init__(self) -> None:
        self.users = 0
        self.playwright: Any = None
        self.browser: Any = None

    def acquire(self) -> Any:
        if self.browser is None:
            from playwright.sync_api import sync_playwright

            self.playwright = sync_playwright().start()
            self.browser = self.playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        self.users += 1
        return self.browser

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self.browser is not None:
            self.browser.close()
            self.playwright.stop()
            self.browser = self.playwright = None


SHARED = SharedBrowser()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_browser()
    yield SHARED.acquire()
    SHARED.release()


@dataclass
class Watched:
    """A page plus what it said: console errors, uncaught exceptions, and requests that left the machine."""

    page: Any
    errors: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert not self.errors, f"console errors: {self.errors}"
        assert not self.external, f"requests to other hosts (the page must work offline): {self.external}"


def is_local(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("data", "blob", "file", "about") or parsed.hostname in LOCAL_HOSTS


def watched_page(browser: Any, width: int = 1200, height: int = 900) -> Watched:
    """A new page whose requests to anywhere but this machine are blocked and recorded."""
    page = browser.new_page(viewport={"width": width, "height": height})
    watched = Watched(page)
    page.on("console", lambda message: watched.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: watched.errors.append(f"uncaught: {error}"))

    def guard(route: Any) -> None:
        if is_local(route.request.url):
            route.continue_()
        else:
            watched.external.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    return watched


def assert_not_uniform(png: bytes) -> None:
    """A screenshot with more than one colour in it: something rendered."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        extrema = image.convert("L").getextrema()
    assert extrema[1] - extrema[0] > 64, f"the screenshot is blank (grey levels {extrema})"


def broken_images(page: Any) -> list[str]:
    """The src (cut short) of every <img> that did not decode to a picture."""
    return page.eval_on_selector_all(
        "img", "images => images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => (i.src || '').slice(0, 60))")


def save_screenshot(png: bytes, name: str) -> None:
    """Keep a copy when VGGEXPORT_SCREENSHOTS names a folder (how docs/*.png are refreshed)."""
    folder = os.environ.get("VGGEXPORT_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_bytes(png)


def overflows_horizontally(page: Any) -> bool:
    """Wider than the window: a table or figure pushes the layout sideways."""
    return bool(page.evaluate("document.documentElement.scrollWidth > window.innerWidth"))
