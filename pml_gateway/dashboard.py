"""The live dashboard: one self-contained page at ``GET /dashboard``.

The page is static (HTML, CSS and JS shipped as package data: no CDN, no build step). In the
browser it loads ``GET /graph``, then follows ``GET /events/stream`` with ``EventSource`` from the
snapshot's ``last_event_id``, and polls ``GET /health``, ``GET /tools`` (``tool_list.py``) and
``GET /events/stats`` to show the whole gateway: every exposed tool, the downstream servers and
their state, running workflows. This module only serves the files; the page reads nothing else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from pml_gateway.state import AppState

#: Where the page lives; its assets are under ``{PATH}/static/``.
PATH = "/dashboard"
PAGE = "dashboard.html"

# Browsers revalidate every file (a cheap 304 with the ETag) so that an upgraded gateway never
# runs a cached script against its new page.
_REVALIDATE = {"Cache-Control": "no-cache"}


class _Assets(StaticFiles):
    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(_REVALIDATE)
        return response


class Dashboard:
    """An ``AppExtension``: the page and its assets, read from the installed package."""

    def __init__(self) -> None:
        self._html = resources.files("pml_gateway").joinpath("static", PAGE).read_text(encoding="utf-8")

    def routes(self) -> list[BaseRoute]:
        return [
            Route(PATH, self._page, methods=["GET", "HEAD"]),
            # The page's URLs are relative ("graph", "events/stream", "dashboard/static/..."), so
            # that it also works behind a path prefix; they resolve against /dashboard, not
            # /dashboard/, hence the redirect.
            Route(PATH + "/", self._canonical, methods=["GET", "HEAD"]),
            Mount(PATH + "/static", app=_Assets(packages=[("pml_gateway", "static")]), name="dashboard-static"),
        ]

    def lifespan(self, state: AppState) -> AbstractAsyncContextManager[None]:
        return _nothing_to_run()

    def health(self) -> dict[str, Any]:
        # Not a downstream: nothing to add to GET /health.
        return {}

    async def _page(self, request: Request) -> Response:
        return HTMLResponse(self._html, headers=_REVALIDATE)

    async def _canonical(self, request: Request) -> Response:
        # Relative, so that it stays right behind a proxy that adds a path prefix.
        query = request.url.query
        return RedirectResponse("../dashboard" + (f"?{query}" if query else ""), status_code=308)


@contextlib.asynccontextmanager
async def _nothing_to_run() -> AsyncIterator[None]:
    yield
