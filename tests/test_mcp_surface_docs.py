"""docs/api/mcp-tools.md against the code: the capability table it opens with names every MCP
request the gateway serves (and nothing it does not), every gateway tool has its section, and the
gateway's resources are documented."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from mcp_types import methods

from pml_gateway.proxy import tools as gateway_tools
from pml_gateway.proxy.downstream.supervisor import DownstreamPool
from pml_gateway.proxy.registry import ToolRegistry
from pml_gateway.proxy.resources import GraphResources
from pml_gateway.proxy.server import UpstreamServer
from pml_gateway.proxy.tools import definitions

DOC = Path(__file__).parent.parent / "docs" / "api" / "mcp-tools.md"
ERAS = ("2025-11-25", "2026-07-28")
#: Requests every server answers by itself (the SDK's runner), not capabilities of the gateway.
LIFECYCLE = {"initialize", "server/discover"}


ALL_METHODS = {method for table in (methods.CLIENT_REQUESTS, methods.CLIENT_NOTIFICATIONS, methods.SERVER_REQUESTS, methods.SERVER_NOTIFICATIONS) for method, _version in table}


def capability_rows() -> list[str]:
    text = DOC.read_text()
    section = text.split("## Capabilities", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `") or line.startswith("| tasks")]


def served_methods() -> set[str]:
    registry = ToolRegistry(reserved=gateway_tools.NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        upstream = UpstreamServer(registry, DownstreamPool([], registry), tools=None)  # type: ignore[arg-type]
    known = {method for method, version in methods.CLIENT_REQUESTS if version in ERAS}
    known |= {method for method, version in methods.CLIENT_NOTIFICATIONS if version in ERAS}
    return {m for m in known if upstream.server.get_request_handler(m) or upstream.server.get_notification_handler(m)}


def test_the_doc_opens_with_the_capability_table() -> None:
    headings = re.findall(r"^## (.+)$", DOC.read_text(), flags=re.MULTILINE)
    assert headings[0] == "Capabilities"
    assert capability_rows()[0].startswith("| `tools/list`")


def test_every_served_request_has_a_row_and_every_row_is_served() -> None:
    named = {name for row in capability_rows() for name in re.findall(r"`([a-z]+(?:/[a-zA-Z_]+)*)`", row.split("|")[1])}
    documented = named & ALL_METHODS
    served = served_methods() - LIFECYCLE - {"notifications/initialized", "notifications/cancelled", "notifications/progress"}
    assert served - documented == set(), "served but not in the table"
    requests = {m for m in documented if not m.startswith("notifications/")}
    server_to_client = {"sampling/createMessage", "elicitation/create", "roots/list"}
    assert requests - server_to_client - served == set(), "in the table but not served"


def test_every_gateway_tool_and_resource_is_documented() -> None:
    text = DOC.read_text()
    for tool in definitions():
        assert f"### `{tool.name}`" in text, tool.name
    for resource in GraphResources.definitions():
        assert f"| `{resource.uri}` |" in text, resource.uri


@pytest.mark.parametrize("era", ERAS)
def test_each_row_says_something_for_each_era(era: str) -> None:
    column = 2 if era == ERAS[0] else 3
    for row in capability_rows():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 4 and cells[column - 1], row
