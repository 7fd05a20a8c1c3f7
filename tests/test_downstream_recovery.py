"""An HTTP downstream whose hang clears is back within 10 s (issue 15 item 12), measured end to end.

The hang is real: the downstream process (tests/gateway_test_server.py over Streamable HTTP) is
stopped with SIGSTOP, so its socket still accepts connections but nothing answers, as a server
stuck in a loop or a GC pause does. It is resumed at the worst moment for recovery: just as the
supervisor starts its longest wait, the backoff's cap. The backoff is the product's (1 s doubling
to 8 s, reset after 10 s of live connection); only the liveness check and each failed attempt are
shortened so that the cap is reached in seconds. One deadline bounds a whole connect attempt,
the SDK's ``server/discover`` probe included (its own 10 s timeout is fixed, outside the client's
read timeout): before, each attempt against a hung server lasted 10 s more than
``connect_timeout``, and the four attempts below would have taken over 40 s.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from mcp import Client

from gateway_support import http_downstream, run_gateway, text, wait_for, wait_listening
from pml_gateway.proxy.downstream import DownstreamState, SupervisionTiming, errors

pytestmark = pytest.mark.anyio

#: The product's backoff; the hang noticed and each attempt given up within about a second.
HANG = replace(SupervisionTiming(), ping_interval=0.5, ping_timeout=1.0, connect_timeout=1.0)
BOUND = 10.0


async def test_an_http_downstream_whose_hang_clears_is_back_within_ten_seconds(tmp_path: Path) -> None:
    assert (HANG.backoff_initial, HANG.backoff_max, HANG.stable_after) == (1.0, 8.0, 10.0)
    with http_downstream() as (url, port, proc):
        await wait_listening(port)
        async with run_gateway(tmp_path, {"remote": {"url": url}}, timing=HANG) as gw:
            remote = gw.gateway.pool.downstreams["remote"]
            with anyio.fail_after(60):
                await wait_for(lambda: remote.state is DownstreamState.CONNECTED)
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    hung = time.monotonic()
                    await wait_for(lambda: remote.state is not DownstreamState.CONNECTED, timeout=10)
                    noticed = time.monotonic() - hung
                    assert remote.last_error and "stopped answering" in remote.last_error
                    # restart number 4 waits the cap (1, 2, 4, 8 s): resume just as that wait begins;
                    # three 1 s attempts and 1 + 2 + 4 s of backoff: about 10 s (over 40 s before the
                    # deadline covered the discover probe)
                    await wait_for(lambda: remote.restarts >= 4, timeout=20)
                    assert HANG.backoff(remote.restarts) == HANG.backoff_max
                    assert remote.last_error == errors.connect_timed_out(HANG.connect_timeout)
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
                resumed = time.monotonic()
                async with Client(gw.mcp_url, cache=None) as client:

                    async def answered() -> bool:
                        result = await client.call_tool("remote__echo", {"text": "back"})
                        return not result.is_error and text(result) != "" and result.structured_content["text"] == "back"

                    await wait_for(answered, timeout=30, interval=0.1)
                recovered = time.monotonic() - resumed
    print(f"\nhang noticed after {noticed:.1f} s; back {recovered:.2f} s after it cleared (bound {BOUND:g} s)")
    assert recovered < BOUND
