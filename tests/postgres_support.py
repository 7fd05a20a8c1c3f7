"""A throwaway PostgreSQL cluster for the replica tests: Debian's binaries, a Unix socket in a temp dir.

``make test`` installs Debian's ``postgresql`` package (the Makefile's ``postgres`` target); the
tests create, start and stop clusters themselves, so nothing is left running. Tests run as root
in CI and ``initdb`` refuses root, so the server runs as the ``postgres`` user (``runuser``).
``fsync=off`` is fine for speed, except where durability is the point (the crash test).

Outside CI, without PostgreSQL installed, the replica tests are skipped; in CI (``$CI`` set) a
missing PostgreSQL is a failure, never a skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def require_postgres() -> Path:
    """The binaries' directory; skips (outside CI only) when PostgreSQL is absent."""
    bindir = pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is required in CI (make postgres installs it)")
        pytest.skip("PostgreSQL not installed (make postgres)")
    return bindir


def _as_postgres(*args: str) -> list[str]:
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        return ["runuser", "-u", "postgres", "--", *args]
    return list(args)


@dataclass
class Cluster:
    bindir: Path
    root: Path  # data dir, log and socket live here
    fsync: bool = False

    @property
    def data(self) -> Path:
        return self.root / "pg"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.root}"

    def _run(self, program: str, *args: str, check: bool = True) -> None:
        """A PostgreSQL program of this cluster, as the ``postgres`` user when we are root."""
        subprocess.run(
            _as_postgres(str(self.bindir / program), "-D", str(self.data), *args),
            check=check,
            stdout=subprocess.DEVNULL,
            stderr=None if check else subprocess.DEVNULL,
            timeout=60,
        )

    def init(self) -> None:
        self._run("initdb", "-U", "postgres", "--auth=trust", "-N")

    def start(self) -> None:
        options = f"-c listen_addresses='' -k {self.root} -c max_connections=200"
        if not self.fsync:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-l", str(self.root / "pg.log"), "-w", "-t", "30", "start", "-o", options)

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-w", "-t", "30", "stop", "-m", mode, check=False)

    def create_database(self) -> str:
        """A fresh database for one test; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def new_cluster(*, fsync: bool = False) -> Cluster:
    """Create and start a cluster (short path: a Unix socket path is limited to ~100 bytes)."""
    bindir = require_postgres()
    root = Path(tempfile.mkdtemp(prefix="pmlpg-", dir="/tmp"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    cluster = Cluster(bindir, root, fsync=fsync)
    try:
        cluster.init()
        cluster.start()
    except BaseException:
        cluster.remove()
        raise
    return cluster
