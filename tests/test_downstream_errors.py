"""What a downstream's failure reads like: the command it could not start, never a private class
name or a bare errno (issue 16)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from mcp import Client

from gateway_support import health, run_gateway, stdio_entry
from pml_gateway.proxy.downstream import errors

pytestmark = pytest.mark.anyio


def test_describe_error_names_the_missing_command_and_never_a_private_class() -> None:
    missing = FileNotFoundError(2, "No such file or directory", "no-such-mcp-server")
    assert errors.describe_error(missing) == "cannot start 'no-such-mcp-server': No such file or directory"
    assert errors.describe_error(ExceptionGroup("x", [missing])) == errors.describe_error(missing)
    assert errors.describe_error(errors.ConnectionEnded("Connection closed")) == "Connection closed"


async def test_health_says_which_command_is_missing_and_that_a_killed_server_closed(tmp_path: Path) -> None:
    servers = {"ghost": {"command": "no-such-mcp-server", "args": []}, "local": stdio_entry()}
    async with run_gateway(tmp_path, servers) as gw:

        async def downstreams() -> dict[str, dict[str, object]]:
            return (await health(gw.url))["downstreams"]

        with anyio.fail_after(30):
            while (await downstreams())["ghost"]["error"] is None or (await downstreams())["local"]["state"] != "connected":
                await anyio.sleep(0.1)
        ghost = (await downstreams())["ghost"]
        assert ghost["state"] == "failed"
        assert ghost["error"] == "cannot start 'no-such-mcp-server': No such file or directory"
        async with Client(f"{gw.url}/mcp") as client:
            pid = (await client.call_tool("local__echo", {"text": "x"})).structured_content["pid"]
            os.kill(pid, signal.SIGKILL)
            with anyio.fail_after(30):
                while (error := (await downstreams())["local"]["error"]) is None:
                    await client.call_tool("local__echo", {"text": "y"})  # a call finds the dead connection
                    await anyio.sleep(0.1)
        assert "_ConnectionEnded" not in str(error) and "Errno" not in str(error)
        assert error == "its process was killed by signal 9 (SIGKILL)"  # how it ended, not "Connection closed"


def test_the_restart_backoff_stays_short_enough_to_recover_within_ten_seconds() -> None:
    from pml_gateway.proxy.downstream import SupervisionTiming

    timing = SupervisionTiming()
    delays = [timing.backoff(n) for n in range(1, 12)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) <= 8.0  # after a long hang clears, the next attempt is at most 8 s away
    assert timing.stable_after <= 10.0
