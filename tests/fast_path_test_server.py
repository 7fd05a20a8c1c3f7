"""A downstream MCP server (low-level API, raw schemas) for the fast-path tests, over Streamable HTTP.

    python fast_path_test_server.py --port N

Tools whose results show what reached the server and that carry every kind of result content:

- ``region``: an argument annotated ``x-mcp-header: Region``; answers with the argument, the
  ``Mcp-Param-Region`` header it received and the W3C trace context in the request's ``_meta``;
- ``rich``: text, an image, an embedded resource, structured content and a result ``_meta``;
- ``broken``: a handler result that is not a tool result (the server answers a JSON-RPC error).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import mcp.types as types
import uvicorn
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from starlette.applications import Starlette
from starlette.routing import Route

REGION_SCHEMA = {
    "type": "object",
    "properties": {"region": {"type": "string", "x-mcp-header": "Region"}, "text": {"type": "string"}},
    "required": ["region"],
}
TOOLS = [
    types.Tool(name="region", description="Echo a routed argument", input_schema=REGION_SCHEMA),
    types.Tool(name="rich", description="Every kind of content", input_schema={"type": "object"}),
    types.Tool(name="broken", description="Answers a JSON-RPC error", input_schema={"type": "object"}),
]
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
    arguments = params.arguments or {}
    if params.name == "region":
        headers = getattr(ctx.request, "headers", None)
        meta = dict(ctx.meta or {})
        seen = {
            "region": arguments.get("region"),
            "header": headers.get("mcp-param-region") if headers is not None else None,
            "traceparent": meta.get("traceparent"),
            "text": arguments.get("text", "é ✓ \u2028"),
        }
        return types.CallToolResult(content=[types.TextContent(type="text", text=str(seen))], structured_content=seen)
    if params.name == "rich":
        return types.CallToolResult(
            content=[
                types.TextContent(type="text", text="plain", annotations=types.Annotations(priority=0.5)),
                types.ImageContent(type="image", data=PIXEL, mime_type="image/png"),
                types.EmbeddedResource(
                    type="resource",
                    resource=types.TextResourceContents(uri="memo://one", text="a memo", mime_type="text/plain"),
                ),
            ],
            structured_content={"n": 1, "nested": {"list": [1, 2.5, None, "x"]}},
            meta={"example.com/kept": {"a": 1}},
        )
    if params.name == "broken":
        return {"content": "not a list"}
    return types.CallToolResult(content=[types.TextContent(type="text", text="unknown")], is_error=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = Server("fast-path-test", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)
    manager = StreamableHTTPSessionManager(app=server)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    app = Starlette(lifespan=lifespan, routes=[Route("/mcp", StreamableHTTPASGIApp(manager))])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
