"""``--log-format json``, downstream stderr named by server, a downstream's stray stdout in one line.

``pml-gateway serve`` runs in a subprocess with two misbehaving stdio downstreams: one writes a
line to stderr, one writes a non-JSON line to stdout before speaking MCP. Every line the gateway
writes to stderr must be one JSON object, the stderr line must carry its server's name, and the
stray stdout line must be reported in one record naming its server (no traceback).
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client

from gateway_support import ROOT, free_port, wait_for, wait_listening, write_config
from pml_gateway.observability.logs import STDERR_LINE_CHARS, JsonFormatter, configure_logging, named_stderr

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
DOWNSTREAM = HERE / "observability_downstream.py"


async def test_json_logs_name_each_downstream(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "chatty": {"command": sys.executable, "args": [str(DOWNSTREAM), "--stderr-line", "warming up the cache"]},
            "sloppy": {"command": sys.executable, "args": [str(DOWNSTREAM), "--garbage-stdout", "Server ready!"]},
        },
    )
    port = free_port()
    log_path = tmp_path / "stderr.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PML_LOG_FORMAT": "json"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    command = [sys.executable, "-m", "pml_gateway", "serve", "--config", str(config), "--db", ":memory:", "--port", str(port)]
    with log_path.open("w") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            await wait_listening(port, timeout=30)
            with anyio.fail_after(30):
                async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                    names = await wait_for(lambda: _tool_names(client), timeout=20)
                    assert {"chatty__meta", "sloppy__meta"} <= names  # the stray line did not break the session
                async with httpx.AsyncClient() as http:
                    assert (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200
                await wait_for(lambda: "warming up the cache" in log_path.read_text(), timeout=10)
        finally:
            process.terminate()
            process.wait(timeout=10)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    stderr_lines = [r for r in records if r.get("server") == "chatty" and "warming up the cache" in r["message"]]
    assert len(stderr_lines) == 1
    assert stderr_lines[0]["message"] == "[chatty] warming up the cache"
    stray = [r for r in records if "not JSON-RPC" in r["message"]]
    assert len(stray) == 1, stray
    assert stray[0]["server"] == "sloppy"
    assert "'sloppy'" in stray[0]["message"] and "Server ready!" in stray[0]["message"]
    assert "exc_info" not in stray[0] and stray[0]["level"] == "warning"
    assert not any("color_message" in r for r in records)
    assert not any("Traceback" in line for line in lines)
    assert any(r["message"].startswith("listening on http://") for r in records)  # the banner too
    assert any(r["logger"].startswith("uvicorn") for r in records)  # and uvicorn's own lines


async def _tool_names(client: Client) -> set[str]:
    return {tool.name for tool in (await client.list_tools()).tools}


def test_json_formatter_fields_and_extras() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("info", "json", stream=stream)
        logging.getLogger("pml_gateway.test").warning("disk %s", "full", extra={"server": "files", "count": 3})
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("pml_gateway.test").exception("it broke")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "warning" and first["logger"] == "pml_gateway.test" and first["message"] == "disk full"
    assert first["server"] == "files" and first["count"] == 3
    assert first["time"].endswith("Z")
    assert "ValueError: boom" in second["exc_info"]


def test_text_format_is_the_default() -> None:
    record: Any = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert json.loads(JsonFormatter().format(record))["message"] == "hello"
    from pml_gateway.settings import Settings

    assert Settings(db=":memory:").log_format == "text"
    assert Settings(db=":memory:", log_format="JSON").log_format == "json"


def test_a_downstream_stderr_line_is_logged_cut_past_its_bound(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pml_gateway.downstream")
    copy = io.StringIO()
    huge = "x" * (3 * STDERR_LINE_CHARS + 5)
    with named_stderr("loud", copy_to=copy) as errlog:
        child = subprocess.run(
            [sys.executable, "-c", f"import sys; sys.stderr.write('before\\n' + 'x' * {len(huge)} + '\\nafter\\n')"],
            stderr=errlog,
            timeout=30,
        )
    assert child.returncode == 0
    for _ in range(100):  # the pump is a thread: bounded wait for it to reach the end
        if "after" in copy.getvalue():
            break
        time.sleep(0.05)
    lines = copy.getvalue().splitlines()
    assert lines[0] == "[loud] before" and lines[-1] == "[loud] after" and len(lines) == 3
    assert lines[1].endswith(f"... (line cut at {STDERR_LINE_CHARS} characters)")
    assert len(lines[1]) < STDERR_LINE_CHARS + 100  # the rest of the line was skipped, not logged
    assert [r.server for r in caplog.records if r.name == "pml_gateway.downstream"] == ["loud"] * 3  # type: ignore[attr-defined]
