"""Shared command line of the example servers: stdio by default, or HTTP on a port.

    python notes_server.py                                   # stdio (what mcp.json uses)
    python notes_server.py --transport streamable-http --port 9001
    python notes_server.py --transport sse --port 9002       # legacy HTTP+SSE
"""

from __future__ import annotations

import argparse

from mcp.server import MCPServer


def serve(server: MCPServer, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=server.name)
    parser.add_argument("--transport", choices=["stdio", "streamable-http", "sse"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run(args.transport, host=args.host, port=args.port)
