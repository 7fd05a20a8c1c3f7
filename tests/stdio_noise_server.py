"""A stdio MCP server written by hand, line by line, so that it can put on its stdout what no SDK
server would: lines that are not JSON-RPC, bytes that are not UTF-8, a line with no end.

    python stdio_noise_server.py [--at-start garbage:N | long:BYTES | spew | badbyte] [--exit-at-start CODE]

``--at-start`` writes before serving: N lines that are not JSON-RPC, a line of BYTES with no
newline, lines that are not JSON-RPC forever (``spew``: it never serves), or a lone 0xff line.

Tools (each answers after doing its damage):

- ``echo {text}``: the text back.
- ``garbage {count}``: ``count`` lines that are not JSON-RPC (and one empty), then the answer.
- ``badbytes {}``: a line that is a lone 0xff byte, then an answer whose text holds a 0xff byte.
- ``flood {bytes}``: that many bytes with no newline, then nothing (the line never ends).
- ``exit {code}``: the process exits with that code, without answering.

The SDK's ``server/discover`` probe gets "method not found", so clients fall back to ``initialize``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

parser = argparse.ArgumentParser()
parser.add_argument("--at-start", default="")
parser.add_argument("--exit-at-start", type=int, default=None)
args = parser.parse_args()

out = sys.stdout.buffer

TOOLS = [
    {"name": name, "inputSchema": {"type": "object", "properties": props}}
    for name, props in [
        ("echo", {"text": {"type": "string"}}),
        ("garbage", {"count": {"type": "integer"}}),
        ("badbytes", {}),
        ("flood", {"bytes": {"type": "integer"}}),
        ("exit", {"code": {"type": "integer"}}),
    ]
]


def write(raw: bytes) -> None:
    out.write(raw)
    out.flush()


def answer(request_id: Any, result: dict[str, Any]) -> None:
    write(json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode() + b"\n")


def text(request_id: Any, value: str) -> None:
    answer(request_id, {"content": [{"type": "text", "text": value}], "isError": False})


def flood(size: int) -> None:
    block = b"x" * 65536
    while size > 0:
        write(block[:size])
        size -= len(block)


def garbage(count: int) -> None:
    write(b"".join(b"this is not json-rpc %d\n" % i for i in range(count)) + b"\n")


def call(request_id: Any, name: str, arguments: dict[str, Any]) -> None:
    if name == "echo":
        text(request_id, arguments.get("text", ""))
    elif name == "garbage":
        garbage(int(arguments.get("count", 1)))
        text(request_id, "garbage written")
    elif name == "badbytes":
        write(b"\xff\n")
        reply = {"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": "caf@"}]}}
        write(json.dumps(reply).encode().replace(b"@", b"\xff") + b"\n")
    elif name == "flood":
        flood(int(arguments.get("bytes", 1)))
        sys.stdin.buffer.read()  # never answers, never ends the line
    elif name == "exit":
        os._exit(int(arguments.get("code", 0)))


def main() -> None:
    if args.exit_at_start is not None:
        sys.exit(args.exit_at_start)
    kind, _, amount = args.at_start.partition(":")
    if kind == "garbage":
        garbage(int(amount))
    elif kind == "long":
        flood(int(amount))
    elif kind == "spew":
        while True:
            garbage(1000)
    elif kind == "badbyte":
        write(b"\xff\n")
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        message = json.loads(line)
        method, request_id = message.get("method"), message.get("id")
        if request_id is None:
            continue  # notifications
        if method == "initialize":
            answer(request_id, {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "noise", "version": "1"},
            })
        elif method == "tools/list":
            answer(request_id, {"tools": TOOLS})
        elif method == "tools/call":
            call(request_id, message["params"]["name"], message["params"].get("arguments") or {})
        elif method == "ping":
            answer(request_id, {})
        else:
            write(json.dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "Method not found"}}).encode() + b"\n")


if __name__ == "__main__":
    main()
