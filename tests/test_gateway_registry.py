"""Exposed names: <server>__<tool>, sanitised, collisions resolved the same way whatever the order."""

from __future__ import annotations

import logging

import mcp.types as types
import pytest

from pml_gateway.proxy.registry import NAME_PATTERN, ToolRegistry, sanitize

SCHEMA = {"type": "object", "properties": {"q": {"type": "string", "minLength": 2}}, "required": ["q"], "x-extra": [1]}


def tool(name: str, schema: dict | None = None) -> types.Tool:
    return types.Tool(name=name, description=f"does {name}", input_schema=schema or {"type": "object"})


def test_names_are_prefixed_and_schemas_untouched() -> None:
    registry = ToolRegistry()
    registry.set_server_tools("notes", [tool("search", SCHEMA), tool("read")])
    entry = registry.get("notes__search")
    assert entry is not None and entry.server == "notes" and entry.original_name == "search"
    assert entry.tool.input_schema == SCHEMA and entry.tool.description == "does search"
    assert [t.name for t in registry.tools()] == ["notes__read", "notes__search"]


def test_sanitising() -> None:
    assert sanitize("my server", "read.file") == "my_server__read_file"
    assert sanitize("s", "naïve/tool") == "s__na_ve_tool"
    long = sanitize("s" * 40, "t" * 40)
    assert len(long) == 64 and NAME_PATTERN.match(long)
    assert long != sanitize("s" * 40, "t" * 39 + "u")  # the hash keeps long names apart
    for name in (sanitize("a b", "c.d"), long, sanitize("x", "é" * 80)):
        assert NAME_PATTERN.match(name)


def test_collisions_are_resolved_deterministically_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    def build(order: list[tuple[str, list[str]]]) -> dict[tuple[str, str], str]:
        registry = ToolRegistry()
        for server, names in order:
            registry.set_server_tools(server, [tool(n) for n in names])
        return {(e.server, e.original_name): e.name for e in registry.tools()}

    servers = [("a.b", ["x"]), ("a_b", ["x"]), ("a b", ["x"]), ("a", ["b__x", "y"]), ("a__b", ["x"])]
    with caplog.at_level(logging.INFO, logger="pml_gateway.proxy.registry"):
        one = build(servers)
    two = build(list(reversed(servers)))
    assert one == two  # the order servers connect in does not matter
    assert len(set(one.values())) == len(one)  # no two tools share a name
    assert all(NAME_PATTERN.match(name) for name in one.values())
    # the only claimant whose name needed no change, first by server name, keeps it
    assert one[("a", "b__x")] == "a__b__x"
    assert one[("a_b", "x")] == "a_b__x"
    assert one[("a", "y")] == "a__y"
    assert one[("a.b", "x")].startswith("a_b__x_") and one[("a b", "x")].startswith("a_b__x_")
    assert one[("a__b", "x")].startswith("a__b__x_")
    assert "exposed as" in caplog.text and "'a.b'" in caplog.text


def test_reserved_names_are_never_given_to_downstream_tools() -> None:
    registry = ToolRegistry(reserved=["x__y"])
    registry.set_server_tools("x", [tool("y")])
    (entry,) = registry.tools()
    assert entry.name != "x__y" and entry.name.startswith("x__y_")


def test_changes_notify_listeners_only_when_the_exposed_set_changes() -> None:
    registry = ToolRegistry()
    calls: list[int] = []
    registry.on_change(lambda: calls.append(len(registry)))
    assert registry.set_server_tools("a", [tool("x")])
    assert not registry.set_server_tools("a", [tool("x")])
    assert registry.set_server_tools("b", [tool("y")])
    assert registry.set_server_tools("a", [tool("x", SCHEMA)])  # a schema change is a change
    assert registry.remove_server("a")
    assert not registry.remove_server("a")
    assert calls == [1, 2, 2, 1]
    assert "b__y" in registry and "a__x" not in registry


def test_owner_of_a_name_also_when_its_server_is_down() -> None:
    registry = ToolRegistry(servers=["a", "a__b", "my.files", "my"])
    registry.set_server_tools("a__b", [tool("read")])
    assert registry.owner("a__b__read") == "a__b"  # exposed: from the table, never split
    registry.remove_server("a__b")
    assert "a__b__read" not in registry and registry.owner("a__b__read") == "a__b"  # its last known tools
    # never connected: the configured server whose sanitised prefix matches, longest first
    assert registry.owner("a__b__write") == "a__b"
    assert registry.owner("my_files__read") == "my.files" and registry.owner("my__read") == "my"
    assert registry.owner("a__x") == "a" and registry.owner("nobody__x") is None
    registry.set_servers(["a"])  # a__b left the config: its names are forgotten
    assert registry.owner("a__b__read") == "a"


def test_names_do_not_depend_on_which_servers_are_up() -> None:
    registry = ToolRegistry()
    registry.set_server_tools("a", [tool("b__x")])
    registry.set_server_tools("a__b", [tool("x")])
    both = {(e.server, e.original_name): e.name for e in registry.tools()}
    registry.remove_server("a")  # down: a__b must not take the name a held
    assert registry.get(both[("a__b", "x")]) is not None and "a__b__x" not in registry
    registry.set_server_tools("a", [tool("b__x")])
    assert {(e.server, e.original_name): e.name for e in registry.tools()} == both
