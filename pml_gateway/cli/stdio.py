"""``pml-gateway stdio``: the gateway as a stdio MCP server, the way desktop clients launch servers.

The process assembles the same app as ``serve`` (store, engine, event hub, metrics scheduler,
gateway) and enters its lifespan itself. MCP runs over stdin/stdout until the client closes it.
With ``--events-port`` the HTTP app (``/events/stream``, ``/graph``, ``/health``, ``/mcp``) is
served on that port too, in the same process, so what the stdio client's calls teach the graph
can be watched live. Logs go to stderr; stdout belongs to the protocol.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import anyio

from pml_gateway.app import create_app
from pml_gateway.server import make_server
from pml_gateway.state import AppExtension
from pml_gateway.proxy import Gateway
from pml_gateway.settings import Settings


async def run_stdio(
    settings: Settings,
    gateway: Gateway,
    *,
    events_port: int | None = None,
    extensions: Sequence[AppExtension] = (),
    on_started: Callable[[str], None] | None = None,
) -> None:
    """Serve MCP over stdio until stdin closes; with ``events_port``, serve HTTP beside it."""
    app = create_app(settings, extensions=[gateway, *extensions])
    async with app.router.lifespan_context(app):
        async with anyio.create_task_group() as tg:
            server = None
            if events_port is not None:
                http_settings = settings.model_copy(update={"port": events_port})
                # The lifespan is already entered above: uvicorn must not run it a second time.
                server = make_server(app, http_settings, lifespan="off", on_started=on_started)
                tg.start_soon(server.serve)
            await gateway.serve_stdio()
            if server is not None:
                server.should_exit = True  # the MCP client is gone: so is the process


def announce_events(url: str) -> None:
    print(f"pml-gateway: events at {url}/events/stream", file=sys.stderr)


def main_stdio(args: argparse.Namespace) -> int:
    """``pml-gateway stdio``: settings from flags and env, then serve until stdin closes."""
    from pml_gateway.cli.common import build_auth, build_extensions, check_store, configure_logging, settings_from_args

    settings = settings_from_args(args)
    configure_logging(settings)
    check_store(settings)
    extensions = build_extensions(settings)
    gateway = next(e for e in extensions if isinstance(e, Gateway))
    others = [e for e in extensions if e is not gateway]
    events_port = getattr(args, "events_port", None)
    if events_port is not None:
        build_auth(settings, extensions)  # the HTTP side: a bad keys file, or a public address without auth, stops here
    anyio.run(lambda: run_stdio(settings, gateway, events_port=events_port, extensions=others, on_started=announce_events))
    return 0
