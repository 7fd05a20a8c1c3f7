"""docs/api/auth.md against the code: every auth setting, every scope and the routes it grants,
the audit line's fields, and the refusal messages are what the code says."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pml_gateway.auth.audit import AuditRecord
from pml_gateway.auth.scopes import ALL_SCOPES, ADMIN, required_scope
from pml_gateway.settings import Settings, env_var

DOC = (Path(__file__).parent.parent / "docs" / "api" / "auth.md").read_text()
AUTH_SETTINGS = [
    "keys_file", "jwt_issuer", "jwt_audience", "jwt_jwks_url", "jwt_public_key_file", "jwt_secret",
    "auth_servers", "allow_unauthenticated", "allowed_hosts", "audit_log",
]


def section(title: str) -> str:
    body = DOC.split(f"## {title}\n", 1)[1]
    return body.split("\n## ", 1)[0]


def test_every_auth_setting_is_documented_with_its_env_var() -> None:
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| `(PML_[A-Z_]+)` \|", section("Settings"), flags=re.MULTILINE))
    assert set(rows) == set(AUTH_SETTINGS)
    for name in AUTH_SETTINGS:
        assert name in Settings.model_fields
        assert rows[name] == env_var(name)


def test_scope_table_matches_the_routes() -> None:
    rows = dict(re.findall(r"^\| `([a-z:]+)` \| (.+) \|$", section("Scopes"), flags=re.MULTILINE))
    assert set(rows) == set(ALL_SCOPES)
    for scope, granted in rows.items():
        if scope == ADMIN:
            continue
        for path in re.findall(r"`(?:GET |POST )?(/[a-z/{}.-]+)`", granted):
            assert required_scope(path.replace("{name}", "reader")) == scope, path


def test_audit_example_and_fields_match_the_record() -> None:
    audit = section("Audit")
    example = json.loads(re.search(r"```json\n(.*?)\n```", audit, flags=re.DOTALL).group(1))  # type: ignore[union-attr]
    AuditRecord.model_validate(example)
    assert list(example) == list(AuditRecord.model_fields)
    fields = re.findall(r"^\| `([a-z_]+)` \|", audit, flags=re.MULTILINE)
    assert fields == list(AuditRecord.model_fields)


def test_refusal_messages_are_the_code_s() -> None:
    guard = (Path(__file__).parent.parent / "pml_gateway" / "auth" / "guard.py").read_text()
    for phrase in ("access_token in the URL is accepted only on /events/stream and", "is not defined in the config",
                   "authentication is off: ", "unknown profile "):
        assert phrase in guard, phrase
        assert phrase in DOC, phrase
