"""CPU lanes: one worker thread per lane, each with its own intra-op thread count.

Threads, not processes: torch releases the GIL inside operators, and a thread lane shares the
model's weights and hands tensors over without copies. `benchmarks/lanes_threads_vs_procs.py`
holds the measurement behind this choice (BENCHMARKS.md). `torch.set_num_threads` called in
a worker thread sets that thread's OpenMP team size only, so lanes x threads_per_lane can be
sized to the cores without oversubscription.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback

import torch

from recsched.clock import Clock, WallClock
from recsched.lanes.base import OnDone, Work
from recsched.types import LaneKind, LaneResult, LaneStats, Task

_STOP = object()


class CpuLane:
    """A worker thread running submitted work in order and reporting each result."""

    kind: LaneKind = "cpu"

    def __init__(
        self,
        index: int,
        threads: int,
        on_done: OnDone,
        clock: Clock | None = None,
        nice: int = 0,
    ):
        assert threads >= 1
        self.index = index
        self.threads = threads
        self.nice = nice  # the thread's nice value (`EngineConfig.lane_nice`)
        self.nice_error: str | None = None  # why it could not be set, if it could not
        self.on_done = on_done
        self.clock = clock or WallClock()
        self.stats = LaneStats(index, "cpu")
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name=f"recsched-lane-{index}", daemon=True
        )
        self.current: Task | None = None
        self.current_since: float | None = None
        # Tasks submitted and not yet reported; `abandon` hands them back (lane watchdog).
        self._pending: dict[int, Task] = {}
        self._lock = threading.Lock()
        self._successor: CpuLane | None = None
        self.ready = threading.Event()  # set once the thread has its priority
        self.native_id: int | None = None  # the OS thread id, once running

    def start(self) -> None:
        self._thread.start()

    def submit(self, task: Task, work: Work) -> None:
        assert task.lane == self.index, "task given to the wrong lane"
        with self._lock:
            successor = self._successor
            if successor is None:
                self._pending[task.tid] = task
                self._q.put((task, work))
        if successor is not None:  # this lane was replaced: its successor runs the task
            successor.submit(task, work)

    def stop(self, timeout: float | None = None) -> None:
        self._q.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def abandon(self, successor: CpuLane) -> list[Task]:
        """Retire this lane (crashed or hung): later submits go to `successor`, whatever the
        old thread reports from now on is dropped, and the tasks it had not reported are
        returned so the engine can fail them.
        """
        with self._lock:
            self._successor = successor
            tasks = sorted(self._pending.values(), key=lambda t: t.tid)
            self._pending.clear()
        self._q.put(_STOP)
        return tasks

    def _run(self) -> None:
        torch.set_num_threads(self.threads)
        self.native_id = threading.get_native_id()
        if self.nice:
            try:  # Linux: a thread's id is a process id to setpriority
                os.setpriority(os.PRIO_PROCESS, self.native_id, self.nice)
            except (OSError, AttributeError) as exc:  # no privilege, or not Linux
                self.nice_error = f"{type(exc).__name__}: {exc}"
        self.ready.set()
        clock = self.clock
        # one inference-mode scope for the thread's life, not one per task (~4 us each)
        with torch.inference_mode():
            self._loop(clock)

    def _loop(self, clock: Clock) -> None:
        thread_time = time.thread_time  # ~1 us a call: the lane thread's own CPU
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            task, work = item
            start = clock.now()
            cpu0 = thread_time()
            self.current, self.current_since = task, start
            error = None
            try:
                work()
            except Exception as exc:  # reported to the engine, which fails the batch's queries
                error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            end = clock.now()
            cpu = thread_time() - cpu0
            self.current, self.current_since = None, None
            with self._lock:
                if self._pending.pop(task.tid, None) is None:
                    return  # abandoned meanwhile: the engine has already failed this task
            self.stats.busy_s += end - start
            self.stats.cpu_s += cpu
            self.stats.tasks += 1
            self.on_done(LaneResult(task.tid, task.bid, self.index, start, end, error))
