"""The serving engine: queue -> request policy -> operator policy -> lanes -> completions.

There is no scheduler thread. A scheduling step runs under one lock in whichever thread
brought news: `submit` (a new query), a lane (a finished task) or the timer (a merge delay
expired). A step asks the request policy for batches, gives them to the operator policy, and
issues the tasks it returns to lanes. Lanes do the tensor work (gather rows, run the model or
some operators, scatter scores) outside the lock. Futures are resolved outside the lock too.

    with Engine(load_model("rmc1"), preset("dynamic")) as eng:
        scores = eng.submit(Query(0, "rmc1", n), inputs).result()   # [n, out_dim]
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from recsched.clock import Clock, WallClock
from recsched.config import EngineConfig
from recsched.lanes.base import Lane
from recsched.lanes.cpu import CpuLane
from recsched.metrics.trace import TraceRecorder
from recsched.models.base import Inputs, ModelAdapter, concat_rows, slice_rows, validate_inputs
from recsched.sched.core import SchedulerCore
from recsched.sched.operator import Cost, OperatorPolicy, make_operator_policy
from recsched.sched.request import RequestPolicy
from recsched.types import Batch, LaneKind, LaneResult, Query, QueryResult, Task

SWITCH_INTERVAL_S = 0.0005


class EngineError(RuntimeError):
    """Base of the errors a query's future can fail with."""


class QueueFull(EngineError):
    """Rejected at once: the engine holds `queue_capacity` unfinished queries."""


class EngineClosed(EngineError):
    """Rejected: the engine is shutting down or stopped."""


class QueryFailed(EngineError):
    """The work for this query failed on a lane; the message carries the lane's error."""


@dataclass
class _QueryState:
    query: Query
    inputs: Inputs
    future: Future
    outs: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    error: str | None = None


@dataclass
class _BatchState:
    batch: Batch
    sources: list[Inputs]
    env: dict | None = None
    output: torch.Tensor | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def offload_refused() -> str | None:
    """Why the command line's `--offload-threshold` is refused here (no CUDA device), or
    None where one exists."""
    if cuda_available():
        return None
    return (
        "--offload-threshold needs a CUDA device (torch.cuda.is_available() is False on this "
        "machine); leave it unset to serve on CPU lanes"
    )


# What `Engine.reconfigure` may change while serving (the request level).
RETUNABLE = ("request", "batch_size", "merge_delay_ms")


class Engine:
    """Serves one model under one `EngineConfig`. Thread-safe `submit`; a context manager."""

    def __init__(
        self,
        adapter: ModelAdapter,
        config: EngineConfig | None = None,
        *,
        clock: Clock | None = None,
        cost: Cost | None = None,
        graph=None,
        validate: bool = True,
        on_complete: Callable[[QueryResult], None] | None = None,
        trace: TraceRecorder | None = None,
    ) -> None:
        self.adapter = adapter
        self.config = config = config or EngineConfig()
        self.clock = clock or WallClock()
        self.validate = validate
        self.on_complete = on_complete
        self.trace = trace
        if config.offload_threshold is not None and not cuda_available():
            raise ValueError(
                "offload_threshold needs a CUDA device, and torch.cuda.is_available() is False "
                "on this machine; leave the threshold unset to serve on CPU lanes"
            )
        self.forward = adapter.runner(config.compiled)  # compiled here, not in a lane
        # a merged batch's concatenation and forward in one compiled call (one GIL crossing)
        self.forward_parts = adapter.parts_runner(config.compiled)
        self.graph = graph
        if config.operator != "sequential" and graph is None:
            from recsched.graph import build_graph
            from recsched.sched.opstream import resolve_granularity

            # `auto` is chosen from a profile (Setup.resolve); without one, the measured default
            self.graph = build_graph(adapter, resolve_granularity(config)[0].granularity)
        kinds: list[LaneKind] = ["cpu"] * config.lanes
        if config.offload_threshold is not None:
            kinds += ["accel"] * max(1, config.accel_lanes)
            if config.operator != "sequential":
                raise ValueError(
                    "accelerator lanes run whole-model tasks only: use the sequential operator "
                    "policy with an offload threshold (operator-level accel lanes are simulated)"
                )
            self._accel_forward = self._on_device(adapter)
        self.lanes: list[Lane] = [self._make_lane(i, k) for i, k in enumerate(kinds)]
        request_policy = RequestPolicy(
            config.request, config.batch_size, config.merge_delay_ms / 1e3, config.offload_threshold
        )
        operator_policy: OperatorPolicy = make_operator_policy(
            config.operator,
            kinds,
            cost,
            self.graph.info if self.graph is not None else None,
            order=config.order,
            **config.opstream,
        )
        self.core = SchedulerCore(request_policy, operator_policy)
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._queries: dict[int, _QueryState] = {}
        self._batches: dict[int, _BatchState] = {}
        self._wake_at: float | None = None
        self._open = False
        self._stopped = False
        self._aborted = False
        self.submitted = 0
        self.rejected = 0
        self.completed = 0
        self.failed = 0
        self._timer = threading.Thread(target=self._timer_loop, name="recsched-timer", daemon=True)
        self.started_s: float | None = None

    # -- accelerator ---------------------------------------------------------------------
    accel_device: torch.device | None = None  # set by `_on_device`

    def _on_device(self, adapter: ModelAdapter) -> Callable[[Inputs], torch.Tensor]:
        """A copy of the model on the accelerator (CUDA; UNTESTED on a GPU, see README): its
        forward takes CPU inputs, copies them to the device, and returns a device tensor
        that `_scatter` copies back once the lane has reported the task complete."""
        self.accel_device = device = self._accel_device()
        module = copy.deepcopy(adapter.module).to(device).eval()

        def forward(x: Inputs) -> torch.Tensor:
            return module({k: v.to(device, non_blocking=True) for k, v in x.items()})

        return forward

    def _accel_device(self) -> torch.device:  # tests substitute a CPU stand-in
        return torch.device("cuda", torch.cuda.current_device())

    # -- lifecycle ---------------------------------------------------------------------
    def _make_lane(self, index: int, kind: LaneKind) -> Lane:
        if kind == "cpu":
            nice = self.config.lane_nice
            return CpuLane(
                index, self.config.threads_per_lane, self._on_lane_done, self.clock,
                nice=nice[index] if index < len(nice) else 0,
            )  # fmt: skip
        from recsched.lanes.cuda import CudaLane  # pragma: no cover - needs a GPU

        return CudaLane(index, self._on_lane_done, self.clock)  # pragma: no cover

    def start(self) -> Engine:
        assert not self._open and not self._stopped, "an engine starts once"
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            # Lanes are threads: a thread waiting for the GIL waits up to the switch interval
            # (5 ms by default). 0.5 ms cut rmc1's p95 at 85% load from 500 to 105 ms
            # (BENCHMARKS.md). Process-wide, and left in place after the engine stops.
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        for lane in self.lanes:
            lane.start()
        for lane in self.lanes:  # a priority asked for and not given is said, once
            if getattr(lane, "nice", 0) and lane.ready.wait(5.0) and lane.nice_error:
                warnings.warn(
                    f"lane {lane.index}: nice {lane.nice} not set ({lane.nice_error}); "
                    "it runs at the process's priority",
                    RuntimeWarning,
                    stacklevel=2,
                )
        self._open = True
        self.started_s = self.clock.now()
        self._timer.start()
        return self

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new queries; with `drain`, wait for every accepted query to finish."""
        with self._cv:
            self._open = False
            if drain:
                self._cv.wait_for(lambda: not self._queries, timeout)
            self._stopped = True
            self._cv.notify_all()
        for lane in self.lanes:
            lane.stop(timeout=5.0)
        self._timer.join(timeout=1.0)

    def abort(self, reason: str = "aborted") -> int:
        """Refuse new queries and fail every unfinished one at once (queued work is skipped).

        Returns how many queries were failed. Used by benchmarks that give up on a backlog.
        """
        done: list[_QueryState] = []
        with self._cv:
            self._open = False
            self._aborted = True
            for qid, qs in self._queries.items():
                qs.error = reason
                done.append(qs)
                self.core.drop(qid)
            self._queries.clear()
            self._cv.notify_all()
        self._resolve(done, self.clock.now())
        return len(done)

    def replace_lane(self, index: int, reason: str) -> int:
        """Replace a crashed or hung lane by a fresh one; fail the tasks the old one held.

        Hook for the server's lane watchdog (recsched.server.health). The old lane's
        unreported tasks are reported as failures, so their queries' futures fail with
        `QueryFailed` naming `reason`; the scheduler sees the lane free again. Returns how
        many tasks failed.
        """
        old = self.lanes[index]
        new = self._make_lane(index, old.kind)
        new.stats = old.stats
        new.start()
        self.lanes[index] = new
        tasks = old.abandon(new)  # type: ignore[attr-defined]
        now = self.clock.now()
        for t in tasks:
            self._on_lane_done(LaneResult(t.tid, t.bid, index, now, now, f"lane {index} {reason}"))
        return len(tasks)

    def reconfigure(self, config: EngineConfig) -> None:
        """Switch the request-level knobs (`RETUNABLE`) while serving: what the online
        retuner moves. Queries already cut into batches keep their batches; the merge buffer
        is re-cut under the new batch size. Other fields (lanes, operator policy) need a new
        engine: a ValueError says which."""
        fixed = [
            f.name
            for f in dataclasses.fields(EngineConfig)
            if f.name not in RETUNABLE and getattr(config, f.name) != getattr(self.config, f.name)
        ]
        if fixed:
            raise ValueError(f"only {RETUNABLE} change while serving; {fixed} need a restart")
        with self._lock:
            pol = self.core.request
            pol.mode = "dynamic" if config.request == "tuned" else config.request
            pol.batch_size = config.batch_size
            pol.merge_delay_s = config.merge_delay_ms / 1e3
            self.config = config
            issue = self._step_locked()
        self._issue(issue)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close(drain=True)

    # -- the API -------------------------------------------------------------------------
    def submit(self, query: Query, inputs: Inputs) -> Future:
        """Accept a query; its future yields scores `[n_items, out_dim]` in item order.

        Never blocks on a full queue: the future fails at once with `QueueFull`.
        """
        fut: Future = Future()
        if self.validate:
            n = validate_inputs(self.adapter.inputs, inputs)
            if n != query.n_items:
                raise ValueError(f"query {query.qid} says {query.n_items} items, inputs hold {n}")
        with self._lock:
            if not self._open:
                fut.set_exception(EngineClosed("the engine is not accepting queries"))
                self.rejected += 1
                return fut
            if len(self._queries) >= self.config.queue_capacity:
                self.rejected += 1
                fut.set_exception(QueueFull(f"{len(self._queries)} queries pending; rejected"))
                return fut
            if query.qid in self._queries:
                raise ValueError(f"query id {query.qid} is already in flight")
            self._queries[query.qid] = _QueryState(query, inputs, fut)
            self.submitted += 1
            self.core.admit(query, self.clock.now())
            issue = self._step_locked()
        self._issue(issue)
        return fut

    def pending(self) -> int:
        with self._lock:
            return len(self._queries)

    # -- scheduling ------------------------------------------------------------------------
    def _step_locked(self) -> list[tuple[Task, _BatchState]]:
        """One scheduling step; returns the tasks to hand to lanes once the lock is dropped."""
        if self._aborted:
            return []
        out = self.core.step(self.clock.now())
        qs = self._queries
        for b in out.batches:
            srcs = []
            for p in b.parts:
                q = qs[p.qid]
                whole = p.start == 0 and p.stop == q.query.n_items
                srcs.append(q.inputs if whole else slice_rows(q.inputs, p.start, p.stop))
            self._batches[b.bid] = _BatchState(b, srcs)
        if out.wake_at != self._wake_at:
            # Wake the timer only to move its deadline earlier: woken late (the deadline moved
            # later or went away) it just finds nothing due and sleeps again. A thread
            # wake-up costs tens of microseconds on a VM; most steps move it later.
            earlier = out.wake_at is not None and (
                self._wake_at is None or out.wake_at < self._wake_at
            )
            self._wake_at = out.wake_at
            if earlier:
                self._cv.notify_all()
        return [(t, self._batches[t.bid]) for t in out.tasks]

    def _issue(self, issue: list[tuple[Task, _BatchState]]) -> None:
        for task, bs in issue:
            self.lanes[task.lane].submit(task, self._work(task, bs))

    def _timer_loop(self) -> None:
        with self._cv:
            while not self._stopped:
                wake = self._wake_at
                now = self.clock.now()
                if wake is None or wake > now:
                    self._cv.wait(None if wake is None else wake - now)
                    continue
                self._wake_at = None
                issue = self._step_locked()
                if issue:
                    self._cv.release()
                    try:
                        self._issue(issue)
                    finally:
                        self._cv.acquire()

    # -- lane side ---------------------------------------------------------------------------
    def _work(self, task: Task, bs: _BatchState) -> Callable[[], None]:
        """The closure a lane runs for a task: tensors in, tensors out, no bookkeeping."""
        if task.ops is None:
            if self.lanes[task.lane].kind == "accel":
                forward = self._accel_forward

                def run_accel() -> None:
                    if not self._aborted:
                        bs.output = forward(concat_rows(bs.sources))

                return run_accel
            forward_parts = self.forward_parts

            def run_whole() -> None:
                if not self._aborted:
                    bs.output = forward_parts(bs.sources)

            return run_whole
        graph = self.graph

        def run_ops() -> None:
            if self._aborted:
                return
            with bs.lock:
                if bs.env is None:
                    bs.env = graph.new_env(concat_rows(bs.sources))
            graph.run_ops(bs.env, task.ops, task.rows)

        return run_ops

    def _on_lane_done(self, result: LaneResult) -> None:
        done: list[_QueryState] = []
        with self._lock:
            if self.trace is not None:
                self._record(result)
            fin = self.core.complete(result, result.end_s)
            for b in fin.batches:
                bs = self._batches.pop(b.bid)
                ok = result.error is None and not self._aborted
                if ok and bs.output is None and bs.env is not None:
                    bs.output = self.graph.output(bs.env)
                if ok:
                    self._scatter(bs)
            for qid, error in fin.queries:
                qs = self._queries.pop(qid, None)
                if qs is not None:
                    qs.error = error
                    done.append(qs)
            issue = self._step_locked()
            if not self._queries:
                self._cv.notify_all()
        self._issue(issue)
        self._resolve(done, result.end_s)

    def _record(self, result: LaneResult) -> None:
        """A lane trace event for this task (Chrome trace format, recsched.metrics.trace)."""
        bs = self._batches.get(result.bid)
        task_ops = self.core.operator.task_ops(result.tid) if bs is not None else None
        name = (
            "model" if task_ops is None else "+".join(self.graph.info.ops[i].name for i in task_ops)
        )
        cls = None
        if bs is not None and bs.batch.parts:
            qs = self._queries.get(bs.batch.parts[0].qid)
            cls = qs.query.cls if qs is not None else None
        size = bs.batch.size if bs is not None else 0
        self.trace.record(result.lane, name, result.bid, cls, result.start_s, result.end_s,
                          items=size, error=result.error)  # fmt: skip

    def _scatter(self, bs: _BatchState) -> None:
        """Hand each part of a finished batch's output to its query (views, no copy)."""
        assert bs.output is not None and bs.output.shape[0] == bs.batch.size, "output rows"
        if bs.output.device.type != "cpu":  # the lane reported it: the kernels have finished
            bs.output = bs.output.to("cpu")
        offset = 0
        for p in bs.batch.parts:
            qs = self._queries.get(p.qid)
            if qs is not None:
                qs.outs.append((p.start, bs.output[offset : offset + p.size]))
            offset += p.size

    def _resolve(self, done: list[_QueryState], now: float) -> None:
        """Record each finished query (`on_complete`), then resolve its future."""
        for qs in done:
            q = qs.query
            if self.on_complete is not None:
                self.on_complete(QueryResult(q.qid, q.cls, q.n_items, q.arrival_s, now, qs.error))
            if qs.error is not None:
                self.failed += 1
                qs.future.set_exception(QueryFailed(f"query {q.qid}: {qs.error}"))
            else:
                outs = sorted(qs.outs, key=lambda o: o[0])
                scores = outs[0][1] if len(outs) == 1 else torch.cat([o for _, o in outs])
                assert scores.shape[0] == q.n_items, "every item scored exactly once"
                self.completed += 1
                qs.future.set_result(scores)

    # -- reporting ------------------------------------------------------------------------
    def lane_utilization(self, since: float | None = None) -> list[float]:
        """Busy fraction of each lane since `since` (default: engine start)."""
        t0 = self.started_s if since is None else since
        span = max(1e-9, self.clock.now() - (t0 or 0.0))
        return [min(1.0, lane.stats.busy_s / span) for lane in self.lanes]

    def stats(self) -> dict:
        return {
            "submitted": self.submitted,
            "completed": self.completed,
            "rejected": self.rejected,
            "failed": self.failed,
            "pending": self.pending(),
            "lanes": [
                {
                    "lane": s.lane,
                    "kind": s.kind,
                    "busy_s": s.busy_s,
                    "cpu_s": s.cpu_s,
                    "tasks": s.tasks,
                }
                for s in (lane.stats for lane in self.lanes)
            ],
        }
