"""``pml-gateway keys create|list|revoke``: the API keys file (auth/keys.py owns its format).

``create`` prints the new key once, on stdout alone (so ``KEY=$(pml-gateway keys create ...)``
works), and how to use it on stderr; only its hash is stored. ``list`` never shows a key, only
what it is for. Each command reads the ``keys_file`` setting like the server does (flag, then
``PML_KEYS_FILE``, then the default next to the database).
"""

from __future__ import annotations

import argparse
import sys

from pml_gateway.cli.common import PROG, UsageError, settings_from_args


def add_keys_commands(keys: argparse.ArgumentParser) -> None:
    from pml_gateway.cli.common import add_settings_arguments

    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="make a key, print it once, store its hash")
    create.add_argument("--name", required=True, help="who or what the key is for (unique; shown in audit lines)")
    create.add_argument(
        "--scopes", required=True, help="comma list of mcp, events:read, executions:write, metrics:read, admin"
    )
    create.add_argument("--profile", help="limit the key to this profile of the config's 'profiles'")
    actions.add_parser("list", help="names, scopes, profiles and creation times (never the keys)")
    revoke = actions.add_parser("revoke", help="delete a key: it stops working at the next request")
    revoke.add_argument("name", help="the key's name")
    for action in (create, actions.choices["list"], revoke):
        add_settings_arguments(action, ["keys_file"])


def main_keys(args: argparse.Namespace) -> int:
    from pml_gateway.auth import KeysFileError, KeyStore

    store = KeyStore(settings_from_args(args).keys_file)
    try:
        if args.keys_command == "create":
            scopes = [scope.strip() for scope in args.scopes.split(",") if scope.strip()]
            key = store.create(args.name, scopes, args.profile)
            print(key)
            print(
                f"{PROG}: key {args.name!r} created in {store.path}: it is shown only this once; "
                f"send it as 'Authorization: Bearer <key>'",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            records = store.load()
            if not records:
                print(f"{PROG}: no keys in {store.path}", file=sys.stderr)
            for record in records:
                created = record.created.isoformat(timespec="seconds").replace("+00:00", "Z")
                print(f"{record.name}\t{','.join(record.scopes)}\t{record.profile or '-'}\t{created}")
        else:
            store.revoke(args.name)
            print(f"{PROG}: key {args.name!r} revoked", file=sys.stderr)
    except KeysFileError as exc:
        raise UsageError(str(exc)) from exc
    return 0
