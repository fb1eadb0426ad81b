"""A real browser for dashboard tests: Debian's Chromium driven by Playwright (its own browser download
cannot work offline, so ``HALO_CHROMIUM`` names the binary; default ``/usr/bin/chromium``).

In a test module (the root conftest loads this module as a plugin, so ``browser`` and ``page`` are there)::

    from halo_testing.browser import needs_chromium

    pytestmark = [pytest.mark.integration, needs_chromium]

    def test_runs_page(page):                 # a fresh page per test, screenshotted at the end
        page.goto(url)

``page`` saves ``<test name>.png`` (full page) into the test's ``tmp_path`` when the test ends, pass or fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("HALO_CHROMIUM", "/usr/bin/chromium")

#: Skip marker for machines without the browser (say how to get it).
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; see scripts/apt-packages.txt)")


def launch(playwright: Any) -> Any:
    """Headless Chromium from ``HALO_CHROMIUM`` (no sandbox: tests may run as root)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = launch(pw)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    p = browser.new_page(viewport={"width": 1400, "height": 1000})
    yield p
    p.screenshot(path=str(tmp_path / f"{request.node.name}.png"), full_page=True)  # every test leaves one
    p.close()
