"""Settings of one gateway process: pydantic-settings, every field also a ``PML_<NAME>`` env var.

Precedence (highest first): command-line flags (passed as init arguments by ``cli.py``), then
``PML_*`` environment variables, then the defaults below. The names and defaults are the
contract of DESIGN.md "CLI and settings".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

APP_NAME = "pml-gateway"
ENV_PREFIX = "PML_"
DEFAULT_CONFIG = Path("mcp.json")
DEFAULT_CORS_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*")
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
LogFormat = Literal["text", "json"]


def default_config() -> Path | None:
    """``./mcp.json`` when the current directory has one, else no downstreams."""
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def default_db() -> str:
    """A SQLite file in the user data directory (created when the store opens it)."""
    return str(platformdirs.user_data_path(APP_NAME) / "graph.db")


def default_keys_file() -> Path:
    """The API keys file, next to the default database (auth/keys.py owns its format)."""
    return platformdirs.user_data_path(APP_NAME) / "keys.json"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    host: str = Field(default="127.0.0.1", min_length=1, description="Interface to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0: any free port).")
    config: Path | None = Field(default_factory=default_config, description="Downstream servers (mcp.json).")
    db: str = Field(default_factory=default_db, min_length=1, description='SQLite file, ":memory:", or a postgresql:// URL (replicas).')
    heartbeat_seconds: float = Field(default=30.0, gt=0, description="Interval of the stream's heartbeat event.")
    max_clients: int = Field(default=100, ge=1, description="Open event streams allowed at once.")
    max_streams_per_address: int = Field(
        default=32, ge=1, description="Open event streams (SSE and WebSocket together) from one client address."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CORS_ORIGINS),
        description="Origins allowed by CORS: a comma list of patterns, '*' matches anything.",
    )
    replay_buffer: int = Field(default=10_000, ge=1, description="Events kept in memory for replay.")
    client_queue: int = Field(default=1_000, ge=1, description="Events queued per stream client before it is dropped.")
    metrics_interval_seconds: float = Field(default=1.0, gt=0, description="Coalescing window of metrics recomputes.")
    trace_idle_seconds: float = Field(default=30.0, gt=0, description="Quiet time that closes a session's trace.")
    trace_checkpoint_seconds: float = Field(
        default=2.0, gt=0, description="Open traces are saved to the store this often: what a crash may lose of them."
    )
    log_level: LogLevel = Field(default="info", description="Log level of the process.")
    max_executions_per_request: int = Field(default=1_000, ge=1, description="Executions in one POST /executions.")
    max_tasks_per_execution: int = Field(default=1_000, ge=1, description="Tasks (or tool_ids) in one execution.")
    max_dependencies_per_task: int = Field(default=64, ge=0, description="depends_on entries of one task.")
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Time a connection has to send a request's headers before it is closed."
    )
    max_connections: int = Field(default=1_000, ge=1, description="Open HTTP connections before new ones get 503.")
    max_mcp_sessions: int = Field(
        default=1_000, ge=1, description="Open 2025-era MCP sessions; past it the oldest idle one is evicted, else 503."
    )
    max_mcp_sessions_per_client: int = Field(
        default=100, ge=1, description="Open 2025-era MCP sessions per client address; past it its oldest idle one is evicted, else 429."
    )
    mcp_session_idle_seconds: float = Field(
        default=600.0, gt=0, description="A 2025-era MCP session with no request and no open stream this long is ended."
    )
    startup_timeout_seconds: float = Field(
        default=15.0, ge=0, description="How long start-up waits for downstreams' first connection attempts."
    )
    connect_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Time a downstream has to start, initialize and list its tools."
    )
    downstream_max_line_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1, description="Longest stdout line (one message) of a stdio downstream; past it, it is restarted."
    )
    log_format: LogFormat = Field(default="text", description="Log lines as text, or one JSON object per line.")
    fast_path: bool = Field(
        default=True,
        # PML_GATEWAY_FAST_PATH is the name it had before it became a setting: still read.
        validation_alias=AliasChoices("fast_path", "PML_FAST_PATH", "PML_GATEWAY_FAST_PATH"),
        description="Answer tools/call of downstream tools without the SDK's transports (0/false: off).",
    )
    # -- who may do what (pml_gateway/auth; docs/api/auth.md) ------------------------------------
    keys_file: Path = Field(default_factory=default_keys_file, description="API keys file (pml-gateway keys ...).")
    jwt_issuer: str | None = Field(default=None, min_length=1, description="JWTs: the required 'iss'.")
    jwt_audience: str | None = Field(default=None, min_length=1, description="JWTs: the required 'aud'.")
    jwt_jwks_url: str | None = Field(default=None, pattern=r"^https?://", description="JWTs: JWKS URL of the signing keys.")
    jwt_public_key_file: Path | None = Field(default=None, description="JWTs: PEM public key file of the signer.")
    jwt_secret: SecretStr | None = Field(default=None, description="JWTs: HS256 shared secret (development).")
    auth_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Authorization servers named in the resource metadata (comma list)."
    )
    allow_unauthenticated: bool = Field(
        default=False, description="Serve a non-loopback address without authentication."
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra Host names the gateway answers to (a comma list), behind a real hostname.",
    )
    audit_log: Path | None = Field(default=None, description="File for the audit lines (default: the pml_gateway.audit logger).")
    tool_exposure: Literal["all", "lean"] = Field(
        default="all",
        description="tools/list: every downstream tool (all), or only the pml_* tools (lean; find tools with "
        "pml_search_tools and call them with pml_call_tool).",
    )

    @field_validator("cors_origins", "auth_servers", "allowed_hosts", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        # Env vars and flags give "a,b"; Python callers may give a list.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("jwt_issuer", "jwt_audience", "jwt_jwks_url", "jwt_public_key_file", "jwt_secret", "audit_log", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("jwt_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # RFC 7518 §3.2: an HS256 key at least as long as the hash (32 bytes).
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes (RFC 7518 §3.2)")
        return value

    @model_validator(mode="after")
    def _jwt_complete(self) -> Settings:
        # JWT auth is on as soon as any jwt_* is set: then it must be checkable (auth/jwt.py).
        if not self.jwt_enabled:
            return self
        sources = [n for n in ("jwt_jwks_url", "jwt_public_key_file", "jwt_secret") if getattr(self, n) is not None]
        if len(sources) != 1:
            raise ValueError(
                "JWT auth needs exactly one of jwt_jwks_url, jwt_public_key_file, jwt_secret"
                + (f" (got {', '.join(sources)})" if sources else "")
            )
        missing = [n for n in ("jwt_issuer", "jwt_audience") if getattr(self, n) is None]
        if missing:
            raise ValueError(f"JWT auth needs {' and '.join(missing)}: 'iss' and 'aud' are always checked")
        return self

    @field_validator("cors_origins", "allowed_hosts")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if any(ch.isspace() for ch in origin):
                raise ValueError(f"{origin!r} contains whitespace")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("config", mode="before")
    @classmethod
    def _empty_config_is_none(cls, value: Any) -> Any:
        # PML_CONFIG= (empty) means "no downstreams", not the current directory.
        return None if value == "" else value

    @property
    def in_memory(self) -> bool:
        return self.db == ":memory:"

    @property
    def jwt_enabled(self) -> bool:
        """Any jwt_* setting given: bearer JWTs are accepted (and the settings must be complete)."""
        names = ("jwt_issuer", "jwt_audience", "jwt_jwks_url", "jwt_public_key_file", "jwt_secret")
        return any(getattr(self, name) is not None for name in names)


def env_var(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def describe_error(error: ValidationError) -> str:
    """One line per invalid setting, naming the setting, its env var and its flag: no traceback."""
    lines = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else "settings"
        message = re.sub(r"^Value error, ", "", item["msg"])
        if name in Settings.model_fields:
            lines.append(f"{name} ({flag(name)} / {env_var(name)}): {message}")
        else:
            lines.append(f"{name}: {message}")
    return "\n".join(lines)
