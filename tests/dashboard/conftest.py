"""The console in a real browser: Debian's Chromium driven by Playwright, against a real control plane
(real Postgres, real RabbitMQ, real HTTP). A failing test leaves a screenshot of each of its pages in
``test-artifacts/console/``."""

from __future__ import annotations

import re
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, Playwright, async_playwright

from tests.control_plane.conftest import admin, agent_credentials, base_url, cp, settings, start_agent  # noqa: F401
from tests.support.system import make_token

CHROMIUM = "/usr/bin/chromium"
ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as pw:
        yield pw


@pytest.fixture
async def browser(playwright: Playwright, request: pytest.FixtureRequest) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile per test; on failure every open page is saved as a screenshot."""
    with tempfile.TemporaryDirectory(prefix="devart-chromium-") as profile:
        context = await playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        )
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            report = getattr(request.node, "report_call", None)
            if report is not None and report.failed:
                ARTEFACTS.mkdir(parents=True, exist_ok=True)
                name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
                for i, page in enumerate(context.pages):
                    await page.screenshot(path=str(ARTEFACTS / f"{name}-{i}.png"), full_page=True)
            await context.close()


SignIn = Callable[..., "Page"]


@pytest.fixture
def sign_in(browser: BrowserContext, base_url: str, database_url: str):  # type: ignore[no-untyped-def]  # noqa: F811
    """Open a page signed in with a new token of ``role``; returns the page and the token."""

    async def sign(role: str = "supervisor", *, token: str | None = None) -> tuple[Page, str]:
        token = token or await make_token(database_url, role, name=f"{role}-{len(browser.pages)}")
        page = await browser.new_page()
        await page.goto(f"{base_url}/login")
        await page.get_by_label("API token").fill(token)
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url(f"{base_url}/")
        return page, token

    return sign
