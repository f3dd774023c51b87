"""Lane traces as Chrome trace events: what ran on each lane, and when.

Both the real engine and the simulator write the same format, so Perfetto or
chrome://tracing shows lanes as timelines (one process per server, one thread per lane):

    {"traceEvents": [{"name": "whole", "ph": "X", "ts": 12.0, "dur": 840.5,
                      "pid": 0, "tid": 1, "args": {"batch": 3, "cls": "high"}}, ...]}

`ts` and `dur` are microseconds from the recorder's origin (the first recorded start
unless given). Recording is thread-safe (lanes record from their own threads) and bounded
by `max_events`, so a long run cannot exhaust memory; `dropped` counts what was left out.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DEFAULT_MAX_EVENTS = 1_000_000


class TraceRecorder:
    """Collects complete ("X") events for the lanes of one process (`pid`, e.g. a server)."""

    def __init__(
        self,
        pid: int = 0,
        process_name: str | None = None,
        origin_s: float | None = None,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> None:
        assert max_events >= 0
        self.pid = pid
        self.process_name = process_name
        self.origin_s = origin_s
        self.max_events = max_events
        self.dropped = 0
        self._rows: list[tuple] = []
        self._lane_names: dict[int, str] = {}
        self._lock = threading.Lock()

    def name_lane(self, lane: int, name: str) -> None:
        """Label a lane (a thread row in the viewer), e.g. "cpu 0" or "accel 2"."""
        self._lane_names[lane] = name

    def record(
        self,
        lane: int,
        name: str,
        bid: int,
        cls: str | None,
        start_s: float,
        end_s: float,
        **args: Any,
    ) -> None:
        """One operator (or whole model) run of batch `bid` on `lane` from start to end (s)."""
        assert end_s >= start_s, "an event ends after it starts"
        with self._lock:
            if len(self._rows) >= self.max_events:
                self.dropped += 1
                return
            if self.origin_s is None:
                self.origin_s = start_s
            self._rows.append((lane, name, bid, cls, start_s, end_s, args or None))

    def __len__(self) -> int:
        return len(self._rows)

    def events(self) -> list[dict[str, Any]]:
        """The Chrome trace events: metadata (names) first, then one "X" event per record."""
        with self._lock:
            rows = list(self._rows)
        t0 = self.origin_s or 0.0
        out: list[dict[str, Any]] = []
        if self.process_name is not None:
            out.append(_meta("process_name", self.pid, 0, self.process_name))
        for lane, lname in sorted(self._lane_names.items()):
            out.append(_meta("thread_name", self.pid, lane, lname))
        for lane, name, bid, cls, start, end, extra in rows:
            args: dict[str, Any] = {"batch": bid, "cls": cls}
            if extra:
                args.update(extra)
            out.append(
                {
                    "name": name,
                    "ph": "X",
                    "ts": (start - t0) * 1e6,
                    "dur": (end - start) * 1e6,
                    "pid": self.pid,
                    "tid": lane,
                    "args": args,
                }
            )
        return out

    def write(self, path: str | Path) -> None:
        """Write this recorder's events as a Chrome trace JSON file."""
        write_trace(path, [self])


def _meta(kind: str, pid: int, tid: int, name: str) -> dict[str, Any]:
    return {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}


def write_trace(path: str | Path, recorders: Iterable[TraceRecorder]) -> int:
    """Write the events of several recorders (e.g. one per server) into one file.

    The recorders are assumed to share one clock: all are put on one time axis whose zero
    is the earliest origin among them. Returns the number of "X" events written.
    """
    recs = list(recorders)
    origins = [r.origin_s for r in recs if r.origin_s is not None]
    t0 = min(origins) if origins else 0.0
    events: list[dict[str, Any]] = []
    for r in recs:
        saved = r.origin_s
        r.origin_s = t0
        try:
            events.extend(r.events())
        finally:
            r.origin_s = saved
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"traceEvents": events, "displayTimeUnit": "ms"}
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return sum(1 for e in events if e["ph"] == "X")
