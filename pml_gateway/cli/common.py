"""What the commands share: flags for every setting, settings from flags, logging, start-up checks.

Only argparse and the settings model are imported at module level: the app, the MCP SDK and the
engine load inside the commands that need them, so ``--help`` and a bad flag answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from pml_gateway.settings import Settings, describe_error, env_var, flag

if TYPE_CHECKING:
    from pml_gateway.state import AppExtension

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
    "fast_path": "BOOL",
    "tool_exposure": "all|lean",
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
    from pml_gateway.app import open_store

    try:
        open_store(settings).close()
    except Exception as exc:  # StoreError, permissions, a directory in the way...
        raise UsageError(str(exc) if str(exc).startswith("db:") else f"db: {settings.db}: {exc}") from exc


def build_extensions(settings: Settings) -> list[AppExtension]:
    """The extensions ``serve`` runs with (the MCP gateway, the dashboard)."""
    from pml_gateway.dashboard import Dashboard
    from pml_gateway.proxy import ConfigError, Gateway

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
    print(f"{PROG}: dashboard at {base_url}/dashboard", file=sys.stderr)
