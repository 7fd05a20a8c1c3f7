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
from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

APP_NAME = "pml-gateway"
ENV_PREFIX = "PML_"
DEFAULT_CONFIG = Path("mcp.json")
DEFAULT_CORS_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*")
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


def default_config() -> Path | None:
    """``./mcp.json`` when the current directory has one, else no downstreams."""
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def default_db() -> str:
    """A SQLite file in the user data directory (created when the store opens it)."""
    return str(platformdirs.user_data_path(APP_NAME) / "graph.db")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    host: str = Field(default="127.0.0.1", min_length=1, description="Interface to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0: any free port).")
    config: Path | None = Field(default_factory=default_config, description="Downstream servers (mcp.json).")
    db: str = Field(default_factory=default_db, min_length=1, description='SQLite file, ":memory:", or a postgresql:// URL (replicas).')
    heartbeat_seconds: float = Field(default=30.0, gt=0, description="Interval of the stream's heartbeat event.")
    max_clients: int = Field(default=100, ge=1, description="Open event streams allowed at once.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CORS_ORIGINS),
        description="Origins allowed by CORS: a comma list of patterns, '*' matches anything.",
    )
    replay_buffer: int = Field(default=10_000, ge=1, description="Events kept in memory for replay.")
    client_queue: int = Field(default=1_000, ge=1, description="Events queued per stream client before it is dropped.")
    metrics_interval_seconds: float = Field(default=1.0, gt=0, description="Coalescing window of metrics recomputes.")
    trace_idle_seconds: float = Field(default=30.0, gt=0, description="Quiet time that closes a session's trace.")
    log_level: LogLevel = Field(default="info", description="Log level of the process.")
    fast_path: bool = Field(
        default=True,
        # PML_GATEWAY_FAST_PATH is the name it had before it became a setting: still read.
        validation_alias=AliasChoices("fast_path", "PML_FAST_PATH", "PML_GATEWAY_FAST_PATH"),
        description="Answer tools/call of downstream tools without the SDK's transports (0/false: off).",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        # Env vars and flags give "a,b"; Python callers may give a list.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if any(ch.isspace() for ch in origin):
                raise ValueError(f"origin pattern {origin!r} contains whitespace")
        return value

    @field_validator("log_level", mode="before")
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
