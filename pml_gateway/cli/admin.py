"""``pml-gateway admin reset|forget-tool``: delete learned history from the configured database.

Both act on the store the ``db`` setting names (flag, then ``PML_DB``, then the default), through
the engine's one write path, exactly as ``POST /graph/reset`` and ``DELETE /graph/tools/{id}`` do
in a running gateway: the deletion and its ``graph_reset`` / ``tool_forgotten`` event are one
transaction in the shared log, so a gateway running on the same SQLite file or PostgreSQL
database picks it up through replication (within ~50 ms on SQLite, a NOTIFY on PostgreSQL), and
its stream clients receive the event. The graph is loaded without logging ``graph_synced``, and
no metrics are logged from here: the running gateways recompute them.

``reset`` deletes everything learned and asks for ``--yes``; ``forget-tool`` names one tool.
Results go to stdout (one line), errors to stderr with exit 2 (1 when the store is unavailable).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pml_gateway.cli.common import PROG, UsageError, add_settings_arguments, settings_from_args


def add_admin_commands(admin: argparse.ArgumentParser) -> None:
    actions = admin.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    reset = actions.add_parser(
        "reset", help="delete the whole learned graph, the recorded executions and the event log (asks for --yes)"
    )
    reset.add_argument("--yes", action="store_true", help="confirm: delete everything learned in the database")
    forget = actions.add_parser("forget-tool", help="delete one tool's learned history: its node, edges and counts")
    forget.add_argument("tool_id", metavar="TOOL_ID", help="the tool's id as /graph shows it (e.g. files__read_file)")
    for action in (reset, forget):
        add_settings_arguments(action, ["db"])
        action.set_defaults(command_parser=action)


def main_admin(args: argparse.Namespace) -> int:
    import anyio

    from graphrag import GraphRAGEngine, StoreError, StoreUnavailable, UnknownTool
    from graphrag.store import is_postgres_url
    from pml_gateway.app import open_store

    settings = settings_from_args(args)
    if settings.in_memory:
        raise UsageError("db: ':memory:' keeps nothing between processes, so there is nothing to delete: name the database with --db or PML_DB")
    if args.admin_command == "reset" and not args.yes:
        raise UsageError(f"reset deletes everything learned in {settings.db}: run again with --yes to confirm")
    if not is_postgres_url(settings.db) and not Path(settings.db).expanduser().exists():
        raise UsageError(f"db: {settings.db} does not exist (the database the gateway uses: --db or PML_DB)")
    try:
        store = open_store(settings)
    except (StoreError, OSError) as exc:
        raise UsageError(str(exc) if str(exc).startswith("db:") else f"db: {settings.db}: {exc}") from exc
    engine = GraphRAGEngine(store=store)
    try:
        engine.load()  # the committed graph, without a graph_synced in the log
        if args.admin_command == "reset":
            event = anyio.run(engine.reset_graph)
            data = event.data
            print(f"graph reset: {data.nodes_removed} tools and {data.edges_removed} edges deleted (event #{event.id})")  # type: ignore[attr-defined]
        else:
            event = anyio.run(engine.forget_tool, args.tool_id)
            data = event.data
            print(
                f"forgot {args.tool_id}: {data.edges_removed} edges and {data.transitions_removed} "  # type: ignore[attr-defined]
                f"second-order counts deleted (event #{event.id})"
            )
    except UnknownTool as exc:
        raise UsageError(f"{exc} in {settings.db}") from exc
    except StoreUnavailable as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.close()
        store.close()
    return 0
