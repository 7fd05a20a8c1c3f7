"""The dashboard in a real headless Chromium while an administrator deletes learned history:
``tool_forgotten`` drops the tool and its edges, ``graph_reset`` empties the graph, both applied
live from the stream (no snapshot reload); tools no configured server owns show as external."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from server_helpers import post_executions, running_server
from test_dashboard import chromium, dashboard_settings, needs_browser, until_caught_up

from pml_gateway.dashboard import Dashboard

pytestmark = pytest.mark.anyio


@needs_browser
async def test_the_page_drops_a_forgotten_tool_and_empties_on_reset(tmp_path: Path) -> None:
    async with running_server(dashboard_settings(tmp_path), [Dashboard()]) as running:
        async with chromium(running.base_url) as browser, httpx.AsyncClient(base_url=running.base_url) as client:
            page = browser.page
            await post_executions(client, [
                {"tasks": [{"id": "1", "tool_id": "files__read", "server": "files"},
                           {"id": "2", "tool_id": "a__x"},  # unknown to the gateway, no server given
                           {"id": "3", "tool_id": "files__write", "server": "files"}]},
                {"tasks": [{"id": "1", "tool_id": "files__read", "server": "files"},
                           {"id": "2", "tool_id": "files__write", "server": "files"}]},
            ])
            await browser.until("() => window.__pmlDashboard.edgeCount === 3")
            await until_caught_up(browser, client)
            # a__x is external: one server (files), not two made up from the names.
            await browser.until("() => document.querySelector('#graph').dataset.external === '1'")
            assert await page.get_attribute("#graph", "data-servers") == "1"
            assert "(1 external)" in await page.inner_text("#graph-counts")
            assert (await page.evaluate("() => window.__pmlDashboard.node('a__x')"))["server"] is None

            assert (await client.delete("/graph/tools/a__x")).status_code == 200
            await browser.until("() => window.__pmlDashboard.node('a__x') == null")
            assert (await browser.summary())["edgeCount"] == 1
            assert await page.evaluate("() => window.__pmlDashboard.edge('files__read', 'files__write') != null")
            await browser.until("() => document.querySelector('#graph').dataset.external === '0'")  # at the next frame
            await until_caught_up(browser, client)
            assert await page.locator("#log li[data-type=tool_forgotten]").count() == 1

            assert (await client.post("/graph/reset")).status_code == 200
            await browser.until("() => window.__pmlDashboard.nodeCount === 0 && window.__pmlDashboard.edgeCount === 0")
            await browser.until("() => window.__pmlDashboard.metrics && window.__pmlDashboard.metrics.node_count === 0")
            await until_caught_up(browser, client)
            summary = await browser.summary()
            assert summary["stats"]["snapshots"] == 1 and summary["stats"]["resets"] == 0  # applied live
            assert summary["bannerVisible"] is False
            assert await page.locator("#log li[data-type=graph_reset]").count() == 1

            # Learning goes on in the emptied view.
            await post_executions(client, [{"tool_ids": ["files__read", "files__write"]}])
            await browser.until("() => window.__pmlDashboard.edgeCount === 1")
            assert browser.console.errors == []
