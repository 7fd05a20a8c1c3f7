"""graphrag: a pure library that learns tool-to-tool edges from workflow executions.

No MCP, no HTTP: networkx, pydantic and SQLite. See DESIGN.md "Python API".
"""

from .engine import GraphRAGEngine
from .events import GraphEvent
from .execution import TaskRun, WorkflowExecution, check_dag
from .metrics import GraphMetrics
from .metrics_scheduler import MetricsScheduler
from .snapshot import GraphSnapshot
from .sqlite_store import SQLiteStore, StoreError
from .store import GraphStore, LogBounds, MemoryStore
from .suggestions import Suggestion

__all__ = [
    "GraphEvent",
    "GraphMetrics",
    "GraphRAGEngine",
    "GraphSnapshot",
    "GraphStore",
    "LogBounds",
    "MemoryStore",
    "MetricsScheduler",
    "SQLiteStore",
    "StoreError",
    "Suggestion",
    "TaskRun",
    "WorkflowExecution",
    "check_dag",
]
