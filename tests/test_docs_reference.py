"""The reference docs name everything the code has: every setting in the README's table, every
HTTP route in docs/api/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.routing import Mount, Route, WebSocketRoute

from pml_gateway.app import create_app
from pml_gateway.cli.common import build_extensions
from pml_gateway.settings import Settings

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
API_DOCS = "\n".join(path.read_text() for path in sorted((ROOT / "docs" / "api").glob("*.md")))


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_is_in_the_readme(name: str) -> None:
    assert re.search(rf"`{name}`", README), f"README.md's settings table does not name `{name}`"


def _paths() -> list[str]:
    settings = Settings(db=":memory:", config=None)
    app = create_app(settings, extensions=build_extensions(settings))
    paths = []
    for route in app.routes:
        if isinstance(route, (Route, WebSocketRoute)):
            paths.append(route.path)
        elif isinstance(route, Mount):
            paths.append(route.path or "/")
    return paths


@pytest.mark.parametrize("path", _paths())
def test_every_route_is_documented(path: str) -> None:
    path = re.sub(r":\w+\}", "}", path.rstrip("/")) or "/"  # a convertor ({tool_id:path}) is not the docs' business
    assert f"`{path}" in API_DOCS or f" {path}`" in API_DOCS or f" {path}/" in API_DOCS, f"docs/api/ does not document {path}"
