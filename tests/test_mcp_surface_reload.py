"""The config file is watched: servers added, changed and removed while clients are connected.

A real gateway with a real config file, edited on disk; a 2025-era session and a 2026-era
``subscriptions/listen`` stream both hear ``list_changed`` for tools, prompts and resources; a
bad edit is refused with one log line and the running set is kept.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp import Client
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ToolsListChanged

from gateway_support import run_gateway, stdio_entry, wait_for
from test_mcp_surface import EVERYTHING

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not EVERYTHING.exists(), reason="server-everything is installed by `make test`"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def write(path: Path, servers: dict[str, Any]) -> None:
    path.write_text(json.dumps({"mcpServers": servers}))


async def test_servers_added_changed_and_removed_while_clients_are_connected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pml_gateway.proxy.downstream.watch")
    one = stdio_entry("--prefix", "a_")
    every = {"command": str(EVERYTHING), "args": ["stdio"]}
    async with run_gateway(tmp_path, {"one": one}) as gateway:
        config = tmp_path / "mcp.json"
        registry = gateway.gateway.registry
        seen: list[Any] = []

        async def on_message(message: Any) -> None:
            seen.append(message)

        async def tools(client: Client) -> set[str]:
            return {t.name for t in (await client.list_tools()).tools}

        async with Client(gateway.mcp_url, mode="legacy", message_handler=on_message) as legacy, Client(
            gateway.mcp_url
        ) as modern:
            async with modern.listen(tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True) as sub:
                assert "one__a_echo" in await tools(legacy)

                # Added: server-everything brings tools, prompts and resources.
                write(config, {"one": one, "every": every})
                events: set[type[Any]] = set()
                with anyio.fail_after(20):
                    async for event in sub:
                        events.add(type(event))
                        if events == {ToolsListChanged, PromptsListChanged, ResourcesListChanged}:
                            break
                assert "every__echo" in await tools(modern)
                assert {p.name for p in (await modern.list_prompts()).prompts} >= {"every__simple-prompt"}
                kinds = {type(m) for m in seen}
                assert {types.ToolListChangedNotification, types.PromptListChangedNotification} <= kinds
                assert types.ResourceListChangedNotification in kinds

                # A bad edit: refused with one line, nothing stops.
                write(config, {"one": {"command": 5}, "every": every})
                await wait_for(lambda: any("config change refused" in r.getMessage() for r in caplog.records), timeout=10)
                refused = [r for r in caplog.records if "config change refused" in r.getMessage()]
                assert len(refused) == 1 and "server 'one'" in refused[0].getMessage() and "command" in refused[0].getMessage()
                assert "\n" not in refused[0].getMessage()
                assert {"one__a_echo", "every__echo"} <= await tools(legacy)

                # Changed (one's tools renamed) and removed (every): both take effect.
                seen.clear()
                write(config, {"one": stdio_entry("--prefix", "b_")})
                await wait_for(lambda: "one__b_echo" in registry and "every__echo" not in registry, timeout=20)
                assert not (await legacy.list_prompts()).prompts
                names = await tools(legacy)
                assert "one__a_echo" not in names and "one__b_echo" in names
                await wait_for(lambda: any(isinstance(m, types.ToolListChangedNotification) for m in seen), timeout=10)
        assert set(gateway.gateway.pool.downstreams) == {"one"}


async def test_a_profile_edit_applies_to_the_next_request(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pml_gateway.proxy.downstream.watch")
    one = stdio_entry("--prefix", "a_")
    config = tmp_path / "profiled.json"

    def write_profiles(tools: list[str]) -> None:
        config.write_text(json.dumps({"mcpServers": {"one": one}, "profiles": {"p": {"tools": tools}}}))

    write_profiles(["one__a_echo"])
    async with run_gateway(tmp_path, {"one": one}, config=config) as gateway:
        await wait_for(lambda: "one__a_echo" in gateway.gateway.registry)
        async with Client(f"{gateway.url}/profiles/p/mcp", mode="legacy") as client:

            async def visible() -> set[str]:
                return {t.name for t in (await client.list_tools()).tools if not t.name.startswith("pml_")}

            assert await visible() == {"one__a_echo"}
            write_profiles(["one__a_pick"])
            with anyio.fail_after(10):
                while await visible() != {"one__a_pick"}:
                    await anyio.sleep(0.1)
            refused = await client.call_tool("one__a_echo", {"message": "x"})
            assert refused.is_error
            # A bad edit keeps the running profiles.
            config.write_text(json.dumps({"mcpServers": {"one": one}, "profiles": {"p": {"tools": "nope"}}}))
            await wait_for(lambda: any("config change refused" in r.getMessage() for r in caplog.records), timeout=10)
            assert await visible() == {"one__a_pick"}


async def test_a_gateway_watching_its_config_stops_at_once(tmp_path: Path) -> None:
    """The config watcher ends with the gateway: watchfiles, cancelled alone, waited for its watcher
    thread's 5 s timeout, so every Ctrl+C of a gateway with a config file took 5 s more."""
    async with run_gateway(tmp_path, {"t": stdio_entry()}) as gw:
        await wait_for(lambda: gw.gateway.registry.get("t__echo"))
        stopping = anyio.current_time()
    assert anyio.current_time() - stopping < 2.0
