"""The one seam a downstream call goes through: a ``DownstreamLink``.

Like httpx's transports (``AsyncBaseTransport.handle_async_request``), a link does one thing,
sends ``tools/call`` to its server and hands back the result, and ``Downstream`` does everything
around it once (timeouts as tool errors, waking its supervisor when the connection broke, the
error wording of ``errors.py``). Which link a downstream has is decided once, at connect:

- ``SdkLink`` (``sdk_link.py``): the SDK's ``Client`` session; every transport and era.
- ``HttpLink`` (``http_link.py``): one POST per call on kept-alive connections, for servers that
  speak 2026-07-28 over Streamable HTTP (about 1.35 ms less gateway CPU per call).

A link returns the JSON-RPC ``result`` object in wire form (camelCase JSON): the one form results
take inside the proxy, and the one the fast path writes back to its client unchanged. A link
raises only the exceptions below (or ``TimeoutError``); anything else is a bug, which
``Downstream`` still turns into a tool error.
"""

from __future__ import annotations

from typing import Any, Protocol, TYPE_CHECKING

if TYPE_CHECKING:
    from mcp.shared.dispatcher import ProgressFnT

__all__ = ["DownstreamLink", "LinkError", "Redirected", "RemoteError", "Unreachable"]


class LinkError(Exception):
    """The exchange failed: connection refused, closed or reset, an unusable answer.

    ``dead`` says the connection is certainly gone (the supervisor reconnects at once); otherwise
    the supervisor checks the server now.
    """

    def __init__(self, message: str = "", *, dead: bool = False) -> None:
        super().__init__(message)
        self.dead = dead


class Unreachable(LinkError):
    """No connection could be opened: the call was not sent."""


class Redirected(LinkError):
    """The server answered with a redirect: the call was not run (the SDK's client follows it)."""


class RemoteError(Exception):
    """The downstream answered the request with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class DownstreamLink(Protocol):
    """How calls reach one connected downstream."""

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        *,
        input_schema: Any = None,
        meta: dict[str, Any] | None = None,
        timeout: float | None = None,
        progress: ProgressFnT | None = None,
    ) -> dict[str, Any]:
        """Call the server's tool ``name``; return the result in wire form, as the server sent it.

        ``input_schema`` is the tool's (its ``x-mcp-header`` arguments become headers where the
        wire has them), ``meta`` extra ``_meta`` keys (W3C trace context), ``progress`` hears the
        server's progress notifications for this call (the lean link carries none: calls that want
        progress go over the SDK's). Raises ``RemoteError``, ``LinkError`` or ``TimeoutError``.
        """
        ...

    def close(self) -> None:
        """The connection ended: calls in flight fail with ``LinkError`` at once."""
        ...
