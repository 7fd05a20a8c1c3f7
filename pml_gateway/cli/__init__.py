"""The ``pml-gateway`` command line: one module per command, and what they share (``common``).

Every setting has a flag (``--heartbeat-seconds``) and an env var (``PML_HEARTBEAT_SECONDS``);
a flag given on the command line wins. Flags default to "not given" (``argparse.SUPPRESS``) so
that only what the user typed overrides the environment. Each command module is imported only
when that command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pml_gateway.cli.common import PROG, UsageError, add_settings_arguments
from pml_gateway.cli.admin import add_admin_commands as _add_admin_commands
from pml_gateway.cli.keys import add_keys_commands as _add_keys_commands
from pml_gateway.settings import Settings

__all__ = ["build_parser", "main", "version"]


def version() -> str:
    """The installed distribution's version (its metadata); a bare checkout says so."""
    from pml_gateway.version import VERSION

    return VERSION if VERSION != "0+unknown" else "unknown (not installed: pip install .)"


class _Version(argparse.Action):
    """``--version``: the metadata is read only when asked for, so ``--help`` stays instant."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **_: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"{PROG} {version()}")
        parser.exit()


def _serve(args: argparse.Namespace) -> int:
    from pml_gateway.cli.serve import main_serve

    return main_serve(args)


def _stdio(args: argparse.Namespace) -> int:
    from pml_gateway.cli.stdio import main_stdio

    return main_stdio(args)


def _demo(args: argparse.Namespace) -> int:
    from pml_gateway.cli.demo import main_demo

    return main_demo(args)


def _keys(args: argparse.Namespace) -> int:
    from pml_gateway.cli.keys import main_keys

    return main_keys(args)


def _admin(args: argparse.Namespace) -> int:
    from pml_gateway.cli.admin import main_admin

    return main_admin(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="An MCP gateway that learns which tools work together and streams what it learns."
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="serve /mcp, /events/stream and the HTTP API over HTTP")
    add_settings_arguments(serve)
    serve.set_defaults(handler=_serve, command_parser=serve)

    stdio = commands.add_parser("stdio", help="MCP over stdin/stdout; with --events-port, the HTTP API on that port too")
    add_settings_arguments(stdio, [name for name in Settings.model_fields if name != "port"])
    stdio.add_argument("--events-port", type=int, metavar="PORT", help="also serve /events/stream and the HTTP API here")
    stdio.set_defaults(handler=_stdio, command_parser=stdio)

    demo = commands.add_parser("demo", help="serve the bundled example servers with a workload, so events flow at once")
    add_settings_arguments(demo, [name for name in Settings.model_fields if name != "config"])
    demo.set_defaults(handler=_demo, command_parser=demo)

    keys = commands.add_parser("keys", help="API keys: create (shown once), list, revoke")
    _add_keys_commands(keys)
    keys.set_defaults(handler=_keys)

    admin = commands.add_parser("admin", help="delete learned history in the database: reset, forget-tool")
    _add_admin_commands(admin)
    admin.set_defaults(handler=_admin)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # reported by the command's own parser, so its usage is the one shown
        hint = ""
        if args.command == "stdio" and any(extra.split("=")[0] == "--port" for extra in extras):
            hint = " (stdio speaks MCP on stdin/stdout; --events-port PORT serves the HTTP API beside it)"
        args.command_parser.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
