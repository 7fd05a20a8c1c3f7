"""Louvain communities on the undirected projection of the graph, with a fixed seed.

Two backends: igraph's C implementation (the ``fast`` extra; seconds at a million edges) and
networkx's pure-Python one (the fallback). Either way the directed edges are taken as undirected
and reciprocal edges count together (A_ij = w_ij + w_ji), which is what modularity sees.

Why a worker process: python-igraph holds the GIL for the whole of a C call (its error and
interruption handling is not thread-safe), so a one-second Louvain in a worker thread would
freeze the event loop for one second. Small graphs are computed in the calling thread (the GIL
is held for a few milliseconds); larger ones in a long-lived child process, which keeps its own
copy of the graph and receives only the edges added since the last call, plus the weights.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "igraph", "networkx")

LOUVAIN_SEED = 42
#: Above this many edges, communities are computed in the worker process: in-thread igraph holds
#: the GIL for 5-15 ms at this size on a modest machine (about 45 ms at 30k edges).
PROCESS_THRESHOLD_EDGES = 10_000

# igraph's random number generator is process-global: set it and run under one lock, so that two
# engines computing at once in two threads still get seeded, reproducible results.
_igraph_lock = threading.Lock()


def igraph_available() -> bool:
    try:
        import igraph  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> Literal["igraph", "networkx"]:
    if backend not in BACKENDS:
        raise ValueError(f"community_backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "igraph" if igraph_available() else "networkx"
    if backend == "igraph" and not igraph_available():
        raise ImportError("community_backend: 'igraph' needs the igraph package (pip install 'pml-gateway[fast]')")
    return backend  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class CommunityRequest:
    """What one computation needs; ``src``/``dst`` hold only the edges from ``edge_start`` on."""

    backend: Literal["igraph", "networkx"]
    lineage: int
    node_count: int
    edge_start: int
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray  # every edge's weight, by edge position


class CommunityState:
    """The graph as the community code keeps it between calls, updated incrementally.

    Edges are append-only within one lineage (see graph_arrays.py), so a request that continues
    the same lineage only appends edges; anything else starts over.
    """

    def __init__(self) -> None:
        self._lineage: int | None = None
        self._src = np.empty(0, dtype=np.int32)
        self._dst = np.empty(0, dtype=np.int32)
        self._igraph: Any = None

    @property
    def lineage(self) -> int | None:
        return self._lineage

    @property
    def edge_count(self) -> int:
        return int(self._src.shape[0])

    def membership(self, request: CommunityRequest) -> np.ndarray:
        """A community index per node (arbitrary numbering)."""
        self._update(request)
        if request.node_count == 0:
            return np.zeros(0, dtype=np.int64)
        if request.backend == "igraph":
            return self._igraph_membership(request)
        return _networkx_membership(request.node_count, self._src, self._dst, request.weight)

    def _update(self, request: CommunityRequest) -> None:
        if request.lineage != self._lineage or request.edge_start != self.edge_count:
            if request.edge_start != 0:
                raise ValueError(f"edge_start {request.edge_start} does not continue the {self.edge_count} edges held")
            self._lineage = request.lineage
            self._src = np.empty(0, dtype=np.int32)
            self._dst = np.empty(0, dtype=np.int32)
            self._igraph = None
        if request.src.shape[0]:
            self._src = np.concatenate((self._src, request.src))
            self._dst = np.concatenate((self._dst, request.dst))
        if request.weight.shape[0] != self.edge_count:
            raise ValueError(f"weight has {request.weight.shape[0]} entries for {self.edge_count} edges")

    def _igraph_membership(self, request: CommunityRequest) -> np.ndarray:
        import igraph

        graph = self._igraph
        if graph is None:
            graph = self._igraph = igraph.Graph(n=request.node_count, directed=False)
            have = 0
        else:
            have = graph.ecount()
        if request.node_count > graph.vcount():
            graph.add_vertices(request.node_count - graph.vcount())
        if self.edge_count > have:
            # A generator of int pairs: igraph's numpy path is slower, and no list of lists is built.
            graph.add_edges(zip(self._src[have:].tolist(), self._dst[have:].tolist()))
        # Parallel edges (a→b and b→a) are summed by modularity: no need to merge them first.
        with _igraph_lock:
            igraph.set_random_number_generator(random.Random(LOUVAIN_SEED))
            clustering = graph.community_multilevel(weights=memoryview(np.ascontiguousarray(request.weight)))
        return np.asarray(clustering.membership, dtype=np.int64)


def _networkx_membership(node_count: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray) -> np.ndarray:
    import networkx as nx
    import scipy.sparse as sp

    # nx.Graph keeps one edge per pair: sum reciprocal edges first.
    low, high = np.minimum(src, dst), np.maximum(src, dst)
    merged = sp.coo_matrix((weight, (low, high)), shape=(node_count, node_count)).tocsr().tocoo()
    graph = nx.Graph()
    graph.add_nodes_from(range(node_count))
    graph.add_weighted_edges_from(zip(merged.row.tolist(), merged.col.tolist(), merged.data.tolist()))
    parts = nx.community.louvain_communities(graph, weight="weight", seed=LOUVAIN_SEED)
    membership = np.empty(node_count, dtype=np.int64)
    for label, part in enumerate(parts):
        membership[list(part)] = label
    return membership


def canonical_labels(membership: np.ndarray) -> np.ndarray:
    """Relabel: community 0 is the largest, ties by smallest member; labels stay stable for colouring."""
    if membership.shape[0] == 0:
        return membership
    _, first, inverse, sizes = np.unique(membership, return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first, -sizes))  # by size descending, then by first (= smallest) member
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    return rank[inverse.reshape(-1)]


# -- the worker process -------------------------------------------------------------------------
# Arrays travel as raw bytes after a small pickled header: pickling 16 MB of edges would copy
# them twice while holding the GIL (tens of milliseconds at a million edges), send_bytes writes
# straight from the array's buffer, and os.write releases the GIL.
_ARRAYS = (("src", np.int32), ("dst", np.int32), ("weight", np.float64))


def _send_request(conn: Connection, request: CommunityRequest) -> None:
    header = {name: None for name, _ in _ARRAYS}
    conn.send(dataclasses.replace(request, **header))  # type: ignore[arg-type]
    for name, dtype in _ARRAYS:
        conn.send_bytes(np.ascontiguousarray(getattr(request, name), dtype=dtype))


def _receive_request(conn: Connection) -> CommunityRequest | None:
    header = conn.recv()
    if header is None:
        return None
    arrays = {name: np.frombuffer(conn.recv_bytes(), dtype=dtype) for name, dtype in _ARRAYS}
    return dataclasses.replace(header, **arrays)


def serve(fd: int) -> None:
    """The child's main loop: answer requests on socket ``fd`` until the parent closes it.

    A parent that dies closes its end too, so the child never outlives it for long.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; EOF ends us
    try:
        os.nice(5)  # background work: on a busy machine the serving process goes first
    except OSError:
        pass
    conn = Connection(fd)
    if igraph_available():  # import now, so that the first request does not pay for it
        import igraph  # noqa: F401
    state = CommunityState()
    try:
        conn.send(("ready", os.getpid()))
    except OSError:
        return
    while True:
        try:
            request = _receive_request(conn)
        except (EOFError, OSError):
            return
        if request is None:
            return
        try:
            reply: tuple[str, Any] = ("ok", state.membership(request))
        except Exception as exc:  # report and keep serving: the parent falls back and starts over
            state = CommunityState()
            reply = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except OSError:
            return


class CommunityWorker:
    """A child process computing communities, so that igraph never holds the loop's GIL.

    A plain ``python -c`` subprocess talking pickles over a socket pair, rather than
    multiprocessing: spawn would re-import the caller's ``__main__``, fork is unsafe in a process
    with threads. Started on first use; stopped by ``close()``, when garbage-collected, or at
    interpreter exit.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._lineage: int | None = None  # what the child holds
        self._edges = 0
        self._ready = False
        self._finalizer: weakref.finalize | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, *, wait: bool = False) -> None:
        """Start the child if it is not running; with ``wait``, until it has imported what it needs."""
        if self.running:
            if wait:
                self._wait_ready()
            return
        self.close()
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # The child imports graphrag from where we did, installed or not.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        code = f"from graphrag.communities import serve; serve({theirs.fileno()})"
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env
            )
        except OSError as exc:
            ours.close()
            raise RuntimeError(f"community worker could not start: {exc!r}") from exc
        finally:
            theirs.close()
        self._process, self._conn = process, Connection(ours.detach())
        self._lineage, self._edges, self._ready = None, 0, False
        self._finalizer = weakref.finalize(self, _stop, process, self._conn)
        if wait:
            self._wait_ready()

    def _wait_ready(self) -> None:
        if self._ready:
            return
        assert self._conn is not None
        try:
            status, _ = self._conn.recv()
        except (EOFError, OSError) as exc:
            self.close()
            raise RuntimeError(f"community worker did not start: {exc!r}") from exc
        if status != "ready":
            self.close()
            raise RuntimeError(f"community worker did not start: {status}")
        self._ready = True

    def membership(
        self,
        backend: Literal["igraph", "networkx"],
        lineage: int,
        node_count: int,
        src: np.ndarray,
        dst: np.ndarray,
        weight: np.ndarray,
    ) -> np.ndarray:
        """Communities of the whole graph; sends the child only the edges it does not hold yet."""
        self.start(wait=True)
        assert self._conn is not None
        continues = lineage == self._lineage and src.shape[0] >= self._edges
        start = self._edges if continues else 0
        request = CommunityRequest(backend, lineage, node_count, start, src[start:], dst[start:], weight)
        try:
            _send_request(self._conn, request)
            status, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            self.close()
            raise RuntimeError(f"community worker died: {exc!r}") from exc
        if status != "ok":
            self._lineage, self._edges = None, 0
            raise RuntimeError(f"community worker failed: {value}")
        self._lineage, self._edges = lineage, int(src.shape[0])
        return value

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._finalizer = None
        self._process, self._conn = None, None
        self._lineage, self._edges, self._ready = None, 0, False


def _stop(process: subprocess.Popen[bytes], conn: Connection) -> None:
    try:
        conn.send(None)
    except (OSError, ValueError):
        pass
    conn.close()
    try:
        process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=2)
