"""What a new user's first hour runs into on the command line (issue 16), each checked for real."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from gateway_support import TEST_SERVER

pytestmark = pytest.mark.anyio

PML = [sys.executable, "-m", "pml_gateway"]


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PML, *args], capture_output=True, text=True, timeout=30, cwd=cwd, env=env)


async def test_stdio_with_a_busy_events_port_says_so_in_one_line_and_keeps_serving(tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text('{"mcpServers": {"local": {"command": "python", "args": ["%s"]}}}' % TEST_SERVER)
    busy = socket.create_server(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    with tempfile.TemporaryFile("w+") as errlog:
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "pml_gateway", "stdio", "--config", str(config), "--db", ":memory:", "--events-port", str(port)],
            cwd=str(tmp_path),
        )
        try:
            with anyio.fail_after(60):
                async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
                    await session.initialize()
                    result = await session.call_tool("local__echo", {"text": "still here"})
                    assert not result.is_error
        finally:
            busy.close()
        errlog.seek(0)
        err = errlog.read()
    lines = [line for line in err.splitlines() if f"events port 127.0.0.1:{port}" in line]
    assert len(lines) == 1, err
    assert "serving MCP over stdio without the HTTP API" in lines[0]
    assert "Traceback" not in err


def test_the_banner_warns_when_no_config_was_found(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*PML, "serve", "--port", "0", "--db", ":memory:"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 30
        assert process.stderr is not None
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            seen.append(line)
            if "listening on" in line or not line:
                break
        text = "".join(seen)
        assert "warning: no config file" in text and str(tmp_path) in text
        assert "database :memory: (nothing is kept)" in text
        assert "auth: off" in text
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_stdio_port_points_at_events_port_and_errors_show_the_commands_usage() -> None:
    answer = run_cli("stdio", "--port", "9000")
    assert answer.returncode == 2
    assert "usage: pml-gateway stdio" in answer.stderr
    assert "--events-port" in answer.stderr.splitlines()[-1]
    answer = run_cli("serve", "--bogus")
    assert answer.returncode == 2 and "usage: pml-gateway serve" in answer.stderr


def test_an_empty_config_flag_means_no_downstreams_like_the_env_var() -> None:
    from pml_gateway.cli import build_parser
    from pml_gateway.cli.common import settings_from_args

    args, _ = build_parser().parse_known_args(["serve", "--config", ""])
    assert settings_from_args(args).config is None
