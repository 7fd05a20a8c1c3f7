"""``DownstreamLink`` over the SDK's ``Client`` session: every transport (stdio, Streamable HTTP,
SSE) and both protocol eras. See ``link.py``.

When the transport knows how the connection ended (``StdioTransport.ended``: the process's exit
code, a broken line limit), a call it ended says so; the SDK's own word is only "Connection closed".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import mcp.types as types
from mcp import Client, MCPError

from pml_gateway.proxy.downstream.link import LinkError, RemoteError

if TYPE_CHECKING:
    from mcp.shared.dispatcher import ProgressFnT

__all__ = ["SdkLink"]


class SdkLink:
    """Calls through a connected ``Client``; ``close`` ends the calls still waiting on it."""

    def __init__(self, client: Client, *, ended: Callable[[], str | None] | None = None) -> None:
        self._client = client
        self._ended = ended or (lambda: None)  # why the transport saw the connection end, if it did
        self._inflight: set[anyio.CancelScope] = set()

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
        params: dict[str, Any] = {"name": name, "arguments": arguments}
        if meta:
            params["_meta"] = meta
        request = types.CallToolRequest(params=types.CallToolRequestParams.model_validate(params))
        scope = anyio.CancelScope()
        self._inflight.add(scope)
        try:
            with scope:
                # The request itself, not Client.call_tool: a proxy passes results through and leaves
                # checking them against the output schema to the client at the end of the chain.
                result = await self._client.session.send_request(
                    request, types.CallToolResult, request_read_timeout_seconds=timeout, progress_callback=progress
                )
                return result.model_dump(by_alias=True, mode="json", exclude_none=True)
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                raise LinkError(self._ended() or "", dead=True) from exc
            if exc.code == types.REQUEST_TIMEOUT:
                raise TimeoutError(exc.message) from exc
            raise RemoteError(exc.code, exc.message, exc.error.data) from exc
        finally:
            self._inflight.discard(scope)
        # Only reached when close() cancelled the scope: the connection died mid-call.
        raise LinkError(self._ended() or "the connection ended")

    def close(self) -> None:
        for scope in list(self._inflight):
            scope.cancel()
