"""What the browser tests share: a system and a signed-in Chromium per test module, the
axe-core scan (its npm package, vendored beside this file and injected into the page,
so nothing is fetched), and the console errors a page logged."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.js.errors import NotFoundError
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    ViewportSize,
    async_playwright,
)

from schemas import subjects
from services import bus
from services.stack import Stack
from services.store import accounts
from services.store.connection import connect
from tests.conftest import ROOT
from tests.system.harness import System

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
AXE = Path(__file__).parent / "vendor" / "axe-core-4.14.1" / "axe.min.js"
SHOTS = ROOT / "docs" / "screenshots"
USER, PASSWORD = "ada", "correct horse battery staple"
PHONE = ViewportSize(width=390, height=844)
DESKTOP = ViewportSize(width=1280, height=900)


@contextlib.asynccontextmanager
async def running_system(stack: Stack, tmp: Path, env: dict[str, str]) -> AsyncIterator[System]:
    """Dispatcher, log collector and web on empty streams and an empty Valkey, with a
    site admin `ada` to sign in as."""
    r = connect(stack.redis_url)
    await r.flushdb()
    await accounts.create_user(r, USER, PASSWORD, role="admin")
    await r.aclose()
    nc = await bus.connect(stack.nats_url, name="tests")
    js = nc.jetstream()
    for spec in subjects.STREAMS:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(spec.name)
    await bus.ensure_streams(js)
    try:
        async with System(stack, tmp, {**os.environ, **env}).running() as system:
            yield system
    finally:
        await nc.close()


@dataclass
class Browsing:
    """One Chromium; contexts signed in as `ada`, light or dark; errors pages logged."""

    browser: Browser
    url: str
    state: Any = None
    errors: list[str] = field(default_factory=list)

    async def page(self, dark: bool = False, phone: bool = False) -> Page:
        context = await self.context(dark, phone)
        page = await context.new_page()
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
        return page

    async def context(self, dark: bool, phone: bool) -> BrowserContext:
        return await self.browser.new_context(
            viewport=PHONE if phone else DESKTOP,
            color_scheme="dark" if dark else "light",
            storage_state=self.state,
        )

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.location.get('url')}: {message.text}")

    async def sign_in(self) -> None:
        page = await (await self.context(False, False)).new_page()
        await page.goto(self.url + "/login")
        await page.fill("input[name=username]", USER)
        await page.fill("input[name=password]", PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_url(self.url + "/")
        self.state = await page.context.storage_state()
        await page.context.close()


@contextlib.asynccontextmanager
async def chromium(url: str) -> AsyncIterator[Browsing]:
    install = ["sh", str(ROOT / "tests/browser/chromium.sh")]
    await asyncio.to_thread(subprocess.run, install, check=True, timeout=600)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        browsing = Browsing(browser, url)
        await browsing.sign_in()
        try:
            yield browsing
        finally:
            await browser.close()


async def axe(page: Page, rules: list[str] | None = None) -> list[str]:
    """The serious and critical violations axe-core finds on the page (of `rules` only,
    when given), one line each."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE.read_text())  # through the DevTools protocol: no CSP applies
    options: dict[str, object] = {"resultTypes": ["violations"]}
    if rules:
        options["runOnly"] = {"type": "rule", "values": rules}
    found = await page.evaluate(
        "async (options) => (await axe.run(document, options)).violations", options
    )
    return [
        f"{page.url} [{v['impact']}] {v['id']}: {v['help']} — "
        + "; ".join(n["target"][0] if n["target"] else "?" for n in v["nodes"][:5])
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


async def shoot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"))
