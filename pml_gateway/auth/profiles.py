"""Profiles: per-client tool sets ("virtual servers"), one object with every rule in it.

In the config file beside ``mcpServers`` (parsed by proxy/downstream/config.py)::

    "profiles": {"reader": {"tools": ["files__read_*", "time__*"], "prompts": [...],
                            "resources": ["file:///docs/*"], "servers": ["notes"]}}

Patterns are shell globs (``fnmatchcase``: case-sensitive) on exposed names, and on URIs for
resources. ``servers`` is the shortcut for "everything of these servers": a tool, prompt or
resource of a listed server is allowed whether or not a pattern names it (callers that know the
server pass it; for a bare tool id, ``<server>__*`` patterns are derived by the config loader).

The upstream MCP server asks ``allows_tool`` / ``allows_prompt`` / ``allows_resource`` at one
seam; the event stream asks ``filter_event``: an event that names any tool outside the profile is
not delivered, and ``metrics_updated`` keeps only the profile's tools in its PageRank top list;
``GET /graph`` and ``graph://snapshot`` have the engine build the document with ``allows_tool`` as
its filter (``snapshot_json_async(visible)``), so a resumed stream and its snapshot agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from pydantic import BaseModel, ConfigDict, Field

from graphrag import GraphEvent
from graphrag.events import MetricsUpdatedData



class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    tools: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    #: ``<server>__*`` for each of ``servers``, in exposed-name form (filled in by the loader).
    server_patterns: tuple[str, ...] = ()

    def allows_tool(self, name: str, server: str | None = None) -> bool:
        return self._allows(name, server, self.tools + self.server_patterns)

    def allows_prompt(self, name: str, server: str | None = None) -> bool:
        return self._allows(name, server, self.prompts + self.server_patterns)

    def allows_resource(self, uri: str, server: str | None = None) -> bool:
        return self._allows(uri, server, self.resources)

    def _allows(self, value: str, server: str | None, patterns: tuple[str, ...]) -> bool:
        if server is not None and server in self.servers:
            return True
        return any(fnmatchcase(value, pattern) for pattern in patterns)

    def allows_event(self, tools: Iterable[str], server: str | None = None) -> bool:
        """Whether an event that names ``tools`` (and ``server``, its own) may reach this profile."""
        return all(self.allows_tool(tool, server) for tool in tools)

    def filter_event(self, event: GraphEvent) -> GraphEvent | None:
        """The event as this profile may see it, or None when it names a tool outside the profile."""
        data = event.data
        if isinstance(data, MetricsUpdatedData):
            top = [entry for entry in data.pagerank_top_10 if self.allows_tool(entry.tool_id)]
            if len(top) == len(data.pagerank_top_10):
                return event
            return event.model_copy(update={"data": data.model_copy(update={"pagerank_top_10": top})})
        # the payload says which tools and server it names: the ?tools= / ?servers= filters ask the same
        return event if self.allows_event(data.named_tools(), data.named_server()) else None
