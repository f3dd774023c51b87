"""A cluster: N simulated servers (possibly of several types) behind a load balancer, fed a
workload's arrivals on one event loop.

Balancers (`BALANCERS`):
- `random`: a uniformly random server per query (seeded, drawn in bulk).
- `roundrobin`: servers in turn.
- `p2c`: power of two choices: two distinct random servers, the one with fewer
  outstanding queries (ties: the first drawn).
- `least`: the server with the least outstanding predicted work (its predicted drain time,
  so a fast server counts its work as less); ties go to the lowest index.

Arrivals stream past the event heap (`EventLoop.run_merged`: the heap never holds the
workload), are unboxed from numpy and balanced in chunks, and per-query outcomes go into
flat arrays, not objects, so runs of many millions of queries stay lean.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsched.metrics.trace import DEFAULT_MAX_EVENTS, TraceRecorder, write_trace
from recsched.sim import fastpath
from recsched.sim.events import EventLoop
from recsched.sim.server import ServerType, SimServer, TypeState
from recsched.types import Query
from recsched.workload import Workload

BALANCERS = ("random", "roundrobin", "p2c", "least")
_ALIASES = {
    "round-robin": "roundrobin",
    "rr": "roundrobin",
    "power-of-two": "p2c",
    "power-of-two-choices": "p2c",
    "least-work": "least",
    "least-outstanding": "least",
}
OK, REJECTED, FAILED = 0, 1, 2
_CHUNK = 1 << 16  # arrivals converted to Python numbers this many at a time


def balancer_name(name: str) -> str:
    """The canonical balancer name (`round-robin` -> `roundrobin`, ...); ValueError if unknown."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in BALANCERS:
        raise ValueError(f"unknown balancer {name!r}; one of {', '.join(BALANCERS)}")
    return key


@dataclass
class ClusterRun:
    """Per-query outcomes of a run (index = query index in the workload) and run figures.

    `done_s` is NaN for a query that never finished (rejected, or still running when the
    run stopped at `until`).
    """

    done_s: np.ndarray  # float64 [N]
    status: np.ndarray  # int8 [N]: OK, REJECTED or FAILED
    server: np.ndarray  # int32 [N]: the server each query was sent to
    end_s: float  # simulated time of the last event
    events: int
    wall_s: float


class Cluster:
    """Servers of the given types (one `ServerType` per server) behind a balancer."""

    def __init__(
        self,
        types: Sequence[ServerType],
        balancer: str = "random",
        seed: int = 0,
        trace: bool = False,
        trace_max_events: int = DEFAULT_MAX_EVENTS,
        on_decision: Callable[[float, str, int, Any], None] | None = None,
        fast: bool | None = None,
    ) -> None:
        assert len(types) >= 1, "a cluster has at least one server"
        self.balancer = balancer_name(balancer)
        self.seed = seed
        self.on_decision = on_decision
        self.fast = fast  # None: the exact fast path where it applies; False: never
        self.used_fast_path = False
        self.loop = EventLoop()
        self.load = np.zeros(len(types))  # predicted drain time per server (`least`)
        self.recorders: list[TraceRecorder] = []
        per_server = max(1, trace_max_events // len(types))
        self.servers: list[SimServer] = []
        states: dict[int, TypeState] = {}
        for i, st in enumerate(types):
            rec = None
            if trace:
                rec = TraceRecorder(i, f"server {i} ({st.name})", 0.0, per_server)
                self.recorders.append(rec)
            hook = None
            if on_decision is not None:
                hook = _server_hook(on_decision, i)
            state = states.get(id(st))
            if state is None:
                state = states[id(st)] = TypeState(st)
            s = SimServer(i, st, self.loop, self._on_query, rec, hook, state)
            if self.balancer == "least":
                s.load_slot = (self.load, i)
            self.servers.append(s)
        self._done = array("d")
        self._status = array("b")

    # -- running -------------------------------------------------------------------------------
    def run(
        self,
        workload: Workload,
        model: str,
        sla_ms: float | None = None,
        progress: Callable[[float, int], None] | None = None,
        until: float = math.inf,
    ) -> ClusterRun:
        """Feed every arrival of `workload` and run until all work is done or the clock
        passes `until` (what is left then never finishes: NaN done time).

        Whole+sequential clusters run by `recsched.sim.fastpath` (the same results, exactly)
        unless `fast=False` was given; `fast=True` raises if it cannot apply."""
        if self.fast is not False:
            reason = fastpath.why_not(self)
            if reason is None:
                t0 = time.perf_counter()
                fr = fastpath.run(self, workload, until, progress)
                if fr is not None:
                    fr.wall_s = time.perf_counter() - t0
                    self.used_fast_path = True
                    return fr
                reason = "some task could take no time"
            if self.fast:
                raise ValueError(f"the fast path does not apply: {reason}")
        n = len(workload)
        self._done = array("d", [math.nan]) * n
        self._status = array("b", [OK]) * n
        self._server = array("i", [0]) * n
        self._w = workload
        self._model = model
        self._cls = _class_table(workload, sla_ms)
        self._chooser = self._make_chooser(n)
        self._base = -_CHUNK
        self._progress = progress
        self._total = n
        t0 = time.perf_counter()
        events = self.loop.run_merged(self._chunks(), self._arrive, until)
        wall = time.perf_counter() - t0
        end = self.loop.now() if not len(self.loop) else until  # stopped early: at `until`
        return ClusterRun(
            np.frombuffer(self._done, dtype=np.float64).copy(),
            np.frombuffer(self._status, dtype=np.int8).copy(),
            np.frombuffer(self._server, dtype=np.int32).copy(),
            end,
            events,
            wall,
        )

    def _chunks(self) -> Iterator[list[float]]:
        """Arrival times in chunks; each chunk's sizes, classes and servers made ready first
        (numbers unboxed from numpy in bulk, never the whole workload at once)."""
        w = self._w
        for i in range(0, self._total, _CHUNK):
            j = i + _CHUNK
            self._base = i
            self._t = w.t_s[i:j].tolist()
            self._n = w.n_items[i:j].tolist()
            self._c = w.cls[i:j].tolist()
            self._pick = self._chooser(i, j)
            if self._progress is not None and i:
                self._progress(self.loop.now(), i)
            yield self._t

    def _arrive(self, i: int) -> None:
        k = i - self._base
        t = self._t[k]
        name, value, sla_s = self._cls[self._c[k]]
        q = Query(i, self._model, self._n[k], name, value, t, t + sla_s)
        s = self._pick[k]
        if s < 0:
            s = self._choose_now(k)
        self._server[i] = s
        if not self.servers[s].submit(q):
            self._status[i] = REJECTED

    def _on_query(self, qid: int, done_s: float, error: str | None) -> None:
        self._done[qid] = done_s
        if error is not None:
            self._status[qid] = FAILED

    # -- balancing ---------------------------------------------------------------------------
    def _make_chooser(self, n: int) -> Callable[[int, int], list[int]]:
        """A function giving the server of arrivals `[i, j)`, -1 where state decides."""
        m = len(self.servers)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5EED]))
        if self.balancer == "random":  # drawn chunk by chunk, in order: seeded, lean
            return lambda i, j: rng.integers(0, m, min(j, n) - i).tolist()
        if self.balancer == "roundrobin":
            return lambda i, j: (np.arange(i, min(j, n)) % m).tolist()
        if self.balancer == "p2c":

            def pairs(i: int, j: int) -> list[int]:
                a = rng.integers(0, m, min(j, n) - i)
                b = (a + rng.integers(1, m, len(a))) % m if m > 1 else a
                self._pa, self._pb = a.tolist(), b.tolist()
                return [-1] * len(a)

            return pairs
        return lambda i, j: [-1] * (min(j, n) - i)

    def _choose_now(self, k: int) -> int:
        """The server for the `k`-th arrival of the current chunk, from the servers' state."""
        if self.balancer == "least":
            return int(self.load.argmin())
        a, b = self._pa[k], self._pb[k]
        sv = self.servers
        return a if sv[a].outstanding() <= sv[b].outstanding() else b

    # -- results -----------------------------------------------------------------------------
    def write_trace(self, path: str) -> int:
        """Write the lanes' Chrome trace (one process per server); returns events written."""
        return write_trace(path, self.recorders)

    def trace_dropped(self) -> int:
        return sum(r.dropped for r in self.recorders)


def _server_hook(fn: Callable[[float, str, int, Any], None], server: int):
    def hook(kind: str, t: float, payload: Any) -> None:
        fn(t, kind, server, payload)

    return hook


def _class_table(workload: Workload, sla_ms: float | None) -> list[tuple[str, float, float]]:
    """Per class index: (name, value, SLA in s or inf), as `Workload.query` sets deadlines."""
    out = []
    for c in workload.classes:
        sla = c.sla_ms if c.sla_ms is not None else sla_ms
        out.append((c.name, c.value, sla / 1000.0 if sla is not None else math.inf))
    return out
