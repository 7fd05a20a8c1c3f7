"""A stdio downstream's stdout cannot degrade the gateway (issue 15 item 9), and a stdio server
that ends says how (issue 16 item 6): real gateway, real subprocesses (tests/stdio_noise_server.py
writes what no SDK server would)."""

from __future__ import annotations

import inspect
import logging
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from gateway_support import HERE, health, run_gateway, stdio_entry, text, wait_for
from pml_gateway.proxy.downstream import errors, stdio_transport

pytestmark = pytest.mark.anyio

NOISE = HERE / "stdio_noise_server.py"
LIMIT = 64 * 1024  # the line limit in these tests (default 16 MiB)
TRANSPORT_LOG = "pml_gateway.proxy.downstream.stdio_transport"
SUPERVISOR_LOG = "pml_gateway.proxy.downstream.supervisor"


def noise_entry(*args: str) -> dict[str, Any]:
    return {"command": sys.executable, "args": [str(NOISE), *args]}


def test_the_sdk_internals_the_transport_reuses_are_there() -> None:
    # stdio_transport.py keeps the SDK's process handling by calling its private helpers: an SDK
    # upgrade that renames or reshapes them must fail here, not in production.
    from mcp.client import stdio

    for name in ("_create_platform_compatible_process", "_get_executable_command", "_stop_server_process"):
        assert inspect.iscoroutinefunction(getattr(stdio, name)), name
    assert list(inspect.signature(stdio._create_platform_compatible_process).parameters) == [
        "command", "args", "env", "errlog", "cwd"
    ]
    assert list(inspect.signature(stdio._stop_server_process).parameters) == ["process"]
    assert stdio.PROCESS_TERMINATION_TIMEOUT > 0 and callable(stdio.get_default_environment)


def test_bad_lines_are_logged_at_most_once_per_interval_per_server(caplog: pytest.LogCaptureFixture) -> None:
    log = stdio_transport._ThrottledLog("noisy", interval=0.2)
    with caplog.at_level(logging.WARNING, logger=TRANSPORT_LOG):
        for _ in range(1000):
            log.warn("a line that is not JSON-RPC (skipped)", b"junk" * 100)
        time.sleep(0.25)
        log.warn("a line that is not JSON-RPC (skipped)", b"junk")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all(line.startswith("downstream 'noisy' wrote a line that is not JSON-RPC") for line in lines)
    assert "999 more such lines" in lines[1]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in caplog.records)
    assert len(lines[0]) < 400  # an excerpt of the line, not all of it


async def test_a_server_writing_garbage_is_read_no_faster_than_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # The budget scaled down (100 skipped lines per 0.1 s) so that its pauses show in a second.
    monkeypatch.setattr(stdio_transport, "SKIPPED_PER_SECOND", 100)
    monkeypatch.setattr(stdio_transport, "SKIP_WINDOW", 0.1)
    transport = stdio_transport.StdioTransport(StdioServerParameters(command="unused"), server="spewer")
    stdout_in, stdout = anyio.create_memory_object_stream[bytes](100)
    deliver, delivered = anyio.create_memory_object_stream[Any](1)
    for _ in range(20):  # 2,000 lines that are not JSON-RPC, in chunks of 100
        stdout_in.send_nowait(b"garbage\n" * 100)
    stdout_in.send_nowait(b'{"jsonrpc": "2.0", "id": 1, "result": {}}\n')
    stdout_in.close()
    started = time.monotonic()
    with anyio.fail_after(10), pytest.raises(anyio.EndOfStream):
        await transport._read_lines(stdout, deliver)  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    assert delivered.receive_nowait().message.id == 1  # the one message still arrives
    assert elapsed >= 0.5  # about 2,000 / (100 + a chunk) windows of 0.1 s: paused, not spinning


async def test_a_noisy_stdout_leaves_the_gateway_and_the_other_servers_well(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    servers = {"noisy": noise_entry(), "steady": stdio_entry()}
    caplog.set_level(logging.WARNING)
    async with run_gateway(tmp_path, servers, downstream_max_line_bytes=LIMIT) as gw:
        with anyio.fail_after(60):
            async with Client(gw.mcp_url) as client:
                await wait_for(lambda: gw.gateway.registry.get("noisy__echo") is not None)

                async def steady() -> None:
                    result = await client.call_tool("steady__echo", {"text": "here"})
                    assert not result.is_error and result.structured_content["text"] == "here"

                # 5,000 lines that are not JSON-RPC: skipped, the call still answered, a bounded log
                result = await client.call_tool("noisy__garbage", {"count": 5_000})
                assert not result.is_error and text(result) == "garbage written"
                await steady()
                # a lone 0xff line, then an answer with 0xff in its text: decoded with U+FFFD
                result = await client.call_tool("noisy__badbytes", {})
                assert not result.is_error and text(result) == "caf\ufffd"
                assert (await health(gw.url))["downstreams"]["noisy"]["restarts"] == 0
                noisy_lines = [r for r in caplog.records if r.name == TRANSPORT_LOG]
                assert 1 <= len(noisy_lines) <= 2  # 5,001 bad lines, one or two throttled log lines
                assert all("'noisy'" in r.getMessage() and r.exc_info is None for r in noisy_lines)
                assert sum(len(r.getMessage()) for r in caplog.records) < 2_000

                # a line past the limit (a 1 MB line, no newline): the call fails saying so, the
                # server is restarted with one log line naming it, and comes back
                result = await client.call_tool("noisy__flood", {"bytes": 1_000_000})
                assert result.is_error
                why = errors.line_too_long(LIMIT)
                assert text(result) == errors.connection_lost("noisy", "flood", why)
                await steady()

                def restarted() -> list[str]:
                    return [r.getMessage() for r in caplog.records if r.name == SUPERVISOR_LOG and "'noisy'" in r.getMessage()]

                await wait_for(restarted)
                assert len(restarted()) == 1 and why in restarted()[0] and "restarting" in restarted()[0]
                await wait_for(lambda: gw.gateway.pool.downstreams["noisy"].state.value == "connected")
                status = (await health(gw.url))["downstreams"]
                assert status["noisy"]["restarts"] == 1 and status["steady"]["restarts"] == 0
                result = await client.call_tool("noisy__echo", {"text": "back"})
                assert not result.is_error and text(result) == "back"
                assert not any(r.exc_info for r in caplog.records)


async def test_a_server_whose_first_line_never_ends_is_restarted_saying_why(tmp_path: Path) -> None:
    servers = {"long": noise_entry("--at-start", "long:1000000"), "steady": stdio_entry()}
    async with run_gateway(tmp_path, servers, downstream_max_line_bytes=LIMIT) as gw:
        with anyio.fail_after(30):
            await wait_for(lambda: gw.gateway.pool.downstreams["long"].restarts >= 1)
        status = (await health(gw.url))["downstreams"]
        assert status["long"]["error"] == errors.line_too_long(LIMIT)
        assert status["steady"]["state"] == "connected"


async def test_a_command_that_exits_says_its_exit_code(tmp_path: Path) -> None:
    servers = {
        "quits": {"command": "sh", "args": ["-c", "echo 'bad config' >&2; exit 3"]},
        "crashes": noise_entry(),
    }
    async with run_gateway(tmp_path, servers) as gw:
        with anyio.fail_after(30):
            await wait_for(lambda: gw.gateway.pool.downstreams["quits"].last_error is not None)
            assert (await health(gw.url))["downstreams"]["quits"]["error"] == "its process exited with code 3"
            async with Client(gw.mcp_url) as client:
                await wait_for(lambda: gw.gateway.registry.get("crashes__exit") is not None)
                # a crash during a call: the call's error says how the process ended
                result = await client.call_tool("crashes__exit", {"code": 7})
                assert result.is_error
                assert text(result) == errors.connection_lost("crashes", "exit", "its process exited with code 7")
                down = gw.gateway.pool.downstreams["crashes"]
                await wait_for(lambda: down.restarts >= 1)
                assert "exited with code 7" in str(down.last_error)


def test_exit_texts() -> None:
    assert errors.process_exited(0) == "its process exited with code 0"
    assert errors.process_exited(-9) == "its process was killed by signal 9 (SIGKILL)"
    assert errors.process_exited(-200) == "its process was killed by signal 200"
    # the transport's word on how the connection ended wins over the session's generic one
    from mcp import MCPError

    closed = MCPError(code=-32000, message="Connection closed")
    ended = errors.ConnectionEnded(errors.process_exited(1))
    assert errors.describe_error(ExceptionGroup("x", [closed, ExceptionGroup("y", [ended])])) == "its process exited with code 1"
    assert errors.describe_error(ExceptionGroup("x", [closed])) == "Connection closed"
