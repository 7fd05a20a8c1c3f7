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
    from pml_gateway.auth import AuthPolicy
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
    "log_format": "text|json",
    "fast_path": "BOOL",
    "allowed_hosts": "HOSTS",
    "max_executions_per_request": "N",
    "max_tasks_per_execution": "N",
    "max_dependencies_per_task": "N",
    "startup_timeout_seconds": "SECONDS",
    "header_timeout_seconds": "SECONDS",
    "max_connections": "N",
    "connect_timeout_seconds": "SECONDS",
    "downstream_max_line_bytes": "BYTES",
    "max_streams_per_address": "N",
    "max_mcp_sessions": "N",
    "max_mcp_sessions_per_client": "N",
    "mcp_session_idle_seconds": "SECONDS",
    "trace_checkpoint_seconds": "SECONDS",
    "keys_file": "FILE",
    "jwt_issuer": "URL",
    "jwt_audience": "AUDIENCE",
    "jwt_jwks_url": "URL",
    "jwt_public_key_file": "FILE",
    "jwt_secret": "SECRET",
    "auth_servers": "URLS",
    "audit_log": "FILE",
    "tool_exposure": "all|lean",
}
#: Settings given as a bare flag (``--allow-unauthenticated``); the env var still takes a value.
_SWITCHES = ("allow_unauthenticated",)
_DEFAULTS_SHOWN = {"config": "./mcp.json when present", "keys_file": "keys.json in the user data dir"}
_TYPES: dict[str, Any] = {}  # every flag is a string: the settings model converts (and "" means none)


class UsageError(Exception):
    """A problem the user fixes on the command line or in the environment: printed, exit 2."""


def add_settings_arguments(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One flag per setting (all of them unless ``names`` picks some)."""
    group = parser.add_argument_group("settings (each also an env var PML_<NAME>; a flag wins)")
    for name, info in Settings.model_fields.items():
        if names is not None and name not in names:
            continue
        help_text = f"{info.description} [{env_var(name)}; default: {_default_text(name)}]"
        if name in _SWITCHES:
            group.add_argument(flag(name), dest=name, action="store_const", const=True, default=argparse.SUPPRESS, help=help_text)
            continue
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
    """Logging in the chosen format (credentials redacted), and OpenTelemetry when ``OTEL_EXPORTER_OTLP_ENDPOINT`` asks for it."""
    from pml_gateway.log_redaction import QUIET_LOGGERS, RedactingFilter
    from pml_gateway.observability import configure_logging as configure, configure_tracing

    configure(settings.log_level, settings.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())  # on the handler: records of every logger pass it
    if settings.log_level not in ("debug", "trace"):
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    configure_tracing()


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


def build_auth(settings: Settings, extensions: Sequence[AppExtension]) -> AuthPolicy:
    """Who may do what (pml_gateway/auth), checked before anything starts.

    Refuses (exit 2, one line) to serve a non-loopback address without authentication unless
    ``--allow-unauthenticated``; a bad keys file or JWT key file is one line too.
    """
    from pml_gateway.app import profiles_of
    from pml_gateway.auth import AuthPolicy, KeysFileError, is_loopback

    try:
        auth = AuthPolicy(settings, profiles_of(extensions))
    except (KeysFileError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    if not auth.enabled and not is_loopback(settings.host) and not settings.allow_unauthenticated:
        raise UsageError(
            f"refusing to serve {settings.host} without authentication: create an API key "
            f"({PROG} keys create), set the jwt_* settings, or pass --allow-unauthenticated"
        )
    return auth


def banner(settings: Settings, auth: AuthPolicy | None = None) -> list[str]:
    """What a user needs to know at start: which config, which database, which auth mode."""
    lines = []
    if settings.config is None:
        lines.append(
            f"warning: no config file (no ./mcp.json in {Path.cwd()}): serving no downstream servers;"
            " pass --config FILE or set PML_CONFIG"
        )
    else:
        lines.append(f"config {settings.config.expanduser().resolve()}")
    lines.append("database :memory: (nothing is kept)" if settings.in_memory else f"database {settings.db}")
    lines.append(auth.describe() if auth is not None else "auth none (MCP over stdio: the client that started it)")
    return lines


def announce_banner(settings: Settings, auth: AuthPolicy | None = None) -> None:
    for line in banner(settings, auth):
        say(settings, line)


def announce(settings: Settings, base_url: str, auth: AuthPolicy | None = None) -> None:
    """Start-up lines: what is in use and where to find things."""
    announce_banner(settings, auth)
    say(settings, f"listening on {base_url}")
    say(settings, f"events at {base_url}/events/stream")
    say(settings, f"dashboard at {base_url}/dashboard")


def say(settings: Settings, line: str) -> None:
    """A start-up line for the operator: plain on stderr, or a log record with ``--log-format json``."""
    if settings.log_format == "json":
        logging.getLogger("pml_gateway").info(line)  # every stderr line stays one JSON object
    else:
        print(f"{PROG}: {line}", file=sys.stderr)