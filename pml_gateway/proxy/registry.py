"""The tools the gateway exposes for its downstream servers, under ``<server>__<tool>`` names.

Exposed names must match ``^[a-zA-Z0-9_-]{1,64}$``. Every other character becomes ``_``; a name
longer than 64 characters keeps its first 57 and ends in ``_`` plus 6 hex digits of a hash of the
original pair. When several tools still end up with the same name, the one whose name needed no
change keeps it (the first by server name if several did) and every other gets that hash suffix.
The hash depends only on (server, tool), and names are given out over every tool the registry
has ever seen of its configured servers (a server that went down keeps its claims), so the outcome
depends neither on the order servers connect in nor on which are up; each rename is logged. Input
and output schemas pass through untouched: only ``name`` is rewritten.

This is the one place that knows the naming scheme, both ways: exposed name -> (server, original
tool) with ``get``, and "whose would this name be" with ``owner``, also when that server is down
(its last known tools, else the configured server whose sanitised ``<server>__`` prefix matches,
longest first). Nobody else splits names: a server may itself be called ``a__b`` or ``my.files``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import mcp.types as types

logger = logging.getLogger(__name__)

MAX_NAME = 64
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INVALID = re.compile(r"[^a-zA-Z0-9_-]")
SEPARATOR = "__"


@dataclass(frozen=True, slots=True)
class RegisteredTool:
    """A downstream tool as the gateway exposes it."""

    name: str  #: exposed name, e.g. ``notes__search``
    server: str  #: downstream server name from the config
    original_name: str  #: the tool's name on its own server
    tool: types.Tool  #: the downstream definition with ``name`` replaced


def _digest(server: str, tool: str) -> str:
    return hashlib.sha1(f"{server}\0{tool}".encode()).hexdigest()[:6]


def sanitize(server: str, tool: str) -> str:
    """``<server>__<tool>`` made valid; long names are trimmed and made unique with a hash."""
    name = _INVALID.sub("_", f"{server}{SEPARATOR}{tool}")
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 7]}_{_digest(server, tool)}"
    return name


def _with_suffix(name: str, server: str, tool: str) -> str:
    suffix = f"_{_digest(server, tool)}"
    return name[: MAX_NAME - len(suffix)] + suffix


class ToolRegistry:
    """Tools per downstream server; listeners hear about every change of the exposed set."""

    def __init__(self, reserved: Iterable[str] = (), servers: Iterable[str] = ()) -> None:
        self._reserved = frozenset(reserved)  # the gateway's own tool names
        self._by_server: dict[str, list[types.Tool]] = {}  # servers up now
        self._known: dict[str, list[types.Tool]] = {}  # last tools of every server seen, up or not
        self._by_name: dict[str, RegisteredTool] = {}  # exposed now
        self._owners: dict[str, str] = {}  # every name given out (exposed or not) -> its server
        self._prefixes: list[tuple[str, str]] = []  # (sanitised "<server>__", server), longest first
        self._listeners: list[Callable[[], None]] = []
        self.set_servers(servers)

    # -- reading -------------------------------------------------------------------------------

    def get(self, name: str) -> RegisteredTool | None:
        return self._by_name.get(name)

    def owner(self, name: str) -> str | None:
        """The server that owns (or would own) the exposed name ``name``, up or down; else ``None``."""
        server = self._owners.get(name)
        if server is not None:
            return server
        for prefix, server in self._prefixes:
            if name.startswith(prefix):
                return server
        return None

    def tools(self) -> list[RegisteredTool]:
        """Every exposed tool, ordered by exposed name."""
        return [self._by_name[name] for name in sorted(self._by_name)]

    def server_tools(self, server: str) -> list[RegisteredTool]:
        return [entry for entry in self.tools() if entry.server == server]

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    # -- changing ------------------------------------------------------------------------------

    def on_change(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs synchronously after every change of the exposed tools."""
        self._listeners.append(listener)

    def set_servers(self, servers: Iterable[str]) -> bool:
        """The configured servers (empty: not known). Tools of other servers are forgotten.

        Returns whether the exposed set changed.
        """
        names = set(servers)
        self._prefixes = sorted(
            ((_INVALID.sub("_", server) + SEPARATOR, server) for server in names), key=lambda p: (-len(p[0]), p[1])
        )
        gone = [server for server in self._known if names and server not in names]
        for server in gone:
            del self._known[server]
            self._by_server.pop(server, None)
        return self._rebuild() if gone else False

    def set_server_tools(self, server: str, tools: Iterable[types.Tool]) -> bool:
        """Replace one server's tools (it is up). Returns whether the exposed set changed."""
        tools = list(tools)
        if self._by_server.get(server) == tools:
            return False
        self._by_server[server] = self._known[server] = tools
        return self._rebuild()

    def remove_server(self, server: str) -> bool:
        """Take a server's tools off the list (it died or was stopped); their names stay its own.

        Returns whether the exposed set changed.
        """
        if self._by_server.pop(server, None) is None:
            return False
        return self._rebuild()

    def _rebuild(self) -> bool:
        # Names are given over every tool ever seen, so that a server that goes down keeps its names.
        names = expose_names(
            ((server, tool.name) for server, tools in self._known.items() for tool in tools), self._reserved
        )
        owners = {final: server for (server, _), final in names.items()}
        originals = {(server, tool.name): tool for server, tools in self._by_server.items() for tool in tools}
        by_name: dict[str, RegisteredTool] = {}
        for (server, original), final in names.items():
            tool = originals.get((server, original))
            if tool is None:
                continue  # down: its name stays reserved for it, but is not exposed
            by_name[final] = RegisteredTool(
                name=final, server=server, original_name=original, tool=tool.model_copy(update={"name": final})
            )
        by_name = {name: by_name[name] for name in sorted(by_name)}
        names = {key: final for key, final in names.items() if key in originals}  # renames of exposed tools
        changed = by_name.keys() != self._by_name.keys() or any(
            by_name[name].tool != self._by_name[name].tool for name in by_name
        )
        self._by_name = by_name
        self._owners = owners
        if not changed:
            return False
        log_renames(names, "tool")
        for listener in list(self._listeners):
            listener()
        return True


def expose_names(claims: Iterable[tuple[str, str]], reserved: frozenset[str] = frozenset()) -> dict[tuple[str, str], str]:
    """The exposed name of every ``(server, name)`` pair: the one naming rule of tools and prompts.

    ``sanitize`` first; when several pairs still share a name, the one that needed no change keeps
    it and every other gets a hash suffix (see the module docstring). Reserved names are never given.
    """
    wanted: dict[str, list[tuple[str, str]]] = {}
    for server, original in sorted(set(claims)):
        wanted.setdefault(sanitize(server, original), []).append((server, original))
    names: dict[tuple[str, str], str] = {}
    taken: set[str] = set()
    for name, claimants in sorted(wanted.items()):
        keeper = _keeper(name, claimants, reserved)
        for index, (server, original) in enumerate(claimants):
            final = name
            if index != keeper:
                final = _with_suffix(name, server, original)
                attempt = 1
                while final in taken or final in wanted or final in reserved:
                    attempt += 1  # a suffixed name that is taken too: astronomically rare
                    final = _with_suffix(f"{name}{attempt}", server, original)
            taken.add(final)
            names[(server, original)] = final
    return names


def log_renames(names: dict[tuple[str, str], str], kind: str) -> None:
    """One log line per item exposed under another name than ``<server>__<name>``."""
    for (server, original), final in names.items():
        if final != f"{server}{SEPARATOR}{original}":
            logger.info("downstream %s %r of server %r is exposed as %r", kind, original, server, final)


def _keeper(name: str, claimants: list[tuple[str, str]], reserved: frozenset[str]) -> int | None:
    """Which claimant keeps the plain name: the only one, else the first that needed no change."""
    if name in reserved:
        return None
    if len(claimants) == 1:
        return 0
    for index, (server, original) in enumerate(claimants):
        if f"{server}{SEPARATOR}{original}" == name:
            return index
    return None
