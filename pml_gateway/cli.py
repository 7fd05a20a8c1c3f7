"""The ``pml-gateway`` command line.

Every setting has a flag (``--heartbeat-seconds``) and an env var (``PML_HEARTBEAT_SECONDS``);
a flag given on the command line wins. Flags default to "not given" (``argparse.SUPPRESS``) so
that only what the user typed overrides the environment.

Subcommands register through ``build_parser``: each has a ``handler(args) -> int``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .app import AppExtension, create_app, make_server
from .dashboard import PATH as DASHBOARD_PATH
from .dashboard import Dashboard
from .downstream_config import ConfigError
from .gateway import Gateway
from .settings import Settings, describe_error, env_var, flag

PROG = "pml-gateway"

_METAVARS = {
    "host": "HOST",
    "port": "PORT",
    "config": "FILE",
    "db": "PATH",
    "heartbeat_seconds": "SECONDS",
    "max_clients": "N",
    "cors_origins": "PATTERNS",
    "replay_buffer": "EVENTS",
    "client_queue": "EVENTS",
    "metrics_interval_seconds": "SECONDS",
    "trace_idle_seconds": "SECONDS",
    "log_level": "LEVEL",
}
_DEFAULTS_SHOWN = {"config": "./mcp.json when present"}
_TYPES: dict[str, Any] = {"config": Path}


class UsageError(Exception):
    """A problem the user fixes on the command line or in the environment: printed, exit 2."""


def add_settings_arguments(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One flag per setting (all of them unless ``names`` picks some)."""
    group = parser.add_argument_group("settings (each also an env var PML_<NAME>; a flag wins)")
    for name, info in Settings.model_fields.items():
        if names is not None and name not in names:
            continue
        help_text = f"{info.description} [{env_var(name)}; default: {_default_text(name)}]"
        group.add_argument(
            flag(name),
            dest=name,
            default=argparse.SUPPRESS,
            type=_TYPES.get(name, str),
            metavar=_METAVARS.get(name, name.upper()),
            help=help_text,
        )


def _default_text(name: str) -> str:
    if name in _DEFAULTS_SHOWN:
        return _DEFAULTS_SHOWN[name]
    info = Settings.model_fields[name]
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    return ",".join(value) if isinstance(value, list) else str(value)


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = {name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise UsageError("invalid settings:\n  " + describe_error(exc).replace("\n", "\n  ")) from exc


def configure_logging(settings: Settings) -> None:
    level = "DEBUG" if settings.log_level == "trace" else settings.log_level.upper()
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def check_store(settings: Settings) -> None:
    """Open and close the database once, so a bad ``--db`` is one clear line, not a traceback."""
    from .app import open_store

    try:
        open_store(settings).close()
    except Exception as exc:  # StoreError, permissions, a directory in the way...
        raise UsageError(str(exc) if str(exc).startswith("db:") else f"db: {settings.db}: {exc}") from exc


def build_extensions(settings: Settings, args: argparse.Namespace) -> list[AppExtension]:
    """The extensions ``serve`` runs with (the MCP gateway, the dashboard)."""
    extensions: list[AppExtension] = []
    try:
        extensions.append(Gateway(settings))  # /mcp and the downstream servers
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    extensions.append(Dashboard())  # GET /dashboard
    return extensions


def announce(settings: Settings, base_url: str) -> None:
    """Start-up lines: where to find things."""
    print(f"{PROG}: listening on {base_url}", file=sys.stderr)
    print(f"{PROG}: events at {base_url}/events/stream", file=sys.stderr)
    print(f"{PROG}: dashboard at {base_url}{DASHBOARD_PATH}", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    configure_logging(settings)
    check_store(settings)
    app = create_app(settings, extensions=build_extensions(settings, args))
    server = make_server(app, settings, on_started=lambda url: announce(settings, url))
    server.run()
    return 0 if server.started else 1


def cmd_stdio(args: argparse.Namespace) -> int:
    from .stdio_mode import main_stdio

    return main_stdio(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main_demo

    return main_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="An MCP gateway that learns which tools work together and streams what it learns."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="serve /mcp, /events/stream and the HTTP API over HTTP")
    add_settings_arguments(serve)
    serve.set_defaults(handler=cmd_serve)

    stdio = commands.add_parser("stdio", help="MCP over stdin/stdout; with --events-port, the HTTP API on that port too")
    add_settings_arguments(stdio, [name for name in Settings.model_fields if name != "port"])
    stdio.add_argument("--events-port", type=int, metavar="PORT", help="also serve /events/stream and the HTTP API here")
    stdio.set_defaults(handler=cmd_stdio)

    demo = commands.add_parser("demo", help="serve the bundled example servers with a workload, so events flow at once")
    add_settings_arguments(demo, [name for name in Settings.model_fields if name != "config"])
    demo.set_defaults(handler=cmd_demo)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
