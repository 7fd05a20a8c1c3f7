"""A downstream MCP server for the gateway tests: tools that are slow, fail, or die on demand.

    python gateway_test_server.py [--transport stdio|streamable-http|sse] [--port N] [--prefix P]

``--prefix`` renames its tools (``P`` + name) so two copies can offer different or clashing names.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Literal

import anyio
from pydantic import BaseModel, Field

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

parser = argparse.ArgumentParser()
parser.add_argument("--transport", default="stdio")
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--prefix", default="")
parser.add_argument("--extra-tool", action="append", default=[], help="one more echo tool under this exact name")
args = parser.parse_args()

server = MCPServer("testsrv")


class Echo(BaseModel):
    text: str
    pid: int


def tool(name: str):
    return server.tool(name=args.prefix + name)


@tool("echo")
def echo(text: str) -> Echo:
    """Return the text, and this process's pid."""
    return Echo(text=text, pid=os.getpid())


@tool("sleep")
async def sleep(seconds: float) -> str:
    """Sleep, then say so."""
    await anyio.sleep(seconds)
    return f"slept {seconds}"


class Span(BaseModel):
    start: float
    end: float


@tool("span")
async def span(seconds: float = 0.3) -> Span:
    """Sleep, reporting when it started and ended (wall clock), to show what ran in parallel."""
    start = time.time()
    await anyio.sleep(seconds)
    return Span(start=start, end=time.time())


@tool("fail")
def fail(message: str) -> str:
    """Always fails with the message."""
    raise ToolError(message)


@tool("pick")
def pick(count: int = Field(ge=1, le=10), mode: Literal["fast", "slow"] = "fast") -> str:
    """Validated arguments."""
    return f"{count} {mode}"


@tool("pid")
def pid() -> int:
    """This process's id."""
    return os.getpid()


for extra in args.extra_tool:
    server.tool(name=extra, description="an extra echo")(lambda text="": text)

if __name__ == "__main__":
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run(args.transport, host="127.0.0.1", port=args.port)
