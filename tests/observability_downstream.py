"""A downstream MCP server for the observability tests (stdio, low-level API).

    python observability_downstream.py [--stderr-line TEXT] [--garbage-stdout TEXT]

Tools: ``meta`` answers with the W3C trace context it received in ``params._meta`` (so a test
sees that one trace crosses the gateway); ``fail`` always returns a tool error.
``--stderr-line`` writes a line to stderr at start-up, ``--garbage-stdout`` a non-JSON line to
stdout (before the MCP transport takes stdout over), as misbehaving servers do.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

TOOLS = [
    types.Tool(name="meta", description="The trace context received", input_schema={"type": "object"}),
    types.Tool(name="fail", description="Always a tool error", input_schema={"type": "object"}),
]


async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name == "meta":
        seen = {"traceparent": dict(ctx.meta or {}).get("traceparent")}
        return types.CallToolResult(content=[types.TextContent(type="text", text=str(seen))], structured_content=seen)
    return types.CallToolResult(content=[types.TextContent(type="text", text="it failed")], is_error=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stderr-line")
    parser.add_argument("--garbage-stdout")
    args = parser.parse_args()
    if args.stderr_line:
        print(args.stderr_line, file=sys.stderr, flush=True)
    if args.garbage_stdout:
        print(args.garbage_stdout, flush=True)
    server = Server("observability-test", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
