"""graphrag: a pure library that learns tool-to-tool edges from workflow executions.

No MCP, no HTTP: networkx, pydantic and SQLite. See DESIGN.md "Python API".
``PostgresStore`` (optional extra ``postgres``) is imported on first use, so graphrag works
without psycopg.
"""

from typing import Any

from .engine import GraphRAGEngine, UnknownTool
from .events import GraphEvent
from .execution import TaskRun, WorkflowExecution, check_dag
from .metrics import GraphMetrics
from .metrics_scheduler import MetricsScheduler
from .snapshot import GraphSnapshot
from .sqlite_store import SQLiteStore, StoreError
from .replication import Replica, SharedStore
from .store import CatchUp, GraphStore, LogBounds, MemoryStore, StoreUnavailable
from .suggestions import Suggestion

__all__ = [
    "CatchUp",
    "GraphEvent",
    "GraphMetrics",
    "GraphRAGEngine",
    "GraphSnapshot",
    "GraphStore",
    "LogBounds",
    "MemoryStore",
    "MetricsScheduler",
    "PostgresStore",
    "Replica",
    "SQLiteStore",
    "SharedStore",
    "StoreError",
    "StoreUnavailable",
    "Suggestion",
    "TaskRun",
    "UnknownTool",
    "WorkflowExecution",
    "check_dag",
]


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        from .postgres_store import PostgresStore

        return PostgresStore
    raise AttributeError(f"module 'graphrag' has no attribute {name!r}")
