"""``GET /tools``: every tool the gateway exposes right now, with the server it belongs to.

``GET /graph`` holds only the tools the engine has learned about (those that ran); a dashboard
that shows the whole gateway also needs the ones never called, and which server each belongs to.
This route lists the exposed downstream tools (the same set ``tools/list`` shows a client with
``tool_exposure=all``), so the page can grey out the never-called ones and notice tools that left.

The tools come from any extension that carries a tool registry (the MCP gateway does): duck-typed
on its public ``registry.tools()``, so this module imports nothing of the proxy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pml_gateway.state import app_state

__all__ = ["ToolInfo", "ToolList", "tools_route"]


class ToolInfo(BaseModel):
    """One exposed tool."""

    tool_id: str  #: the exposed name, ``<server>__<tool>``: the id events and ``/graph`` use
    server: str  #: the downstream server's name from the config
    title: str | None = None
    description: str | None = None


class ToolList(BaseModel):
    """The answer of ``GET /tools``: exposed tools ordered by ``tool_id``."""

    tools: list[ToolInfo]


class _Tool(Protocol):
    name: str
    title: str | None
    description: str | None


class _Registered(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def server(self) -> str: ...
    @property
    def tool(self) -> _Tool: ...


class _Registry(Protocol):
    def tools(self) -> Iterable[_Registered]: ...


@runtime_checkable
class _HasRegistry(Protocol):
    registry: _Registry


def exposed_tools(extensions: Iterable[object]) -> ToolList:
    """The exposed tools of every extension that has a registry (none without a gateway)."""
    tools: dict[str, ToolInfo] = {}
    for extension in extensions:
        if not isinstance(extension, _HasRegistry):
            continue
        for entry in extension.registry.tools():
            tools[entry.name] = ToolInfo(
                tool_id=entry.name, server=entry.server, title=entry.tool.title, description=entry.tool.description
            )
    return ToolList(tools=[tools[name] for name in sorted(tools)])


async def list_tools(request: Request) -> Response:
    body = exposed_tools(app_state(request).extensions).model_dump_json()
    return Response(body, media_type="application/json")


def tools_route() -> Route:
    return Route("/tools", list_tools, methods=["GET"])
