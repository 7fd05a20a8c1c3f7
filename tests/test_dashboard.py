"""The dashboard: served from package data, and driven in a real headless Chromium.

The browser is Debian's Chromium (``make browser`` installs it), driven by Playwright; Playwright's
own browser downloads are never used. The page talks to a real gateway on uvicorn: ``GET /graph``,
then ``GET /events/stream`` with ``EventSource``. Everything the tests read from the page is
either in the DOM (``data-*`` attributes, text) or in ``window.__pmlDashboard``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from server_helpers import make_settings, post_executions, running_server

from pml_gateway.dashboard import Dashboard
from pml_gateway.settings import Settings

pytestmark = pytest.mark.anyio

CHROMIUM = os.environ.get("PML_CHROMIUM", "/usr/bin/chromium")
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
VIEWPORT = {"width": 1280, "height": 800}
STATIC_FILES = ("dashboard.html", "dashboard.css", "dashboard.js", "graph-view.js")

needs_browser = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() or shutil.which("chromium")),
    reason="Debian's chromium is not installed (run `make browser`)",
)


def dashboard_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "db": str(tmp_path / "graph.db"),
        "heartbeat_seconds": 0.5,
        "metrics_interval_seconds": 0.2,
    }
    values.update(overrides)
    return make_settings(**values)


# -- without a browser ------------------------------------------------------------------------
def test_static_files_ship_in_the_package() -> None:
    static = resources.files("pml_gateway").joinpath("static")
    for name in STATIC_FILES:
        assert static.joinpath(name).is_file(), name


def test_page_needs_nothing_from_the_internet() -> None:
    static = resources.files("pml_gateway").joinpath("static")
    external = re.compile(
        r"""(?:src|href)\s*=\s*["']?(?:https?:)?//"""  # <script src=...>, <link href=...>
        r"""|@import|url\(\s*["']?(?:https?:)?//"""  # CSS
        r"""|\bfrom\s+["'](?:https?:)?//|import\(\s*["'](?:https?:)?//"""  # ES modules
    )
    for name in STATIC_FILES:
        text = static.joinpath(name).read_text(encoding="utf-8")
        assert not external.search(text), f"{name} loads something from elsewhere: {external.search(text)}"


async def test_dashboard_routes(tmp_path: Path) -> None:
    async with running_server(dashboard_settings(tmp_path), [Dashboard()]) as running:
        async with httpx.AsyncClient(base_url=running.base_url) as client:
            page = await client.get("/dashboard")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert page.headers["cache-control"] == "no-cache"
            # Relative URLs: the page also works behind a proxy that adds a path prefix.
            assert 'src="dashboard/static/dashboard.js"' in page.text
            assert 'href="dashboard/static/dashboard.css"' in page.text

            for name, kind in [("dashboard.js", "javascript"), ("graph-view.js", "javascript"), ("dashboard.css", "css")]:
                asset = await client.get(f"/dashboard/static/{name}")
                assert asset.status_code == 200, name
                assert kind in asset.headers["content-type"], name
                assert asset.headers["cache-control"] == "no-cache"
                revalidated = await client.get(f"/dashboard/static/{name}", headers={"If-None-Match": asset.headers["etag"]})
                assert revalidated.status_code == 304

            assert (await client.get("/dashboard/static/nothing.js")).status_code == 404
            slash = await client.get("/dashboard/?x=1")
            assert slash.status_code == 308
            assert slash.headers["location"] == "../dashboard?x=1"

            # Not a downstream: GET /health is unchanged.
            assert (await client.get("/health")).json() == {"status": "ok", "downstreams": {}}


async def test_serve_prints_the_dashboard_url(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pml_gateway", "serve", "--port", "0", "--db", ":memory:", "--log-level", "warning"]
    env = {**os.environ, "PML_CONFIG": ""}
    async with await anyio.open_process(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE) as process:
        try:
            assert process.stderr is not None
            seen = ""
            url = None
            with anyio.fail_after(30):
                async for chunk in process.stderr:
                    seen += chunk.decode(errors="replace")
                    match = re.search(r"dashboard at (http://127\.0\.0\.1:\d+/dashboard)\n", seen)
                    if match:
                        url = match.group(1)
                        break
            assert url, seen
            async with httpx.AsyncClient() as client:
                response = await client.get(url)
            assert response.status_code == 200
            assert "<canvas" in response.text
        finally:
            process.terminate()
            with anyio.fail_after(15):
                await process.wait()


# -- in Chromium ------------------------------------------------------------------------------
@dataclass
class ConsoleLog:
    """Console errors and uncaught exceptions of the page.

    While the test has stopped the server on purpose (``outage``, until the page is live again),
    Chromium reports the stream cut by the stopping server and each refused reconnection attempt or
    poll as console errors; those, and only those, are expected.
    """

    OUTAGE_REASONS = ("ERR_CONNECTION_REFUSED", "ERR_INCOMPLETE_CHUNKED_ENCODING", "status of 503")
    #: what the page fetches: the stream, the snapshot, and what it polls
    OUTAGE_PATHS = ("/events/stream", "/graph", "/health", "/tools", "/events/stats")

    errors: list[str] = field(default_factory=list)
    outage: bool = False

    def on_console(self, message: Any) -> None:
        if message.type != "error":
            return
        url = (message.location or {}).get("url", "")
        expected = self.outage and any(path in url for path in self.OUTAGE_PATHS) and any(
            reason in message.text for reason in self.OUTAGE_REASONS
        )
        if not expected:
            self.errors.append(f"console.error: {message.text} ({url})")

    def on_page_error(self, error: Any) -> None:
        self.errors.append(f"pageerror: {error}")


@dataclass
class Browser:
    page: Any
    console: ConsoleLog

    async def until(self, expression: str, arg: Any = None, *, timeout: float = 20.0) -> Any:
        """Wait until the JS ``expression`` (a function of ``arg``) is truthy; returns its value."""
        with anyio.fail_after(timeout + 5):
            handle = await self.page.wait_for_function(expression, arg=arg, timeout=timeout * 1000, polling=50)
            return await handle.json_value()

    async def summary(self) -> dict[str, Any]:
        return await self.page.evaluate("() => window.__pmlDashboard.summary()")  # type: ignore[no-any-return]

    async def card(self, name: str) -> str:
        return await self.page.inner_text(f'.card[data-metric="{name}"] .value')  # type: ignore[no-any-return]


@asynccontextmanager
async def chromium(base_url: str) -> AsyncIterator[Browser]:
    """A headless Chromium with the dashboard open and live."""
    async_api = pytest.importorskip("playwright.async_api")
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    async with async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport=VIEWPORT)
            console = ConsoleLog()
            page.on("console", console.on_console)
            page.on("pageerror", console.on_page_error)
            await page.goto(base_url + "/dashboard")
            driver = Browser(page, console)
            await driver.until("() => window.__pmlDashboard && window.__pmlDashboard.connection === 'live'")
            yield driver
        finally:
            await browser.close()


async def server_last_event_id(client: httpx.AsyncClient) -> int:
    return (await client.get("/events/stats")).json()["last_event_id"]  # type: ignore[no-any-return]


async def until_caught_up(browser: Browser, client: httpx.AsyncClient, *, timeout: float = 20.0) -> int:
    """Until the page has applied the server's newest event; returns that id."""
    with anyio.fail_after(timeout):
        while True:
            last = await server_last_event_id(client)
            if await browser.page.evaluate("() => window.__pmlDashboard.lastEventId") == last:
                return last
            await anyio.sleep(0.05)


FIRST = [
    {"workflow_id": "wf-1", "tool_ids": ["files__read", "text__summarize", "mail__send"], "success": True},
    {"workflow_id": "wf-2", "tool_ids": ["files__read", "text__summarize"], "success": True},
]
SECOND = [
    {"workflow_id": "wf-3", "tool_ids": ["files__read", "text__translate", "mail__send"], "success": True},
    {"workflow_id": "wf-4", "tool_ids": ["web__fetch", "text__summarize"], "success": False},
]


@needs_browser
async def test_dashboard_shows_the_graph_learning_live(tmp_path: Path) -> None:
    async with running_server(dashboard_settings(tmp_path), [Dashboard()]) as running:
        async with httpx.AsyncClient(base_url=running.base_url) as client, chromium(running.base_url) as browser:
            page = browser.page
            assert (await browser.summary())["nodeCount"] == 0
            assert await page.is_visible("#empty")
            assert await page.get_attribute("#conn", "data-state") == "live"
            assert await page.inner_text("#conn-label") == "live"

            # Learn: nodes and edges appear, the metric cards follow metrics_updated.
            await post_executions(client, FIRST)
            await browser.until("() => window.__pmlDashboard.edgeCount === 2 && window.__pmlDashboard.nodeCount === 3")
            assert await page.get_attribute("#graph", "data-edges") == "2"
            assert await page.get_attribute("#graph", "data-nodes") == "3"
            assert not await page.is_visible("#empty")
            # Tools: every tool the page knows (here only learned ones: no gateway, no tool list).
            await browser.until("() => document.querySelector('.card[data-metric=edges]').dataset.value === '2'")
            assert await browser.card("tools") == "3"
            assert await browser.card("density") == "0.3333"  # 2 / (3 * 2)
            assert await page.locator("#pagerank li[data-tool]").count() == 3
            edge = await page.evaluate("() => window.__pmlDashboard.edge('files__read', 'text__summarize')")
            assert edge["observed_count"] == 2 and edge["edge_type"] == "sequence"
            first_confidence = edge["confidence"]
            # PageRank and communities reach every node (sizes and colours) from the snapshot.
            await browser.until(
                "() => ['files__read', 'text__summarize', 'mail__send'].every("
                "id => { const n = window.__pmlDashboard.node(id); return n.pagerank > 0 && n.community !== null; })"
            )
            await until_caught_up(browser, client)
            graph = (await client.get("/graph")).json()
            assert await page.get_attribute("#last-event-id", "data-value") == str(graph["last_event_id"])

            # More learning: an existing edge is updated and briefly highlighted, new ones appear.
            await post_executions(client, SECOND)
            await browser.until("() => window.__pmlDashboard.edgeCount === 5 && window.__pmlDashboard.nodeCount === 5")
            await browser.until("() => document.querySelector('.card[data-metric=edges]').dataset.value === '5'")
            assert await browser.card("tools") == "5"
            updated = await page.evaluate("() => window.__pmlDashboard.edge('files__read', 'text__summarize')")
            assert updated["observed_count"] == 2 and updated["confidence"] == first_confidence
            await post_executions(client, [{"tool_ids": ["files__read", "text__summarize"], "success": True}])
            updated = await browser.until(
                "() => { const e = window.__pmlDashboard.edge('files__read', 'text__summarize');"
                " return e.observed_count === 3 && e; }"
            )
            assert updated["confidence"] > first_confidence
            assert updated["highlight"] == "updated"  # drawn highlighted for a moment
            await until_caught_up(browser, client)
            graph = (await client.get("/graph")).json()
            shown = await page.evaluate("() => window.__pmlDashboard.edge('files__read', 'text__summarize')")
            served = next(e for e in graph["edges"] if (e["from_tool_id"], e["to_tool_id"]) == ("files__read", "text__summarize"))
            assert shown["confidence"] == pytest.approx(served["confidence"])

            # Heartbeats and the clock.
            await browser.until("() => document.querySelector('#heartbeat-age').dataset.seconds !== ''")
            assert (await page.inner_text("#heartbeat-age")).endswith("ago")
            assert await page.inner_text("#clients") == "1"
            await browser.until("() => document.querySelector('#uptime').textContent !== '—'")

            # The event log, newest first, filterable by type.
            await browser.until("() => document.querySelectorAll('#log li[data-id]').length >= 2")
            ids = [int(i) for i in await page.eval_on_selector_all("#log li[data-id]", "els => els.map(e => e.dataset.id)")]
            assert ids == sorted(ids, reverse=True)
            assert await page.locator("#log li[data-type=edge_created]").count() == 5
            assert await page.locator("#log li[data-type=heartbeat]").count() == 0  # off by default: noisy
            await page.click(".chip[data-type=edge_created]")
            assert await page.locator("#log li[data-type=edge_created]").count() == 0
            assert await page.locator("#log li[data-type=workflow_executed]").count() == 5
            await page.click(".chip[data-type=edge_created]")
            assert await page.locator("#log li[data-type=edge_created]").count() == 5
            await page.click(".chip[data-type=heartbeat]")
            assert await page.locator("#log li[data-type=heartbeat]").count() > 0

            # Hovering a tool shows what it is.
            await page.click("#toggle-layout")  # freeze the layout so that the tool stays put
            for _attempt in range(5):  # the view may still be easing into its fitted position
                position = await page.evaluate("() => window.__pmlDashboard.screenPosition('text__summarize')")
                await page.mouse.move(position["x"], position["y"])
                tooltip = await page.inner_text("#tooltip") if await page.is_visible("#tooltip") else ""
                if tooltip.startswith("text__summarize"):
                    break
                await page.mouse.move(5, 5)
                await anyio.sleep(0.3)
            assert tooltip.startswith("text__summarize") and "PageRank" in tooltip, tooltip
            await page.mouse.move(5, 5)
            await browser.until("() => document.querySelector('#tooltip').hidden")

            assert not await page.is_visible("#stale-banner")
            await browser.until("() => window.__pmlDashboard.summary().nodesWithoutCommunity === 0")
            await page.screenshot(path=str(tmp_path / "dashboard.png"))
            assert (tmp_path / "dashboard.png").stat().st_size > 10_000
            assert browser.console.errors == []


@needs_browser
async def test_dashboard_reconnects_and_catches_up_after_a_restart(tmp_path: Path) -> None:
    settings = dashboard_settings(tmp_path)
    async with running_server(settings, [Dashboard()]) as first:
        port = int(first.base_url.rsplit(":", 1)[1])
        base_url = first.base_url
        async with chromium(base_url) as browser:
            page = browser.page
            async with httpx.AsyncClient(base_url=base_url) as client:
                await post_executions(client, FIRST)
                await browser.until("() => window.__pmlDashboard.edgeCount === 2")
                await until_caught_up(browser, client)
            await page.evaluate("() => { window.__sameDocument = true; }")  # gone if the page reloads

            browser.console.outage = True
            await first.stop()
            await browser.until("() => window.__pmlDashboard.connection !== 'live'")
            assert await page.get_attribute("#conn", "data-state") in ("reconnecting", "disconnected")

            # Same port, same database: ids go on from where they were.
            async with running_server(settings, [Dashboard()], port=port) as second:
                async with httpx.AsyncClient(base_url=second.base_url) as client:
                    # Learned while the page is still away: it must arrive by replay.
                    await post_executions(client, SECOND)
                    await browser.until("() => window.__pmlDashboard.connection === 'live'", timeout=30)
                    browser.console.outage = False
                    await browser.until("() => window.__pmlDashboard.edgeCount === 5 && window.__pmlDashboard.nodeCount === 5")
                    last = await until_caught_up(browser, client)
                    await browser.until("() => document.querySelector('.card[data-metric=edges]').dataset.value === '5'")

                    summary = await browser.summary()
                    assert await page.evaluate("() => window.__sameDocument") is True
                    assert summary["stats"]["snapshots"] == 1  # caught up by replay, not by a reload
                    assert summary["stats"]["resets"] == 0
                    assert summary["stats"]["connects"] >= 2
                    assert summary["counts"]["graph_synced"] == 1  # the restart's own event, replayed
                    assert summary["bannerVisible"] is False
                    assert await page.get_attribute("#last-event-id", "data-value") == str(last)

                    # Still live afterwards.
                    await post_executions(client, [{"tool_ids": ["mail__send", "calendar__add"], "success": True}])
                    await browser.until("() => window.__pmlDashboard.edgeCount === 6")
                    await browser.until("() => document.querySelector('#heartbeat-age').dataset.seconds !== ''")
                    await browser.until(
                        "() => window.__pmlDashboard.summary().nodesWithoutCommunity === 0"
                        " && document.querySelector('.card[data-metric=edges]').dataset.value === '6'"
                    )
                    await page.screenshot(path=str(tmp_path / "after-restart.png"))
                    assert browser.console.errors == []


@needs_browser
async def test_dashboard_reloads_the_snapshot_on_reset(tmp_path: Path) -> None:
    old = dashboard_settings(tmp_path)
    async with running_server(old, [Dashboard()]) as first:
        port = int(first.base_url.rsplit(":", 1)[1])
        async with chromium(first.base_url) as browser:
            page = browser.page
            async with httpx.AsyncClient(base_url=first.base_url) as client:
                await post_executions(client, FIRST + SECOND)
                await browser.until("() => window.__pmlDashboard.edgeCount === 5")
                await until_caught_up(browser, client)

            browser.console.outage = True
            await first.stop()
            await browser.until("() => window.__pmlDashboard.connection !== 'live'")

            # Another database on the same port: the page's last id belongs to another history.
            replaced = dashboard_settings(tmp_path, db=str(tmp_path / "replaced.db"))
            async with running_server(replaced, [Dashboard()], port=port) as second:
                await browser.until("() => window.__pmlDashboard.stats.resets === 1", timeout=30)
                await browser.until("() => window.__pmlDashboard.connection === 'live'")
                browser.console.outage = False
                # The snapshot of the new history replaces the view.
                await browser.until("() => window.__pmlDashboard.edgeCount === 0 && window.__pmlDashboard.nodeCount === 0")
                async with httpx.AsyncClient(base_url=second.base_url) as client:
                    await until_caught_up(browser, client)
                    summary = await browser.summary()
                    assert summary["stats"]["snapshots"] == 2
                    assert summary["bannerVisible"] is True
                    assert "could not replay" in await page.inner_text("#stale-text")
                    assert await page.locator("#log li[data-type=reset]").count() == 1

                    # The new history streams into the reloaded view.
                    await post_executions(client, [{"tool_ids": ["db__query", "text__summarize"], "success": True}])
                    await browser.until("() => window.__pmlDashboard.edgeCount === 1")

                    # The banner's button refetches /graph.
                    await page.click("#refetch")
                    await browser.until("() => window.__pmlDashboard.stats.snapshots === 3")
                    await browser.until("() => document.querySelector('#stale-banner').hidden")
                    await browser.until("() => window.__pmlDashboard.connection === 'live'")
                    assert (await browser.summary())["edgeCount"] == 1
                    await until_caught_up(browser, client)
                    assert browser.console.errors == []
