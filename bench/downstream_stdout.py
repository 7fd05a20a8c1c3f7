"""What one stdio downstream's stdout costs everyone else: the SDK's stdio client against the
gateway's own transport (pml_gateway/proxy/downstream/stdio_transport.py), in one run.

    PYTHONPATH=. .venv/bin/python bench/downstream_stdout.py [--seconds 10] [--only long,spew]

One gateway (in this process, real uvicorn) per transport and scenario, with a well-behaved stdio
server ``steady`` and, except in the baseline, a misbehaving one (tests/stdio_noise_server.py):

- ``long``: writes a 200 MB line with no newline before serving (restarted each time it is cut);
- ``spew``: writes lines that are not JSON-RPC, forever;
- ``badbyte``: writes a lone 0xff byte line, then serves normally.

For ``--seconds`` a client calls ``steady__echo`` one call after the other over ``/mcp``.
Reported: p50 / p95 of those calls, the CPU time of this process (gateway and client, as % of one
core), bytes of log written (tracebacks included), and the misbehaving server's restarts and state.
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from gateway_support import FAST, run_gateway, stdio_entry  # noqa: E402
from pml_gateway.observability import named_stderr  # noqa: E402
from pml_gateway.observability.logs import TEXT_FORMAT, install_stdout_filter  # noqa: E402
from pml_gateway.proxy.downstream import supervisor  # noqa: E402
from pml_gateway.proxy.downstream.config import StdioServerConfig  # noqa: E402

NOISE = ROOT / "tests" / "stdio_noise_server.py"
SCENARIOS = {
    "baseline": None,
    "long": ["--at-start", f"long:{200 * 1000 * 1000}"],
    "spew": ["--at-start", "spew"],
    "badbyte": ["--at-start", "badbyte"],
}


@asynccontextmanager
async def _sdk_stdio(params: StdioServerParameters, name: str) -> AsyncIterator[Any]:
    # What the gateway did before stdio_transport.py: the SDK's client as-is.
    with named_stderr(name) as errlog:
        async with stdio_client(params, errlog=errlog) as streams:
            yield streams


@asynccontextmanager
async def transport_in_use(which: str) -> AsyncIterator[None]:
    if which == "ours":
        yield
        return
    original = supervisor.Downstream._transport

    def sdk_transport(self: supervisor.Downstream) -> Any:
        config = self.config
        if not isinstance(config, StdioServerConfig):
            return original(self)
        params = StdioServerParameters(command=config.command, args=list(config.args), env=dict(config.env) or None, cwd=config.cwd)
        return _sdk_stdio(params, self.name)

    supervisor.Downstream._transport = sdk_transport  # type: ignore[method-assign]
    try:
        yield
    finally:
        supervisor.Downstream._transport = original  # type: ignore[method-assign]


class Counting(logging.Handler):
    """Formats every record (tracebacks too) and counts the bytes."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter(TEXT_FORMAT))
        self.bytes = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.bytes += len(self.format(record)) + 1


async def measure(which: str, scenario: str, seconds: float) -> dict[str, Any]:
    servers: dict[str, Any] = {"steady": stdio_entry()}
    if SCENARIOS[scenario] is not None:
        servers["noisy"] = {"command": sys.executable, "args": [str(NOISE), *SCENARIOS[scenario]]}
    counting = Counting()
    root = logging.getLogger()
    root.addHandler(counting)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with transport_in_use(which), run_gateway(Path(tmp), servers, timing=FAST, startup_timeout_seconds=5) as gw:
                async with Client(gw.mcp_url, cache=None) as client:
                    for _ in range(20):  # warm-up
                        await client.call_tool("steady__echo", {"text": "x"})
                    counting.bytes = 0
                    latencies: list[float] = []
                    cpu0, wall0 = time.process_time(), time.monotonic()
                    while time.monotonic() - wall0 < seconds:
                        start = time.perf_counter()
                        result = await client.call_tool("steady__echo", {"text": "x"})
                        latencies.append((time.perf_counter() - start) * 1000)
                        assert not result.is_error, result
                    cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
                noisy = gw.gateway.pool.downstreams.get("noisy")
                return {
                    "p50": statistics.median(latencies),
                    "p95": statistics.quantiles(latencies, n=20)[18],
                    "calls": len(latencies),
                    "cpu": cpu * 100,
                    "log": counting.bytes,
                    "noisy": f"{noisy.state.value}, {noisy.restarts} restarts" if noisy else "-",
                }
    finally:
        root.removeHandler(counting)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    args = parser.parse_args()
    install_stdout_filter()  # as the gateway's logging does (observability/logs.py)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("pml_gateway.downstream").setLevel(logging.ERROR)  # steady's stderr lines: not measured
    rows = []
    for scenario in args.only.split(","):
        for which in ("sdk", "ours"):
            row = await measure(which, scenario, args.seconds)
            rows.append((scenario, which, row))
            print(f"{scenario:9} {which:5} p50 {row['p50']:7.1f} ms  p95 {row['p95']:7.1f} ms  calls {row['calls']:6}  "
                  f"cpu {row['cpu']:5.0f}%  log {row['log']:>11,} B  noisy: {row['noisy']}", flush=True)


if __name__ == "__main__":
    anyio.run(main)
