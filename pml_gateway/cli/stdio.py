"""``pml-gateway stdio``: the gateway as a stdio MCP server, the way desktop clients launch servers.

The process assembles the same app as ``serve`` (store, engine, event hub, metrics scheduler,
gateway) and enters its lifespan itself. MCP runs over stdin/stdout until the client closes it.
With ``--events-port`` the HTTP app (``/events/stream``, ``/graph``, ``/health``, ``/mcp``) is
served on that port too, in the same process, so what the stdio client's calls teach the graph
can be watched live. Logs go to stderr; stdout belongs to the protocol.
"""

from __future__ import annotations

import argparse
import functools
import socket
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
    # Bound before anything starts: a busy port is one line, and MCP over stdio still works.
    sock = bind_events_socket(settings, events_port) if events_port is not None else None
    async with app.router.lifespan_context(app):
        async with anyio.create_task_group() as tg:
            server = None
            if sock is not None:
                http_settings = settings.model_copy(update={"port": sock.getsockname()[1]})
                # The lifespan is already entered above: uvicorn must not run it a second time.
                server = make_server(app, http_settings, lifespan="off", on_started=on_started)
                tg.start_soon(server.serve, [sock])
            await gateway.serve_stdio()
            if server is not None:
                server.should_exit = True  # the MCP client is gone: so is the process


def bind_events_socket(settings: Settings, port: int) -> socket.socket | None:
    """The HTTP API's listening socket, or None (with one line on stderr) when it cannot be had."""
    from pml_gateway.cli.common import say

    try:
        return socket.create_server((settings.host, port))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        say(settings, f"error: events port {settings.host}:{port}: {reason}; serving MCP over stdio without the HTTP API")
        return None


def announce_events(settings: Settings, url: str) -> None:
    from pml_gateway.cli.common import say

    say(settings, f"events at {url}/events/stream")
    say(settings, f"dashboard at {url}/dashboard")


def main_stdio(args: argparse.Namespace) -> int:
    """``pml-gateway stdio``: settings from flags and env, then serve until stdin closes."""
    from pml_gateway.cli.common import (
        announce_banner,
        build_auth,
        build_extensions,
        check_store,
        configure_logging,
        settings_from_args,
    )

    settings = settings_from_args(args)
    configure_logging(settings)
    check_store(settings)
    extensions = build_extensions(settings)  # a bad config stops here, with one line
    gateway = next(e for e in extensions if isinstance(e, Gateway))
    others = [e for e in extensions if e is not gateway]
    events_port = getattr(args, "events_port", None)
    # The HTTP side: a bad keys file, or a public address without auth, stops here.
    auth = build_auth(settings, extensions) if events_port is not None else None
    announce_banner(settings, auth)
    started = functools.partial(announce_events, settings)
    anyio.run(lambda: run_stdio(settings, gateway, events_port=events_port, extensions=others, on_started=started))
    return 0
