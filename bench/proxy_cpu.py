"""Gateway CPU per proxied call, in process: the fast path, and the SDK's handler plus its kernel.

    PYTHONPATH=. .venv/bin/python bench/proxy_cpu.py [--calls 20000] [--repeat 5]

Why: bench/proxy.py measures latency over real sockets, which swings with whatever else the
machine runs. This one times only the gateway's own work for one ``tools/call`` with
``time.process_time`` (CPU, not wall time), so a change to the call path can be compared on a
busy machine. The downstream's link is replaced by one that answers at once, so what is measured
is everything between the request bytes and the link, and back:

- fast path: ``FastPath.handle`` on a complete 2026-07-28 request (checks, call, trace, result
  shaped for the client, the JSON response written to a no-op ASGI ``send``);
- SDK handler: the ``on_call_tool`` handler the SDK calls, then the SDK kernel's own shaping of
  its return value (``ServerRunner._serialize``); the SDK's transport, the same in every version
  of the gateway, is left out.

It runs against whichever tree is on ``PYTHONPATH`` (the layout before and after issue 8 alike),
so the same command compares two checkouts. Reported: best-of-``repeat`` µs per call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from types import SimpleNamespace
from typing import Any

import anyio
import mcp.types as types
from mcp.server.runner import ServerRunner

from graphrag import GraphRAGEngine
from pml_gateway.settings import Settings

try:  # the flat layout before issue 8 (tried first: an editable install may add the new one)
    from pml_gateway.downstream import Downstream, DownstreamState  # type: ignore[no-redef]
    from pml_gateway.downstream_config import HttpServerConfig  # type: ignore[no-redef]
    from pml_gateway.gateway import Gateway  # type: ignore[no-redef]
except ImportError:  # the layout since issue 8
    from pml_gateway.proxy.downstream.config import HttpServerConfig
    from pml_gateway.proxy.downstream.supervisor import Downstream, DownstreamState
    from pml_gateway.proxy.gateway import Gateway

MODERN = "2026-07-28"
RESULT = {"content": [{"type": "text", "text": "hello"}], "isError": False, "resultType": "complete"}
SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


class InstantLink:
    """A downstream link that answers every call at once (what both layouts' links are called with)."""

    async def call_tool(self, name: str, arguments: Any, **_: Any) -> dict[str, Any]:
        return {**RESULT, "content": list(RESULT["content"])}

    def close(self) -> None:
        pass


def request() -> tuple[dict[str, Any], bytes]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "echo__echo", "arguments": {"text": "hello"}, "_meta": meta}}
    headers = {
        "host": "127.0.0.1:8000", "accept": "application/json, text/event-stream",
        "content-type": "application/json", "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call", "mcp-name": "echo__echo",
    }
    scope = {
        "type": "http", "method": "POST", "path": "/mcp", "scheme": "http", "query_string": b"",
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    return scope, json.dumps(body).encode()


async def run(calls: int, repeat: int) -> dict[str, float]:
    settings = Settings(config=None, db=":memory:", trace_idle_seconds=3600, log_level="warning")
    gateway = Gateway(settings)
    async with gateway.running(GraphRAGEngine()):
        downstream = Downstream(HttpServerConfig(name="echo", url="http://127.0.0.1:9/mcp"), gateway.registry)
        downstream.state = DownstreamState.CONNECTED
        downstream._link = InstantLink()  # type: ignore[assignment]
        gateway.pool.downstreams["echo"] = downstream
        gateway.registry.set_server_tools("echo", [types.Tool(name="echo", input_schema=SCHEMA)])
        fast = gateway.fast_path
        assert fast is not None, "the fast path is off"
        scope, body = request()
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        async def receive() -> Any:
            return {"type": "http.disconnect"}

        async def fast_call() -> None:
            sent.clear()
            assert await fast.handle(scope, body, receive, send)

        upstream = gateway.upstream
        runner = ServerRunner(upstream.server, None, None)  # type: ignore[arg-type]  # _serialize reads .server
        session = SimpleNamespace(client_params=None)
        ctx = SimpleNamespace(request=None, request_id=1, meta=None, protocol_version=MODERN, session=session)
        params = types.CallToolRequestParams(name="echo__echo", arguments={"text": "hello"})

        async def sdk_call() -> None:
            result = await upstream._call_tool(ctx, params)
            runner._serialize("tools/call", MODERN, result)

        best: dict[str, float] = {}
        for name, call in (("fast path", fast_call), ("SDK handler + kernel shaping", sdk_call)):
            for _ in range(200):
                await call()
            if name == "fast path":
                assert json.loads(sent[-1]["body"])["result"]["content"][0]["text"] == "hello"
            for _ in range(repeat):
                started = time.process_time()
                for _ in range(calls):
                    await call()
                per_call = (time.process_time() - started) / calls * 1e6
                best[name] = min(best.get(name, per_call), per_call)
        return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    best = anyio.run(run, args.calls, args.repeat)
    tree = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules["pml_gateway"].__file__ or "")))
    print(f"\nGateway CPU per tools/call, in process (gateway from {tree}; best of {args.repeat} x {args.calls} calls; "
          f"Python {sys.version.split()[0]})\n")
    print("| path | µs CPU per call |")
    print("|---|---:|")
    for name, micros in best.items():
        print(f"| {name} | {micros:.1f} |")


if __name__ == "__main__":
    main()
