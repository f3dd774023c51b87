"""The lane watchdog: find a lane that crashed or hangs, fail its work, replace it.

A CPU lane is a worker thread. It *crashed* when the thread is dead (an error escaped the
lane's own handling); it *hangs* when one task has run longer than `hang_s`. Either way the
engine's `replace_lane` starts a fresh lane at the same index, hands the old lane's unfinished
tasks back as failures (their requests get errors, not silence) and the engine goes on
serving. A hung thread cannot be killed in Python: it is abandoned, and whatever it reports
later is ignored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("recsched.server")


def lane_problem(lane: Any, now: float, hang_s: float) -> str | None:
    """Why `lane` needs replacing (`crashed`, `hung: ...`), or None if it is healthy."""
    if not lane.alive():
        return "crashed: its worker thread died"
    since = getattr(lane, "current_since", None)
    task = getattr(lane, "current", None)
    if since is not None and now - since > hang_s:
        tid = task.tid if task is not None else "?"
        return f"hung: task {tid} has run for {now - since:.1f} s (limit {hang_s:g} s)"
    return None


def check_engine(engine: Any, hang_s: float) -> list[tuple[int, str]]:
    """Replace every lane of `engine` with a problem; returns `(lane, why)` of those replaced."""
    replaced = []
    now = engine.clock.now()
    for lane in list(engine.lanes):
        why = lane_problem(lane, now, hang_s)
        if why is not None:
            failed = engine.replace_lane(lane.index, why)
            log.error("lane %d replaced (%s); %d task(s) failed", lane.index, why, failed)
            replaced.append((lane.index, why))
    return replaced


class LaneWatchdog:
    """A daemon thread checking the served engines every `interval_s`.

    `engines()` gives `{model: engine}` of the engines serving now (started, not closing).
    `on_replace(model, lane, why)` is told of each replacement (metrics, logs).
    """

    def __init__(
        self,
        engines: Callable[[], Mapping[str, Any]],
        hang_s: float = 30.0,
        interval_s: float = 0.2,
        on_replace: Callable[[str, int, str], None] | None = None,
    ) -> None:
        assert hang_s > 0 and interval_s > 0
        self.engines = engines
        self.hang_s = hang_s
        self.interval_s = interval_s
        self.on_replace = on_replace
        self.replacements = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recsched-watchdog", daemon=True)

    def check_once(self) -> list[tuple[str, int, str]]:
        out = []
        for model, eng in list(self.engines().items()):
            for lane, why in check_engine(eng, self.hang_s):
                out.append((model, lane, why))
                self.replacements += 1
                if self.on_replace is not None:
                    self.on_replace(model, lane, why)
        return out

    def start(self) -> LaneWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:  # the watchdog must outlive any one bad check
                log.exception("lane watchdog check failed")
