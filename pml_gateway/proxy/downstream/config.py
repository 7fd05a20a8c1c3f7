"""The downstream servers file: the ``mcpServers`` convention every MCP client uses.

```json
{"mcpServers": {
  "files": {"command": "python", "args": ["-m", "x"], "env": {"K": "${K}"}, "cwd": ".", "enabled": true},
  "remote": {"url": "http://127.0.0.1:9000/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}, "timeout": 30}
}}
```

- ``type`` (or ``transport``) may say ``stdio``, ``http`` / ``streamable-http``, or ``sse`` for legacy
  servers; without it ``command`` means stdio and ``url`` means Streamable HTTP.
- ``${VAR}`` (and ``${VAR:-default}``) in any string is taken from the environment.
- ``cwd`` and relative paths are relative to the config file's directory, which is also the
  default ``cwd``: a config and the servers next to it work from anywhere.
- A ``command`` of ``python`` or ``python3`` runs with the gateway's own interpreter, so servers
  written against the packages the gateway has installed (``mcp``) just work.
- ``enabled: false`` (or Cline's ``disabled: true``) keeps an entry without starting it.
- ``timeout`` is the per-call timeout in seconds (default 60).
- ``session``: ``shared`` (default) sends every client's requests over one downstream session;
  ``per_client`` gives each 2025-era upstream session a downstream session of its own (a process
  for stdio, an MCP session for HTTP; ``session_pool.py``), at most ``max_sessions`` (default 16)
  at a time, closed after ``session_idle_seconds`` (default 300) without a request.

A bad file raises :class:`ConfigError` with one message naming the server and the field, before
anything starts. Unknown keys (other clients' extensions such as ``autoApprove``) are ignored.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pml_gateway.auth.profiles import Profile
from pml_gateway.proxy.registry import sanitize

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_MAX_SESSIONS = 16
DEFAULT_SESSION_IDLE_SECONDS = 300.0

#: Spellings of ``type``/``transport`` and what they mean.
_TRANSPORTS: dict[str, Literal["stdio", "streamable-http", "sse"]] = {
    "stdio": "stdio",
    "http": "streamable-http",
    "streamable-http": "streamable-http",
    "streamable_http": "streamable-http",
    "streamablehttp": "streamable-http",
    "sse": "sse",
}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A config file the gateway cannot start with. ``str(error)`` is the one line users see."""


class _ServerBase(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1)
    enabled: bool = True
    timeout: float = Field(default=DEFAULT_TIMEOUT_SECONDS, gt=0, description="Per-call timeout, seconds.")
    #: issue 16: whether clients share one downstream session or each gets its own (session_pool.py)
    session: Literal["shared", "per_client"] = "shared"
    max_sessions: int = Field(default=DEFAULT_MAX_SESSIONS, ge=1, description="per_client: sessions open at once.")
    session_idle_seconds: float = Field(default=DEFAULT_SESSION_IDLE_SECONDS, gt=0, description="per_client: idle time that closes one.")


class StdioServerConfig(_ServerBase):
    """A server the gateway launches as a subprocess and talks to over stdin/stdout."""

    transport: Literal["stdio"] = "stdio"
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None


class HttpServerConfig(_ServerBase):
    """A server the gateway reaches over Streamable HTTP, or legacy HTTP+SSE."""

    transport: Literal["streamable-http", "sse"] = "streamable-http"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


#: One server's config, either kind.
ServerConfig = StdioServerConfig | HttpServerConfig


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> list[ServerConfig]:
    """Read and check a config file. Raises :class:`ConfigError` naming the server and field."""
    path = Path(path)
    data = _read_json(path)
    return parse_config(data, base_dir=path.resolve().parent, label=str(path), environ=environ)


def _read_json(path: Path) -> Any:
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{label}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read config file: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{label}: not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    return data


# -- profiles (auth/profiles.py): who sees which tools, beside mcpServers ---------------------------
def load_profiles(path: Path | str) -> dict[str, Profile]:
    """The ``profiles`` object of a config file (none when absent). Raises :class:`ConfigError`."""
    path = Path(path)
    return parse_profiles(_read_json(path), label=str(path))


def parse_profiles(data: Any, *, label: str = "config") -> dict[str, Profile]:
    raw_profiles = data.get("profiles", {}) if isinstance(data, dict) else {}
    if not isinstance(raw_profiles, dict):
        raise ConfigError(f"{label}: field 'profiles': must be an object of name -> profile")
    profiles: dict[str, Profile] = {}
    for name, raw in raw_profiles.items():
        where = f"{label}: profile {name!r}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: must be an object with tools, prompts, resources or servers")
        for field in ("tools", "prompts", "resources", "servers"):
            value = raw.get(field, [])
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{where}: field {field!r}: must be a list of non-empty strings")
        servers = raw.get("servers", [])
        # The tool and prompt names of a listed server, as the registry exposes them.
        patterns = [sanitize(server, "x")[:-1] + "*" for server in servers]
        try:
            profiles[name] = Profile.model_validate({**raw, "name": name, "server_patterns": patterns})
        except ValidationError as exc:
            raise ConfigError(f"{where}: {_first_error(exc)}") from None
    return profiles


def parse_config(
    data: Any,
    *,
    base_dir: Path,
    label: str = "config",
    environ: Mapping[str, str] | None = None,
) -> list[ServerConfig]:
    """Check an already-parsed ``{"mcpServers": {...}}`` object. Relative paths resolve against ``base_dir``."""
    env = os.environ if environ is None else environ
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: must be a JSON object with an 'mcpServers' object")
    servers = data.get("mcpServers")
    if servers is None:
        raise ConfigError(f"{label}: field 'mcpServers': required")
    if not isinstance(servers, dict):
        raise ConfigError(f"{label}: field 'mcpServers': must be an object of name -> server")
    result: list[ServerConfig] = []
    for name, raw in servers.items():
        result.append(_parse_server(name, raw, base_dir=base_dir, label=label, env=env))
    return result


def _parse_server(
    name: str, raw: Any, *, base_dir: Path, label: str, env: Mapping[str, str]
) -> ServerConfig:
    where = f"{label}: server {name!r}"
    if not name.strip():
        raise ConfigError(f"{label}: server names must not be empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be an object")
    raw = dict(raw)
    enabled = raw.get("enabled", True)
    if "disabled" in raw and "enabled" not in raw:  # Cline's spelling
        disabled = raw.pop("disabled")
        if not isinstance(disabled, bool):
            raise ConfigError(f"{where}: field 'disabled': must be true or false")
        enabled = raw["enabled"] = not disabled
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}: field 'enabled': must be true or false")

    transport = _transport_of(raw, where)
    raw["transport"] = transport
    raw.pop("type", None)
    raw["name"] = name
    # A disabled server never starts, so a variable it names may legitimately be unset.
    raw = _expand(raw, env=env, where=where, strict=enabled, path=())
    try:
        server: ServerConfig
        if transport == "stdio":
            server = StdioServerConfig.model_validate(raw)
        else:
            server = HttpServerConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_first_error(exc)}") from None
    if isinstance(server, StdioServerConfig):
        server = _resolve_stdio(server, base_dir)
    return server


def _transport_of(raw: dict[str, Any], where: str) -> Literal["stdio", "streamable-http", "sse"]:
    for key in ("type", "transport"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, str) or value.lower() not in _TRANSPORTS:
                raise ConfigError(f"{where}: field {key!r}: must be one of stdio, http, streamable-http, sse")
            transport = _TRANSPORTS[value.lower()]
            needed = "command" if transport == "stdio" else "url"
            if needed not in raw:
                raise ConfigError(f"{where}: field {needed!r}: required for {value} servers")
            return transport
    if "command" in raw and "url" in raw:
        raise ConfigError(f"{where}: give either 'command' (stdio) or 'url' (HTTP), not both, or set 'type'")
    if "command" in raw:
        return "stdio"
    if "url" in raw:
        return "streamable-http"
    raise ConfigError(f"{where}: field 'command': required (or 'url' for an HTTP server)")


def _expand(value: Any, *, env: Mapping[str, str], where: str, strict: bool, path: tuple[str | int, ...]) -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in every string, recursively."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            var, default = match.group(1), match.group(2)
            if var in env:
                return env[var]
            if default is not None:
                return default
            if strict:
                raise ConfigError(f"{where}: field {_dotted(path)!r}: environment variable {var} is not set")
            return ""

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand(v, env=env, where=where, strict=strict, path=(*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env=env, where=where, strict=strict, path=(*path, i)) for i, v in enumerate(value)]
    return value


def _resolve_stdio(server: StdioServerConfig, base_dir: Path) -> StdioServerConfig:
    cwd = base_dir if server.cwd is None else (base_dir / server.cwd.expanduser()).resolve()
    command = server.command
    if command in ("python", "python3"):
        command = sys.executable
    elif "/" in command and not Path(command).is_absolute():
        command = str((cwd / command).resolve())
    return server.model_copy(update={"cwd": cwd, "command": command})


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if not loc:
        return message
    return f"field {_dotted(loc)!r}: {message}"
