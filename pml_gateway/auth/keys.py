"""API keys: made once, shown once, stored only as a hash (``pml-gateway keys ...``).

A key is ``pml_`` plus 32 random bytes (URL-safe base64): high-entropy, so a plain SHA-256 is a
safe verifier (no salt or slow hash needed: nothing to brute-force), and the ``pml_`` prefix tells
a key from a JWT without trying to parse it. The file holds names, scopes, profiles, creation
times and hashes, never a key; it is written atomically (temporary file, fsync, rename) with mode
0600, so a crash leaves the old file or the new one, never half of one.

The running gateway re-reads the file when it changes (its mtime and size), so ``keys revoke``
takes effect at the next request without a restart. Comparing hashes uses
``hmac.compare_digest`` over every record: the time taken does not depend on which key matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from pml_gateway.auth.scopes import unknown_scopes

KEY_PREFIX = "pml_"
#: ``name`` as typed on the command line and shown in audit lines.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"


class KeysFileError(ValueError):
    """A keys-file problem the user fixes (bad name, unknown scope, unreadable file): one line."""


class ApiKeyRecord(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[str] = Field(min_length=1)
    profile: str | None = None
    created: datetime


class KeysFile(BaseModel):
    version: int = 1
    keys: list[ApiKeyRecord] = Field(default_factory=list)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


class KeyStore:
    """The keys file: create, list, revoke (the CLI), and verify (the running gateway)."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser()
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read
        self._records: list[ApiKeyRecord] = []

    # -- reading -------------------------------------------------------------------------------
    def load(self) -> list[ApiKeyRecord]:
        """The records, re-read only when the file changed; a missing file is no keys."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen, self._records = None, []
            return []
        except OSError as exc:
            raise KeysFileError(f"keys_file: {self.path}: {exc.strerror or exc}") from None
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            self._records = self._read().keys
            self._seen = seen
        return self._records

    def _read(self) -> KeysFile:
        try:
            return KeysFile.model_validate_json(self.path.read_bytes())
        except OSError as exc:
            raise KeysFileError(f"keys_file: {self.path}: {exc.strerror or exc}") from None
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"]) or "file"
            raise KeysFileError(f"keys_file: {self.path}: {where}: {error['msg']}") from None

    def verify(self, token: str) -> ApiKeyRecord | None:
        """The key's record, or None for an unknown or revoked key."""
        if not looks_like_key(token):
            return None
        digest = hash_key(token)
        found: ApiKeyRecord | None = None
        for record in self.load():
            if hmac.compare_digest(record.sha256, digest) and found is None:
                found = record
        return found

    # -- writing (the CLI) ---------------------------------------------------------------------
    def create(self, name: str, scopes: list[str], profile: str | None = None) -> str:
        """Store a new key's hash and return the key (the only time it exists in clear)."""
        unknown = unknown_scopes(scopes)
        if unknown:
            raise KeysFileError(f"scopes: unknown scope {unknown[0]!r} (known: mcp, events:read, executions:write, metrics:read, admin)")
        if not scopes:
            raise KeysFileError("scopes: give at least one scope")
        current = self._read() if self.path.exists() else KeysFile()
        if any(record.name == name for record in current.keys):
            raise KeysFileError(f"name: a key named {name!r} exists already (revoke it first)")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        try:
            record = ApiKeyRecord(
                name=name, sha256=hash_key(key), scopes=scopes, profile=profile, created=datetime.now(timezone.utc)
            )
        except ValidationError as exc:
            field = str(exc.errors()[0]["loc"][0])
            raise KeysFileError(f"{field}: {exc.errors()[0]['msg']}") from None
        current.keys.append(record)
        self._write(current)
        return key

    def revoke(self, name: str) -> None:
        current = self._read() if self.path.exists() else KeysFile()
        kept = [record for record in current.keys if record.name != name]
        if len(kept) == len(current.keys):
            raise KeysFileError(f"name: no key named {name!r}")
        self._write(KeysFile(keys=kept))

    def _write(self, content: KeysFile) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".keys-", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(content.model_dump_json(indent=2).encode() + b"\n")
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)

