"""The mcpServers file: transports, ${VAR}, enabled, timeouts, and one clear error for a bad file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pml_gateway.proxy.downstream.config import ConfigError, HttpServerConfig, StdioServerConfig, load_config


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_the_convention_every_client_uses(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    path = write(
        tmp_path,
        {
            "mcpServers": {
                "files": {"command": "python", "args": ["-m", "x"], "env": {"K": "${K}"}, "cwd": "srv"},
                "remote": {"url": "http://127.0.0.1:9000/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}},
                "legacy": {"type": "sse", "url": "http://127.0.0.1:9001/sse", "timeout": 2.5},
                "typed": {"transport": "http", "url": "https://example.org/mcp"},
                "off": {"command": "nothing", "enabled": False},
                "cline": {"command": "node", "args": ["s.js"], "disabled": True, "autoApprove": ["x"]},
            }
        },
    )
    servers = {s.name: s for s in load_config(path, environ={"K": "v", "TOKEN": "t0k"})}
    files = servers["files"]
    assert isinstance(files, StdioServerConfig)
    assert files.command == sys.executable  # "python" is the gateway's own interpreter
    assert files.args == ["-m", "x"] and files.env == {"K": "v"}
    assert files.cwd == (tmp_path / "srv").resolve()
    assert files.enabled and files.timeout == 60
    remote = servers["remote"]
    assert isinstance(remote, HttpServerConfig) and remote.transport == "streamable-http"
    assert remote.headers == {"Authorization": "Bearer t0k"}
    assert servers["legacy"].transport == "sse" and servers["legacy"].timeout == 2.5
    assert servers["typed"].transport == "streamable-http"
    assert not servers["off"].enabled and not servers["cline"].enabled


def test_cwd_defaults_to_the_config_directory(tmp_path: Path) -> None:
    path = write(tmp_path, {"mcpServers": {"a": {"command": "./run.sh"}}})
    (server,) = load_config(path, environ={})
    assert server.cwd == tmp_path.resolve()
    assert server.command == str(tmp_path.resolve() / "run.sh")


def test_variables_with_defaults_and_disabled_servers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "mcpServers": {
                "a": {"url": "http://${HOST:-127.0.0.1}:${PORT}/mcp"},
                "b": {"url": "http://x/${MISSING}", "enabled": False},  # never started: no need to be set
            }
        },
    )
    a, b = load_config(path, environ={"PORT": "9100"})
    assert a.url == "http://127.0.0.1:9100/mcp"
    assert not b.enabled


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("{not json", "not valid JSON: line 1 column 2"),
        ([], "must be a JSON object with an 'mcpServers' object"),
        ({"servers": {}}, "field 'mcpServers': required"),
        ({"mcpServers": []}, "field 'mcpServers': must be an object"),
        ({"mcpServers": {"a": "python"}}, "server 'a': must be an object"),
        ({"mcpServers": {"a": {}}}, "server 'a': field 'command': required"),
        ({"mcpServers": {"a": {"command": ""}}}, "server 'a': field 'command': String should have at least 1 character"),
        ({"mcpServers": {"a": {"command": "x", "args": "-m x"}}}, "server 'a': field 'args': Input should be a valid list"),
        ({"mcpServers": {"a": {"command": "x", "args": ["ok", 3]}}}, "server 'a': field 'args[1]': Input should be a valid string"),
        ({"mcpServers": {"a": {"command": "x", "env": {"K": 1}}}}, "server 'a': field 'env.K': Input should be a valid string"),
        ({"mcpServers": {"a": {"command": "x", "enabled": "yes"}}}, "server 'a': field 'enabled': must be true or false"),
        ({"mcpServers": {"a": {"command": "x", "timeout": 0}}}, "server 'a': field 'timeout': Input should be greater than 0"),
        ({"mcpServers": {"b": {"url": "ftp://x"}}}, "server 'b': field 'url': must be an http:// or https:// URL"),
        ({"mcpServers": {"b": {"url": "http://x", "session": "private"}}}, "server 'b': field 'session': Input should be 'shared' or 'per_client'"),
        ({"mcpServers": {"b": {"url": "http://x", "max_sessions": 0}}}, "server 'b': field 'max_sessions': Input should be greater than or equal to 1"),
        ({"mcpServers": {"b": {"type": "websocket", "url": "ws://x"}}}, "server 'b': field 'type': must be one of"),
        ({"mcpServers": {"b": {"type": "sse", "command": "x"}}}, "server 'b': field 'url': required for sse servers"),
        ({"mcpServers": {"b": {"command": "x", "url": "http://x"}}}, "server 'b': give either 'command'"),
        (
            {"mcpServers": {"b": {"url": "http://x", "headers": {"Authorization": "Bearer ${TOKEN}"}}}},
            "server 'b': field 'headers.Authorization': environment variable TOKEN is not set",
        ),
    ],
)
def test_a_bad_file_gives_one_clear_error(tmp_path: Path, data: object, expected: str) -> None:
    path = write(tmp_path, data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(str(path) + ": ")
    assert expected in message
    assert "\n" not in message and "Traceback" not in message


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.json")


def test_session_sharing_is_shared_unless_per_client(tmp_path: Path) -> None:
    servers = {"a": {"command": "x"}, "b": {"url": "http://x", "session": "per_client", "max_sessions": 4, "session_idle_seconds": 9}}
    a, b = load_config(write(tmp_path, json.dumps({"mcpServers": servers})))
    assert (a.session, a.max_sessions, a.session_idle_seconds) == ("shared", 16, 300.0)
    assert (b.session, b.max_sessions, b.session_idle_seconds) == ("per_client", 4, 9.0)


@pytest.mark.parametrize("key", sorted((set(StdioServerConfig.model_fields) | set(HttpServerConfig.model_fields)) - {"name", "transport"}))
def test_every_server_key_is_in_the_docs(key: str) -> None:
    """docs/api/mcp-tools.md's table of server keys names every key a server entry may have."""
    doc = (Path(__file__).parent.parent / "docs" / "api" / "mcp-tools.md").read_text()
    table = doc.split("## Downstream servers", 1)[1].split("| key | meaning |", 1)[1].split("\n\n", 1)[0]
    assert f"`{key}`" in table, f"mcp-tools.md's server keys table does not name `{key}`"
