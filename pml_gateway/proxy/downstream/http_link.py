"""A lean link to a downstream that speaks MCP 2026-07-28 over Streamable HTTP: ``tools/call`` only.

Why it exists: through the SDK's client (``ClientSession`` over ``streamable_http_client`` and
httpx2) a proxied call costs the gateway about 1.35 ms more CPU than through this link (task
groups, memory streams, pydantic round trips; measured with bench/proxy.py's echo server). In the
2026-07-28 era a call is one self-contained POST that gets one JSON-RPC response back (JSON, or an
SSE stream that ends with it), so this module sends that POST itself on kept-alive HTTP/1.1
connections (asyncio protocols, responses parsed by httptools, the C parser uvicorn uses) and
hands the result back as the raw JSON dict.

It does exactly what the SDK's client puts on the wire for that request (the same headers,
including ``Mcp-Name`` and ``Mcp-Param-*`` from the tool's ``x-mcp-header`` annotations, and the
same ``_meta`` envelope), and nothing else: connecting, discovery, tool listing, change
subscriptions and every other downstream transport stay with the SDK (``supervisor.py``).

It is one of the two ``DownstreamLink`` implementations (``link.py``), and raises that seam's
errors: ``RemoteError`` (a JSON-RPC error from the server), ``LinkError`` (the connection failed
or closed, an unusable HTTP answer; ``Unreachable`` when no connection could be opened),
``TimeoutError``. ``Redirected`` means the server answered 3xx and did not run the call: the
downstream falls back to the SDK's link, which follows same-origin redirects.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx2
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    encode_header_value,
    mcp_param_headers,
    x_mcp_header_map,
)
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY

from pml_gateway.proxy.downstream.link import LinkError, Redirected, RemoteError, Unreachable
from pml_gateway.version import VERSION

try:  # installed with uvicorn[standard]; without it, calls go through the SDK's client
    import httptools
except ImportError:  # pragma: no cover
    httptools = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from mcp.shared.dispatcher import ProgressFnT

__all__ = ["HttpLink", "LinkError", "Redirected", "RemoteError", "Unreachable", "link_supported"]

#: Idle connections older than this are not reused: below uvicorn's 5 s keep-alive, so the
#: server never closes a connection under a request we are writing.
IDLE_REUSE_SECONDS = 4.0
#: Idle connections kept per downstream.
MAX_IDLE = 32
#: Connections open at once per downstream (httpx's default pool limit); more calls wait their turn.
MAX_CONNECTIONS = 100
#: An SSE event or a JSON body larger than this is refused (the SDK's own SSE event cap is 1 MiB).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
USER_AGENT = f"pml-gateway/{VERSION}"


def link_supported(url: str, headers: Mapping[str, str]) -> bool:
    """Whether ``HttpLink`` can carry calls to ``url`` exactly as httpx2 would.

    Plain or TLS HTTP with no proxy configured for it in the environment (httpx2 honours proxy
    variables; this link does not speak to proxies), no credentials in the URL (httpx2 would turn
    them into Basic auth), and header values that are safe on the wire.
    """
    parts = urlsplit(url)
    if httptools is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.username is not None or parts.password is not None:
        return False
    try:
        parts.port
    except ValueError:
        return False
    proxies = urllib.request.getproxies()
    if (proxies.get(parts.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(parts.hostname):
        return False
    return all(_safe_header(k) and _safe_header(v) for k, v in headers.items())


def _safe_header(text: str) -> bool:
    return "\r" not in text and "\n" not in text and "\0" not in text


class HttpLink:
    """``tools/call`` requests to one downstream over a pool of kept-alive HTTP/1.1 connections."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        protocol_version: str,
        client_info: dict[str, Any],
        client_capabilities: dict[str, Any] | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.url = url
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        # The TLS settings httpx2 uses by default (its CA bundle, SSL_CERT_* from the environment).
        self._ssl = httpx2.create_ssl_context() if parts.scheme == "https" else None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._envelope = {
            PROTOCOL_VERSION_META_KEY: protocol_version,
            CLIENT_INFO_META_KEY: client_info,
            CLIENT_CAPABILITIES_META_KEY: client_capabilities or {},
        }
        fixed = {
            "Host": parts.netloc,
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            MCP_PROTOCOL_VERSION_HEADER: protocol_version,
            MCP_METHOD_HEADER: "tools/call",
            **(headers or {}),
        }
        self._head = f"POST {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._ids = itertools.count(1)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._header_maps: dict[str, tuple[Any, dict[tuple[str, ...], str]]] = {}
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._closed = False

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | None,
        *,
        input_schema: Any = None,
        meta: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        progress: ProgressFnT | None = None,
    ) -> dict[str, Any]:
        """Send ``tools/call``; return the JSON-RPC ``result`` object as sent by the server.

        ``input_schema`` is the tool's (for ``Mcp-Param-*`` headers); ``meta`` adds keys to the
        request's ``_meta`` next to the envelope (W3C trace context). Raises ``RemoteError``,
        ``LinkError`` or ``TimeoutError``.
        """
        request_id = next(self._ids)
        params: dict[str, Any] = {"name": name}
        if arguments is not None:
            params["arguments"] = arguments
        params["_meta"] = {**meta, **self._envelope} if meta else self._envelope
        body = json.dumps(
            {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        head = [self._head, f"{MCP_NAME_HEADER}: {encode_header_value(name)}\r\n"]
        if input_schema is not None and arguments:
            for key, value in mcp_param_headers(self._header_map(name, input_schema), arguments).items():
                head.append(f"{key}: {value}\r\n")
        head.append(f"Content-Length: {len(body)}\r\n\r\n")
        payload = "".join(head).encode("latin-1") + body
        if timeout is None:
            message = await self._exchange(payload, request_id)
        else:
            async with asyncio.timeout(timeout):
                message = await self._exchange(payload, request_id)
        if "error" in message:
            error = message["error"]
            if not isinstance(error, dict):
                raise LinkError("malformed JSON-RPC error from the server")
            code = error.get("code")
            raise RemoteError(code if isinstance(code, int) else 0, str(error.get("message", "")), error.get("data"))
        result = message.get("result")
        if not isinstance(result, dict):
            raise LinkError("the server's response has no result object")
        return result

    def close(self) -> None:
        """Drop every connection: calls in flight fail with ``LinkError`` at once."""
        self._closed = True
        for connection in list(self._open):
            connection.abort()
        self._idle.clear()

    # -- internals -----------------------------------------------------------------------------

    def _header_map(self, name: str, schema: Any) -> dict[tuple[str, ...], str]:
        cached = self._header_maps.get(name)
        if cached is None or cached[0] is not schema:
            cached = self._header_maps[name] = (schema, x_mcp_header_map(schema))
        return cached[1]

    async def _exchange(self, payload: bytes, request_id: int) -> dict[str, Any]:
        async with self._slots:
            connection = await self._acquire()
            try:
                message = await connection.exchange(payload, request_id)
            except BaseException:
                connection.abort()  # cancelled, timed out or failed mid-response: never reuse it
                self._open.discard(connection)
                raise
            if connection.reusable and not self._closed and len(self._idle) < MAX_IDLE:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            else:
                connection.abort()
                self._open.discard(connection)
            return message

    async def _acquire(self) -> _Connection:
        if self._closed:
            raise LinkError("the link is closed")
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < IDLE_REUSE_SECONDS:
                return connection
            connection.abort()
            self._open.discard(connection)
        loop = asyncio.get_running_loop()
        connection = _Connection()
        try:
            await loop.create_connection(
                lambda: connection, self._host, self._port, ssl=self._ssl, server_hostname=self._host if self._ssl else None
            )
        except OSError as exc:
            raise Unreachable(f"cannot connect to {self._host}:{self._port}: {exc.strerror or exc}") from exc
        self._open.add(connection)
        if self._closed:  # closed while connecting
            connection.abort()
            raise LinkError("the link is closed")
        return connection


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection, one request at a time; ``httptools`` calls the ``on_*`` methods."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[dict[str, Any]] | None = None
        self._request_id: int = 0
        self._status = 0
        self._content_type = b""
        self._encoded = False
        self._body: list[bytes] = []
        self._size = 0
        self._events: _SSEDecoder | None = None
        self._complete = False

    # -- use -----------------------------------------------------------------------------------

    async def exchange(self, payload: bytes, request_id: int) -> dict[str, Any]:
        if self.closed or self.transport is None:
            raise LinkError("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._request_id = request_id
        self.reusable = False
        self.transport.write(payload)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _settle(self, message: dict[str, Any] | None = None, error: BaseException | None = None) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(message or {})

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: this connection is out of step
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # An exception in one of our callbacks arrives wrapped, with ours as its context.
            cause = exc.__context__ if isinstance(exc.__context__, LinkError) else None
            self._settle(error=cause or LinkError(f"malformed HTTP response: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._status and not self._complete and self._events is None:
            self._finish()  # a body delimited by the end of the connection (no length, not chunked)
        self._settle(error=LinkError("the server closed the connection"))

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._status = 0
        self._content_type = b""
        self._encoded = False
        self._body = []
        self._size = 0
        self._events = None
        self._complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-type":
            self._content_type = value.lower()
        elif name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            self._encoded = True

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if self._encoded:
            raise LinkError("the server sent a content-encoding that was not asked for")
        if 200 <= self._status < 300 and self._content_type.startswith(b"text/event-stream"):
            self._events = _SSEDecoder()

    def on_body(self, body: bytes) -> None:
        if self._events is not None:
            for data in self._events.feed(body):
                self._on_event(data)
            return
        self._size += len(body)
        if self._size > MAX_RESPONSE_BYTES:
            raise LinkError(f"the response is larger than {MAX_RESPONSE_BYTES} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True
        self.reusable = self._parser.should_keep_alive() and not self.closed
        self._finish()

    def _finish(self) -> None:
        if self._waiter is None or self._waiter.done():
            return
        status = self._status
        if 300 <= status < 400:
            self._settle(error=Redirected(f"HTTP {status}"))
            return
        if self._events is not None:
            self._settle(error=LinkError("the server's event stream ended without a response"))
            return
        body = b"".join(self._body)
        message: Any = None
        if body and self._content_type.startswith(b"application/json"):
            try:
                message = json.loads(body)
            except ValueError:
                message = None
        if isinstance(message, dict) and ("result" in message or "error" in message):
            if message.get("id") not in (self._request_id, None):
                self._settle(error=LinkError("the server answered another request"))
            elif 200 <= status < 300 or "error" in message:
                self._settle(message)
            else:
                self._settle(error=LinkError(f"HTTP {status} from the server"))
            return
        self._settle(error=LinkError(f"HTTP {status} from the server" if status >= 300 else "no JSON-RPC response"))

    def _on_event(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return  # not JSON-RPC: nothing we can act on
        # Notifications (progress, logs) and anything not answering our request are skipped.
        if isinstance(message, dict) and message.get("id") == self._request_id and ("result" in message or "error" in message):
            self._settle(message)
            # The stream should end now; if it does not, the connection is not reused.


class _SSEDecoder:
    """Server-sent events from byte chunks: yields each ``message`` event's data (WHATWG rules)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data: list[str] = []
        self._event = ""
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[str]:
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = False
        self._buffer += chunk
        if len(self._buffer) > MAX_RESPONSE_BYTES:
            raise LinkError(f"an event larger than {MAX_RESPONSE_BYTES} bytes")
        if b"\n" not in chunk and b"\r" not in chunk:
            return []  # no line ended: keep collecting
        lines = bytes(self._buffer).splitlines(keepends=True)
        self._buffer.clear()
        if lines and not lines[-1].endswith((b"\n", b"\r")):
            self._buffer += lines.pop()  # an unfinished line
        elif lines and lines[-1].endswith(b"\r"):
            self._skip_lf = True  # the LF of a CRLF may start the next chunk
        out: list[str] = []
        for raw in lines:
            line = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
            if not line:
                if self._data and self._event in ("", "message"):
                    out.append("\n".join(self._data))
                self._data = []
                self._event = ""
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                self._data.append(value)
            elif field == "event":
                self._event = value
        return out
