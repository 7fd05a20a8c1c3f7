"""docs/api/mcp-tools.md "Errors" shows the tool-error texts exactly as errors.py words them."""

from __future__ import annotations

import re
from pathlib import Path

from pml_gateway.proxy.downstream import errors

DOC = Path(__file__).parent.parent / "docs" / "api" / "mcp-tools.md"

#: Each documented example, made by the function that words it.
EXAMPLES = [
    errors.refused("notes", "read_note", "Invalid params"),
    errors.timed_out("slow", "sleep", 30),
    errors.connection_lost("notes", "read_note"),
    errors.connection_lost("notes", "read_note", errors.process_exited(1)),
    errors.connection_lost("notes", "read_note", errors.line_too_long(16 * 1024 * 1024)),
    errors.unreachable("remote", "cannot connect to 127.0.0.1:9: Connection refused"),
    errors.unavailable("notes__read_note", errors.server_down("notes", "failed", "Connection closed")),
    errors.unavailable("notes__read_note", errors.server_down("notes", "failed", errors.process_exited(1))),
    errors.unavailable("remote__echo", errors.server_down("remote", "failed", errors.connect_timed_out(30))),
    errors.unknown_tool("nobody__nothing"),
    errors.no_session("web", "all 16 of its sessions (max_sessions) have requests in flight"),
    errors.not_allowed("files__write_file", "reader"),
    errors.invalid_result("notes__read_note"),
    errors.internal_error("notes__read_note", KeyError("x")),
    errors.invalid_arguments("pml_search_tools", "limit: Input should be greater than or equal to 1"),
]


def documented() -> list[str]:
    section = DOC.read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\|[^|]+\| `(.+)` \|$", section, flags=re.MULTILINE)


def test_every_documented_error_text_is_what_the_gateway_says() -> None:
    assert documented() == EXAMPLES
