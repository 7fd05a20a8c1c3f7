"""The naming and ownership rules of prompts and resources, on the catalogs themselves (no wire:
the end-to-end behaviour is in test_mcp_surface.py)."""

from __future__ import annotations

import logging

import mcp.types as types
import pytest

from pml_gateway.proxy.prompts import PromptCatalog
from pml_gateway.proxy.registry import ToolRegistry
from pml_gateway.proxy.resources import ResourceCatalog


def test_prompts_are_named_by_the_rule_of_tools() -> None:
    prompts = PromptCatalog()
    tools = ToolRegistry()
    changes: list[int] = []
    prompts.on_change(lambda: changes.append(1))
    for server in ("a.b", "a_b", "x" * 70):
        prompts.set_server(server, [types.Prompt(name="p")])
        tools.set_server_tools(server, [types.Tool(name="p", input_schema={"type": "object"})])
    assert {p.name for p in prompts.prompts()} == {t.name for t in tools.tools()}
    assert prompts.get("a_b__p") is not None and prompts.get("a_b__p").server == "a_b"  # type: ignore[union-attr]
    assert changes == [1, 1, 1]
    prompts.set_server("a_b", [types.Prompt(name="p")])  # the same: no change
    assert changes == [1, 1, 1]
    prompts.remove_server("a_b")
    assert prompts.get("a_b__p").server == "a.b" and changes == [1, 1, 1, 1]  # type: ignore[union-attr]  # alone now


def test_a_uri_is_owned_by_its_lister_else_the_first_matching_template(caplog: pytest.LogCaptureFixture) -> None:
    catalog = ResourceCatalog()
    doc = types.Resource(uri="demo://doc", name="doc")
    template = types.ResourceTemplate(uri_template="demo://item/{id}", name="item")
    catalog.set_server("b", [doc], [template])
    with caplog.at_level(logging.WARNING):
        catalog.set_server("a", [doc], [template, types.ResourceTemplate(uri_template="file:///{+path}", name="f")])
    assert catalog.owner("demo://doc") == "a" and catalog.owner("demo://item/7") == "a"
    assert catalog.owner("file:///etc/hosts") == "a" and catalog.owner("other://x") is None
    assert [r.uri for r in catalog.resources()] == ["demo://doc"]  # listed once, by its owner
    assert [t.uri_template for t in catalog.templates()] == ["demo://item/{id}", "file:///{+path}"]
    collisions = [r.getMessage() for r in caplog.records]
    assert any("'demo://doc' of server 'b' is also listed by 'a'" in m for m in collisions)
    assert any("'demo://item/{id}' of server 'b' is also listed by 'a'" in m for m in collisions)
    catalog.remove_server("a")
    assert catalog.owner("demo://item/7") == "b" and catalog.template_owner("demo://item/{id}") == "b"
