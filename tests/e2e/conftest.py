"""Browser tests: Playwright for Python driving the Debian ``chromium`` package, headless.

No browser is downloaded (never ``playwright install``): the tests launch the
system's ``/usr/bin/chromium`` and skip, saying why, when it is not installed
(``apt-get install chromium``; ``.ci/run`` does it). Playwright's sync API is
used from plain (non-async) tests only: it runs its own event loop and refuses
to start inside a running one.

One browser per package (launching costs about a second); each test gets a
fresh context (no shared cookies or sessionStorage) and a page.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, ViewportSize, sync_playwright

from tests.support.server import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Nothing but the server under test on the network: no updates, sync or probes.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 1000}
DEFAULT_TIMEOUT_MS = 10_000


def artifacts_dir() -> Path:
    """Where screenshots go: ``$HERALD_ARTIFACTS``, else ``test-artifacts/e2e`` (git-ignored)."""
    directory = Path(os.environ.get("HERALD_ARTIFACTS") or REPO_ROOT / "test-artifacts" / "e2e")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
    )
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()
