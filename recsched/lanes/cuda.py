"""CUDA lanes: one host thread driving one CUDA stream. UNTESTED ON A GPU.

No machine this was written on has a GPU: the thread, ordering and polling logic is tested on
CPU with a fake backend (tests/unit/test_opstream.py), the CUDA calls themselves never ran.

How it works. The lane thread takes (task, work) in order, records a start event, enqueues
the work on its stream (`work()` only *launches* kernels: it returns before they finish),
records an end event, and goes on to the next task. Completion is detected by polling the
oldest end event (`Event.query()`; a stream completes in order), and reported as a
`LaneResult` whose duration is the GPU-measured `elapsed_time` between the two events.

The stream has a priority (`torch.cuda.Stream(priority=...)`, lower is more urgent), so a lane
reserved for high-value work can be given a more urgent stream than the others.

Ordering and memory safety across streams, without per-edge events: the operator policies
issue a consumer only after its producers' `LaneResult`s, and this lane reports a task only
once its end event has completed. So every cross-stream edge is already satisfied, on the
GPU, when the consumer is launched (an event wait would be a no-op). Intermediate tensors live
in the engine's per-batch env, a per-request arena freed only after the batch's last task has
completed on the GPU, so the caching allocator cannot hand a block to another stream while a
kernel still reads it (what `record_stream` would otherwise guard). Row pieces of one
operator are never issued to accelerator lanes (`opstream` does not split accel batches):
their concatenation would read another stream's output before it completes.

The engine puts the model (a copy) and each batch's inputs on the device and copies the
scores back after the lane reports the task (`Engine._on_device`, whole-model tasks only).
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections import deque
from typing import Any

from recsched.clock import Clock, WallClock
from recsched.lanes.base import OnDone, Work
from recsched.types import LaneKind, LaneResult, LaneStats, Task

_STOP = object()
POLL_S = 50e-6  # how long the thread waits for new work while kernels are in flight


class TorchCuda:
    """The CUDA calls the lane makes, in one place (a fake stands in for tests)."""

    def __init__(self, device: Any = None) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("CudaLane needs a CUDA device; torch.cuda.is_available() is False")
        self.torch = torch
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if device is None else device
        )

    def stream(self, priority: int) -> Any:
        return self.torch.cuda.Stream(device=self.device, priority=priority)

    def event(self) -> Any:
        return self.torch.cuda.Event(enable_timing=True)

    def on_stream(self, stream: Any) -> Any:
        """Context manager: launches inside go to `stream`."""
        return self.torch.cuda.stream(stream)

    def inference(self) -> Any:
        return self.torch.inference_mode()


class CudaLane:
    """A host thread launching tasks on one CUDA stream and polling their completion."""

    kind: LaneKind = "accel"

    def __init__(
        self,
        index: int,
        on_done: OnDone,
        clock: Clock | None = None,
        priority: int = 0,
        device: Any = None,
        backend: Any = None,
    ) -> None:
        self.index = index
        self.on_done = on_done
        self.clock = clock or WallClock()
        self.cuda = backend if backend is not None else TorchCuda(device)
        self.stream = self.cuda.stream(priority)
        self.stats = LaneStats(index, "accel")
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._inflight: deque[tuple[Task, Any, Any, str | None]] = deque()
        self._thread = threading.Thread(
            target=self._run, name=f"recsched-cuda-{index}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def submit(self, task: Task, work: Work) -> None:
        assert task.lane == self.index, "task given to the wrong lane"
        self._q.put((task, work))

    def stop(self, timeout: float | None = None) -> None:
        """Finish (and report) everything submitted, then stop."""
        self._q.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the lane thread ---------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping or self._inflight:
            if not stopping:
                try:
                    item = self._q.get(timeout=POLL_S if self._inflight else None)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    stopping = True
                elif item is not None:
                    self._launch(*item)
            self._poll(block=stopping)

    def _launch(self, task: Task, work: Work) -> None:
        """Enqueue the task's kernels on the stream between two timing events."""
        start, end = self.cuda.event(), self.cuda.event()
        error = None
        with self.cuda.on_stream(self.stream), self.cuda.inference():
            start.record(self.stream)
            try:
                work()
            except Exception as exc:  # a launch error: reported when the task's turn comes
                error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            end.record(self.stream)
        self._inflight.append((task, start, end, error))

    def _poll(self, block: bool = False) -> None:
        """Report finished tasks, oldest first (a stream runs its work in order)."""
        while self._inflight:
            task, start, end, error = self._inflight[0]
            try:
                if block:
                    end.synchronize()
                elif not end.query():
                    return
                busy = start.elapsed_time(end) / 1e3  # ms -> s, measured on the GPU
            except Exception as exc:  # an asynchronous CUDA error surfaces here
                error = error or f"{type(exc).__name__}: {exc}"
                busy = 0.0
            self._inflight.popleft()
            now = self.clock.now()
            self.stats.busy_s += busy
            self.stats.tasks += 1
            self.on_done(LaneResult(task.tid, task.bid, self.index, now - busy, now, error))
