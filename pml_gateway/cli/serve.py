"""``pml-gateway serve``: the HTTP server (``/mcp``, ``/events/stream``, the HTTP API, the dashboard)."""

from __future__ import annotations

import argparse

from pml_gateway.cli.common import announce, build_auth, build_extensions, check_store, configure_logging, settings_from_args


def main_serve(args: argparse.Namespace) -> int:
    from pml_gateway.app import create_app
    from pml_gateway.server import make_server

    settings = settings_from_args(args)
    configure_logging(settings)
    check_store(settings)
    extensions = build_extensions(settings)
    auth = build_auth(settings, extensions)
    app = create_app(settings, extensions=extensions, auth=auth)
    server = make_server(app, settings, on_started=lambda url: announce(settings, url, auth))
    server.run()
    return 0 if server.started else 1
