"""Every tool error a proxied call can end in, worded once.

A proxied call never raises: whatever goes wrong (no such tool, its server down, a timeout, a
connection lost, a bug in the gateway) comes back to the client as a tool result with
``isError`` and one line saying what happened. The SDK path, the fast path, workflow tasks and
the gateway's own tools all take their wording from here, so the same failure reads the same
whichever way the call came in (tests/test_gateway_fast_path.py proves it over the wire).

Results are wire dicts (camelCase JSON, as MCP puts them on the wire), the one form results take
inside the proxy: ``tool_error`` is the same as ``CallToolResult(content=[text], is_error=True)``
dumped by alias.
"""

from __future__ import annotations

import signal
from typing import Any

import httpx2
from mcp import MCPError

__all__ = [
    "ConnectionEnded",
    "call_failed",
    "connection_lost",
    "describe_error",
    "internal_error",
    "invalid_arguments",
    "invalid_result",
    "line_too_long",
    "not_allowed",
    "not_configured",
    "pipe_closed",
    "process_exited",
    "refused",
    "server_down",
    "timed_out",
    "tool_error",
    "unavailable",
    "unknown_tool",
    "unreachable",
]


def tool_error(message: str) -> dict[str, Any]:
    """A tool result in wire form that reports ``message`` as an error."""
    return {"content": [{"type": "text", "text": message}], "isError": True, "resultType": "complete"}


# -- the tool is not callable --------------------------------------------------------------------


def unknown_tool(name: str) -> str:
    return f"unknown tool {name!r}"


def server_down(server: str, state: str, reason: str | None) -> str:
    """A known server that is not connected (``state`` is ``connecting`` or ``failed``)."""
    return f"downstream server {server!r} is {state}" + (f" ({reason})" if reason else "")


def unavailable(name: str, why: str) -> str:
    """A tool whose server is known but cannot take calls now; ``why`` is ``server_down``'s."""
    return f"tool {name!r} is unavailable: {why}"


def not_configured(server: str) -> str:
    return f"downstream server {server!r} is not configured"


# -- the call went wrong -------------------------------------------------------------------------


def timed_out(server: str, tool: str, timeout: float) -> str:
    return f"tool {tool!r} on downstream server {server!r} timed out after {timeout:g} s"


def refused(server: str, tool: str, detail: str) -> str:
    """The downstream answered the request with a JSON-RPC error."""
    return f"downstream server {server!r} refused {tool!r}: {detail}"


def connection_lost(server: str, tool: str, detail: str = "") -> str:
    return f"downstream server {server!r} closed the connection during {tool!r}" + (f": {detail}" if detail else "")


def unreachable(server: str, detail: str) -> str:
    return f"downstream server {server!r} is unreachable: {detail}"


def no_session(server: str, why: str) -> str:
    """A per_client server (issue 16) had no session for this client: ``why`` from ``session_pool.py``."""
    return f"downstream server {server!r} has no session for this client: {why}"


def call_failed(server: str, tool: str, detail: str) -> str:
    """Anything else a link raised."""
    return f"calling {tool!r} on downstream server {server!r} failed: {detail}"


def invalid_result(name: str) -> str:
    """The downstream's result does not fit the MCP schema of the client's protocol version."""
    return f"tool {name!r} returned a result that is not a valid MCP tool result"


def not_allowed(name: str, profile: str) -> str:
    """The caller's profile (auth) does not include this tool."""
    return f"tool {name!r} is not allowed for profile {profile!r}"


def invalid_arguments(tool: str, problem: str) -> str:
    """Arguments of a gateway tool (``pml_*``) refused; ``problem`` names the field."""
    return f"invalid arguments for {tool}: {problem}"


def internal_error(name: str, exc: BaseException) -> str:
    """A bug in the gateway while calling ``name``: the client gets this instead of a crash."""
    return f"internal error in pml-gateway while calling {name!r}: {type(exc).__name__}: {exc}"


# -- how a stdio server's connection ended (stdio_transport.py): /health's error, and the detail of
# connection_lost for the calls it was running -----------------------------------------------


def process_exited(returncode: int) -> str:
    """The server's process ended: its exit code, or the signal that killed it (a negative code)."""
    if returncode >= 0:
        return f"its process exited with code {returncode}"
    try:
        name = f" ({signal.Signals(-returncode).name})"
    except ValueError:
        name = ""
    return f"its process was killed by signal {-returncode}{name}"


def pipe_closed(which: str) -> str:
    """The server's process lives on but closed its ``stdin`` or ``stdout``."""
    return f"its process closed its {which}"


def connect_timed_out(seconds: float) -> str:
    """Starting, the handshake and the tool list took longer than the ``connect_timeout_seconds`` setting, together."""
    return f"it did not finish connecting within connect_timeout_seconds = {seconds:g}"


def line_too_long(limit: int) -> str:
    """The server wrote a stdout line over the ``downstream_max_line_bytes`` setting."""
    return f"it wrote a stdout line longer than downstream_max_line_bytes = {limit}"


class ConnectionEnded(Exception):
    """The supervisor saw a downstream's connection end; the message says how, for people."""


def describe_error(exc: BaseException) -> str:
    """A one-line reason, from the innermost cause of an ``ExceptionGroup``.

    Never a private class name or a bare errno: a missing command names the command.
    """
    if isinstance(exc, BaseExceptionGroup):
        # How the transport saw the connection end (an exit code) beats the session's generic
        # "Connection closed", whichever of the two was raised first.
        ended, _rest = exc.split(ConnectionEnded)
        exc = ended if ended is not None else exc
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, ConnectionEnded):
        return str(exc)
    if isinstance(exc, (FileNotFoundError, PermissionError, NotADirectoryError)) and exc.filename:
        return f"cannot start {exc.filename!r}: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, MCPError):
        return exc.message or f"MCP error {exc.code}"
    if isinstance(exc, TimeoutError):
        return str(exc) or "timed out"
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from {exc.request.url}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
