"""The lean downstream link (http_link.py) against a scripted HTTP server: what it sends, what it accepts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from pml_gateway.proxy.downstream import http_link
from pml_gateway.proxy.downstream.http_link import HttpLink, LinkError, Redirected, RemoteError, Unreachable, _SSEDecoder, link_supported

pytestmark = pytest.mark.anyio

SCHEMA = {"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}


@dataclass
class Seen:
    head: str
    body: dict[str, Any]

    def header(self, name: str) -> str | None:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


Reply = Callable[[Seen, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Scripted:
    """An HTTP/1.1 server on a free port that answers request n with ``replies[n]``."""

    replies: list[Reply]
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                length = next(int(l.split(":")[1]) for l in head.split("\r\n") if l.lower().startswith("content-length"))
                seen = Seen(head, json.loads(await reader.readexactly(length)))
                self.seen.append(seen)
                await self.replies[len(self.seen) - 1](seen, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def scripted(*replies: Reply) -> AsyncIterator[Scripted]:
    server = Scripted(list(replies))
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}/mcp?x=1"
    async with listener:
        yield server


def link(url: str, **headers: str) -> HttpLink:
    return HttpLink(url, headers, protocol_version="2026-07-28", client_info={"name": "gw", "version": "1"})


def result_of(seen: Seen, result: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": seen.body["id"], "result": result or {"content": [], "echo": seen.body["params"]}}).encode()


def json_reply(status: int = 200, extra: str = "") -> Reply:
    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        body = result_of(seen)
        writer.write(f"HTTP/1.1 {status} OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body)

    return reply


def raw_reply(data: bytes, *, close: bool = False) -> Reply:
    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        if close:
            await writer.drain()
            writer.close()

    return reply


async def test_what_a_call_puts_on_the_wire_and_connection_reuse() -> None:
    async with scripted(json_reply(), json_reply()) as server:
        lean = link(server.url, Authorization="Bearer t")
        with anyio.fail_after(10):
            first = await lean.call_tool("get", {"region": "eu ✓", "n": 1}, input_schema=SCHEMA, meta={"traceparent": "tp"})
            second = await lean.call_tool("get", None)
        seen = server.seen[0]
        assert seen.head.startswith("POST /mcp?x=1 HTTP/1.1\r\n")
        assert seen.header("host") == server.url.split("/")[2]
        assert seen.header("content-type") == "application/json"
        assert seen.header("accept") == "application/json, text/event-stream"
        assert seen.header("mcp-protocol-version") == "2026-07-28" and seen.header("mcp-method") == "tools/call"
        assert seen.header("mcp-name") == "get" and seen.header("authorization") == "Bearer t"
        assert seen.header("mcp-param-region", ).startswith("=?base64?")  # non-ASCII values are wrapped
        assert seen.body["method"] == "tools/call" and seen.body["params"]["arguments"] == {"region": "eu ✓", "n": 1}
        assert seen.body["params"]["_meta"] == {
            "traceparent": "tp",
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "gw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        assert first["echo"]["name"] == "get" and "arguments" not in second["echo"]
        assert server.seen[1].header("mcp-param-region") is None
        assert server.connections == 1  # kept alive and reused
        lean.close()


async def test_event_stream_answers_in_awkward_chunks() -> None:
    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        note = json.dumps({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}})
        other = json.dumps({"jsonrpc": "2.0", "id": 999, "result": {"content": []}})
        answer = result_of(seen).decode()
        half = answer.index(', "result"')  # between two members: the joining newline is JSON whitespace
        stream = (
            f": comment\r\nevent: message\r\ndata: {note}\r\n\r\nevent: other\r\ndata: {{}}\r\n\r\ndata: {other}\r\n\r\n"
            f"data: {answer[:half]}\r\ndata: {answer[half:]}\r\n\r"
        ).encode()
        # The response data spans two data lines (joined by a newline, still valid JSON), and the
        # stream is cut into 7-byte pieces so CRLFs and lines straddle chunk boundaries.
        chunks = [stream[i : i + 7] for i in range(0, len(stream), 7)] + [b"\n"]
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for chunk in chunks:
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0)
        writer.write(b"0\r\n\r\n")

    async with scripted(reply, json_reply()) as server:
        lean = link(server.url)
        with anyio.fail_after(10):
            result = await lean.call_tool("t", {})
            assert result["echo"]["name"] == "t"
            assert (await lean.call_tool("u", {}))["echo"]["name"] == "u"
        lean.close()


async def test_a_body_delimited_by_closing_the_connection() -> None:
    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n" + result_of(seen))
        await writer.drain()
        writer.close()

    async with scripted(reply, json_reply()) as server:
        lean = link(server.url)
        with anyio.fail_after(10):
            assert (await lean.call_tool("t", {}))["echo"]["name"] == "t"
            assert (await lean.call_tool("u", {}))["echo"]["name"] == "u"  # on a new connection
        assert server.connections == 2
        lean.close()


async def test_errors() -> None:
    async def rpc_error(seen: Seen, writer: asyncio.StreamWriter) -> None:
        body = json.dumps({"jsonrpc": "2.0", "id": seen.body["id"], "error": {"code": -32602, "message": "bad args"}}).encode()
        writer.write(f"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)

    async def wrong_id(seen: Seen, writer: asyncio.StreamWriter) -> None:
        body = json.dumps({"jsonrpc": "2.0", "id": 12345, "result": {}}).encode()
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)

    async with scripted(
        rpc_error,
        raw_reply(b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\noops"),
        raw_reply(b"HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n"),
        wrong_id,
        raw_reply(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 8\r\n\r\n: ping\n\n"),
        raw_reply(b"", close=True),
        raw_reply(b"this is not HTTP\r\n\r\n"),
    ) as server:
        lean = link(server.url)
        with anyio.fail_after(10):
            with pytest.raises(RemoteError) as refused:
                await lean.call_tool("t", {})
            assert refused.value.code == -32602 and refused.value.message == "bad args"
            with pytest.raises(LinkError, match="HTTP 500"):
                await lean.call_tool("t", {})
            with pytest.raises(Redirected):
                await lean.call_tool("t", {})
            with pytest.raises(LinkError, match="another request"):
                await lean.call_tool("t", {})
            with pytest.raises(LinkError, match="without a response"):
                await lean.call_tool("t", {})
            with pytest.raises(LinkError, match="closed the connection"):
                await lean.call_tool("t", {})
            with pytest.raises(LinkError, match="malformed"):
                await lean.call_tool("t", {})
        lean.close()


async def test_timeouts_close_and_unreachable_servers() -> None:
    async def never(seen: Seen, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with scripted(never, json_reply(), never) as server:
        lean = link(server.url)
        with anyio.fail_after(10):
            with pytest.raises(TimeoutError):
                await lean.call_tool("t", {}, timeout=0.2)
            assert (await lean.call_tool("u", {}))["echo"]["name"] == "u"  # on a fresh connection
            assert server.connections == 2

            async def close_soon() -> None:
                await anyio.sleep(0.2)
                lean.close()

            async with anyio.create_task_group() as tg:
                tg.start_soon(close_soon)
                with pytest.raises(LinkError):  # at once, not after the 30 s the server takes
                    await lean.call_tool("t", {})
            with pytest.raises(LinkError, match="closed"):
                await lean.call_tool("t", {})

    with anyio.fail_after(10):
        with pytest.raises(Unreachable, match="cannot connect"):
            await link(server.url).call_tool("t", {})


async def test_idle_connections_are_not_reused_past_the_keep_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_link, "IDLE_REUSE_SECONDS", 0.1)
    async with scripted(json_reply(), json_reply()) as server:
        lean = link(server.url)
        with anyio.fail_after(10):
            await lean.call_tool("t", {})
            await anyio.sleep(0.2)
            await lean.call_tool("t", {})
        assert server.connections == 2
        lean.close()


def test_sse_decoder_rules() -> None:
    decoder = _SSEDecoder()
    out = decoder.feed(b"data: a\r\ndata:b\r\n\r\nevent: ping\ndata: x\n\n: c\r")
    out += decoder.feed(b"\ndata: 1\r\rdata")
    out += decoder.feed(b": 2\n\n")
    assert out == ["a\nb", "1", "2"]


def test_what_the_link_can_carry(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert link_supported("http://127.0.0.1:9000/mcp", {"Authorization": "Bearer x"})
    assert link_supported("https://example.com/mcp", {})
    assert not link_supported("ftp://example.com/mcp", {})
    assert not link_supported("http://127.0.0.1:notaport/mcp", {})
    assert not link_supported("http://user:secret@127.0.0.1:9000/mcp", {})  # httpx2 would send Basic auth
    assert not link_supported("http://127.0.0.1:9000/mcp", {"X": "a\r\nInjected: 1"})
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert not link_supported("http://example.com/mcp", {})  # httpx2 would use the proxy
    monkeypatch.setenv("NO_PROXY", "example.com")
    assert link_supported("http://example.com/mcp", {})


def _self_signed(tmp_path: Any) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    pytest.importorskip("cryptography")  # not a dependency of the project: skipped where missing
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


async def test_tls_with_the_trust_httpx2_would_use(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = Scripted([json_reply(), json_reply()])
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=context)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        with anyio.fail_after(10):
            # not trusted: refused before anything is sent
            with pytest.raises(Unreachable, match="cannot connect"):
                await link(f"https://127.0.0.1:{port}/mcp").call_tool("t", {})
            # trusted the way httpx2 is told to (SSL_CERT_FILE)
            monkeypatch.setenv("SSL_CERT_FILE", cert)
            lean = link(f"https://127.0.0.1:{port}/mcp")
            assert (await lean.call_tool("t", {}))["echo"]["name"] == "t"
            assert (await lean.call_tool("u", {}))["echo"]["name"] == "u"
            lean.close()
    assert len(server.seen) == 2
