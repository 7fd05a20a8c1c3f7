"""``pml-gateway demo``: ``serve`` on the bundled examples, with a workload, so events flow at once.

The example config (``mcp.json`` next to the notes, text and math servers) is found inside the
installed package (``pml_gateway/examples``) or, in a checkout, in ``public/examples``. Once the
server listens, ``workload.py`` starts in a child process and drives workflows through ``/mcp``;
it stops with the server. Unless set by flag or env var, the demo keeps its graph in its own
SQLite file, ``demo.db`` next to the default ``graph.db`` (your own graph stays untouched, and a
restarted demo goes on learning where it stopped), reads its own keys file (none: auth off, so
the workload needs no key), and closes traces after 2 s of quiet so edges appear quickly.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from pml_gateway.settings import default_db, env_var

#: The workload prints one summary line (with the dashboard's URL) this often, not one per round.
SUMMARY_SECONDS = 15
#: Defaults that make a demo lively; a flag or PML_* variable still wins.
DEMO_DEFAULTS = {
    "db": str(Path(default_db()).with_name("demo.db")),
    "trace_idle_seconds": "2",
    # Its own (absent) keys file: keys made for your gateway do not lock the demo's workload out.
    "keys_file": str(Path(default_db()).with_name("demo-keys.json")),
}


def examples_dir() -> Path:
    """The directory holding the example ``mcp.json``, servers and workload."""
    package = Path(__file__).resolve().parent.parent  # pml_gateway/
    for candidate in (package / "examples", package.parent / "public" / "examples"):
        if (candidate / "mcp.json").is_file() and (candidate / "workload.py").is_file():
            return candidate
    raise FileNotFoundError("the bundled examples (mcp.json, workload.py) are missing from this installation")


def main_demo(args: argparse.Namespace) -> int:
    from pml_gateway.app import create_app
    from pml_gateway.server import make_server
    from pml_gateway.cli.common import (
        UsageError,
        announce,
        build_auth,
        build_extensions,
        check_store,
        configure_logging,
        say,
        settings_from_args,
    )

    try:
        examples = examples_dir()
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    args.config = examples / "mcp.json"
    for name, value in DEMO_DEFAULTS.items():
        if not hasattr(args, name) and env_var(name) not in os.environ:
            setattr(args, name, value)
    settings = settings_from_args(args)
    configure_logging(settings)
    logging.getLogger("mcp").setLevel(logging.WARNING)  # one line per session would drown the demo
    if settings.audit_log is None:  # one audit line per call too (an audit_log file still gets them)
        logging.getLogger("pml_gateway.audit").setLevel(logging.WARNING)
    check_store(settings)
    extensions = build_extensions(settings)
    auth = build_auth(settings, extensions)
    app = create_app(settings, extensions=extensions, auth=auth)
    workload: list[subprocess.Popen[bytes]] = []

    def started(base_url: str) -> None:
        announce(settings, base_url, auth)
        say(settings, f"demo workload driving {base_url}/mcp; a summary every {SUMMARY_SECONDS} s (Ctrl+C stops everything)")
        workload.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(examples / "workload.py"),
                    *("--url", f"{base_url}/mcp", "--every", str(SUMMARY_SECONDS)),
                    *("--dashboard", f"{base_url}/dashboard"),
                ],
                cwd=examples,
                stdin=subprocess.DEVNULL,
            )
        )

    server = make_server(app, settings, on_started=started, access_log=False)
    try:
        server.run()
    finally:
        for process in workload:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0 if server.started else 1
