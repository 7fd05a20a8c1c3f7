"""Settings: the contract's names and defaults, PML_* env vars, flags winning, clear errors."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest

from pml_gateway.cli import build_parser, main
from pml_gateway.cli.common import settings_from_args
from pml_gateway.settings import Settings

CONTRACT_DEFAULTS = {
    "host": "127.0.0.1",
    "port": 8000,
    "heartbeat_seconds": 30.0,
    "max_clients": 100,
    "cors_origins": ["http://localhost:*", "http://127.0.0.1:*"],
    "replay_buffer": 10_000,
    "client_queue": 1_000,
    "metrics_interval_seconds": 1.0,
    "trace_idle_seconds": 30.0,
    "fast_path": True,
    "log_format": "text",
    # who may do what (auth): off unless keys exist or a jwt_* is set
    "jwt_issuer": None,
    "jwt_audience": None,
    "jwt_jwks_url": None,
    "jwt_public_key_file": None,
    "jwt_secret": None,
    "auth_servers": [],
    "allow_unauthenticated": False,
    "allowed_hosts": [],
    "audit_log": None,
    "tool_exposure": "all",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("PML_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no ./mcp.json unless a test writes one


def parse(*argv: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults_are_the_contract() -> None:
    settings = Settings()
    assert {name: getattr(settings, name) for name in CONTRACT_DEFAULTS} == CONTRACT_DEFAULTS
    assert settings.config is None  # no ./mcp.json here: no downstreams
    assert Path(settings.db) == platformdirs.user_data_path("pml-gateway") / "graph.db"
    assert settings.keys_file == platformdirs.user_data_path("pml-gateway") / "keys.json"
    assert {*CONTRACT_DEFAULTS, "config", "db", "log_level", "keys_file"} <= set(Settings.model_fields)  # the contract may grow


def test_config_defaults_to_mcp_json_when_present(tmp_path: Path) -> None:
    (tmp_path / "mcp.json").write_text('{"mcpServers": {}}')
    assert Settings().config == Path("mcp.json")


def test_env_vars_for_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PML_HOST", "0.0.0.0")
    monkeypatch.setenv("PML_PORT", "9100")
    monkeypatch.setenv("PML_CONFIG", "servers.json")
    monkeypatch.setenv("PML_DB", ":memory:")
    monkeypatch.setenv("PML_HEARTBEAT_SECONDS", "0.25")
    monkeypatch.setenv("PML_MAX_CLIENTS", "3")
    monkeypatch.setenv("PML_CORS_ORIGINS", "http://localhost:*, https://*.example.com")
    monkeypatch.setenv("PML_REPLAY_BUFFER", "50")
    monkeypatch.setenv("PML_CLIENT_QUEUE", "20")
    monkeypatch.setenv("PML_METRICS_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("PML_TRACE_IDLE_SECONDS", "2.5")
    monkeypatch.setenv("PML_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("PML_FAST_PATH", "0")
    monkeypatch.setenv("PML_LOG_FORMAT", "json")
    monkeypatch.setenv("PML_KEYS_FILE", "keys.json")
    monkeypatch.setenv("PML_JWT_ISSUER", "https://issuer.test")
    monkeypatch.setenv("PML_JWT_AUDIENCE", "pml")
    monkeypatch.setenv("PML_JWT_JWKS_URL", "https://issuer.test/jwks.json")
    monkeypatch.setenv("PML_AUTH_SERVERS", "https://issuer.test, https://other.test")
    monkeypatch.setenv("PML_ALLOW_UNAUTHENTICATED", "true")
    monkeypatch.setenv("PML_ALLOWED_HOSTS", "gw.example.com,gw.internal")
    monkeypatch.setenv("PML_AUDIT_LOG", "audit.jsonl")
    monkeypatch.setenv("PML_TOOL_EXPOSURE", "lean")
    settings = Settings()
    dumped = settings.model_dump()
    assert {key: dumped[key] for key in EXPECTED_FROM_ENV} == EXPECTED_FROM_ENV
    assert settings.in_memory


EXPECTED_FROM_ENV = {
    "host": "0.0.0.0",
    "port": 9100,
    "config": Path("servers.json"),
    "db": ":memory:",
    "heartbeat_seconds": 0.25,
    "max_clients": 3,
    "cors_origins": ["http://localhost:*", "https://*.example.com"],
    "replay_buffer": 50,
    "client_queue": 20,
    "metrics_interval_seconds": 0.5,
    "trace_idle_seconds": 2.5,
    "log_level": "debug",
    "log_format": "json",
    "fast_path": False,
    "keys_file": Path("keys.json"),
    "jwt_issuer": "https://issuer.test",
    "jwt_audience": "pml",
    "jwt_jwks_url": "https://issuer.test/jwks.json",
    "jwt_public_key_file": None,
    "jwt_secret": None,
    "auth_servers": ["https://issuer.test", "https://other.test"],
    "allow_unauthenticated": True,
    "allowed_hosts": ["gw.example.com", "gw.internal"],
    "audit_log": Path("audit.jsonl"),
    "tool_exposure": "lean",
}


def test_fast_path_keeps_its_old_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PML_GATEWAY_FAST_PATH", "0")
    assert Settings().fast_path is False
    assert parse("--fast-path", "1").fast_path is True  # the flag wins


def test_tool_exposure_flag_and_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PML_TOOL_EXPOSURE", "all")
    assert parse("--tool-exposure", "lean").tool_exposure == "lean"  # the flag wins
    assert main(["serve", "--tool-exposure", "some"]) == 2
    assert "tool_exposure" in capsys.readouterr().err


def test_flags_win_over_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PML_PORT", "9100")
    monkeypatch.setenv("PML_HEARTBEAT_SECONDS", "5")
    monkeypatch.setenv("PML_MAX_CLIENTS", "3")
    settings = parse("--port", "9200", "--heartbeat-seconds", "0.2", "--cors-origins", "http://a.test:*")
    assert settings.port == 9200 and settings.heartbeat_seconds == 0.2
    assert settings.cors_origins == ["http://a.test:*"]
    assert settings.max_clients == 3  # not given as a flag: the env var stands


def test_every_setting_has_a_flag() -> None:
    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in help_text
        assert "PML_" + name.upper() in help_text


def test_invalid_setting_names_the_flag_and_env_var_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PML_MAX_CLIENTS", "lots")
    code = main(["serve", "--heartbeat-seconds", "-1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "heartbeat_seconds (--heartbeat-seconds / PML_HEARTBEAT_SECONDS)" in err
    assert "max_clients (--max-clients / PML_MAX_CLIENTS)" in err
    assert "Traceback" not in err


def test_unusable_database_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("hello, this is not SQLite" * 100)
    code = main(["serve", "--db", str(not_a_db), "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("pml-gateway: error: db:") and str(not_a_db) in err
    assert "Traceback" not in err


def test_every_setting_is_read_from_its_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever settings later rounds add: each one is read from PML_<NAME>."""
    samples = {int: "7", float: "0.5", bool: "false", str: "x"}
    for name, info in Settings.model_fields.items():
        sample = samples.get(info.annotation)  # type: ignore[arg-type]
        if sample is None:
            continue  # lists, paths, literals: covered above
        monkeypatch.setenv("PML_" + name.upper(), sample)
        value = getattr(Settings(), name)
        monkeypatch.delenv("PML_" + name.upper())
        assert str(value).lower() in (sample, "7.0", "0.5"), name
def test_log_format_flag_and_a_bad_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse("--log-format", "json").log_format == "json"
    code = main(["serve", "--log-format", "xml"])
    err = capsys.readouterr().err
    assert code == 2
    assert "log_format (--log-format / PML_LOG_FORMAT): Input should be 'text' or 'json'" in err
