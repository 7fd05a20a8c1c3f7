"""A downstream MCP server over Streamable HTTP that remembers the credentials it was sent.

    python auth_header_server.py --port N

Its tool ``seen_authorization`` returns every ``Authorization`` header any request to it
carried: the auth tests prove a client's token never travels past the gateway.
"""

from __future__ import annotations

import argparse
import json

import uvicorn
from mcp.server import MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--transport", default="streamable-http")  # what http_downstream passes
args = parser.parse_args()

SEEN: list[str] = []
server = MCPServer("headers")


@server.tool()
def seen_authorization() -> str:
    """Every Authorization header this server received so far, as a JSON list."""
    return json.dumps(SEEN)


class Recorder:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            SEEN.extend(v.decode() for k, v in scope["headers"] if k.lower() == b"authorization")
        await self.app(scope, receive, send)


app = server.streamable_http_app()
uvicorn.run(Recorder(app), host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")
