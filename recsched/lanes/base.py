"""The Lane protocol: a place where work runs (a CPU worker thread, a CUDA stream, or a
simulated lane) and reports `LaneResult`s with measured start and end times.

A lane runs one task at a time, in the order given. The engine hands it a closure (`work`);
the lane knows nothing of models or policies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from recsched.types import LaneKind, LaneResult, LaneStats, Task

Work = Callable[[], None]
OnDone = Callable[[LaneResult], None]


class LaneError(RuntimeError):
    """Work failed on a lane; the message says which task and why."""


class Lane(Protocol):
    index: int
    kind: LaneKind
    stats: LaneStats

    def start(self) -> None: ...

    def submit(self, task: Task, work: Work) -> None:
        """Queue `work` for `task`; `on_done` is called (from the lane) when it ends."""
        ...

    def stop(self, timeout: float | None = None) -> None:
        """Finish queued work, then stop."""
        ...

    def alive(self) -> bool: ...
