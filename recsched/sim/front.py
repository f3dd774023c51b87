"""What a request pays outside the servers: a front tier (HTTP proxy, ingress, RPC hops).

A real deployment does not hand queries to its servers at their arrival time. On Ray Serve a
request crosses Serve's HTTP proxy, the ingress replica and a handle call before an engine
sees it, and the answer crosses them back; on this 2-vCPU machine that costs 15-50 ms of
latency at idle, far more than rmc1's forward. `FrontModel` puts it in front of a simulated
cluster as two parts:

- **stages**: FIFO single-server queues in series (the proxy, the ingress), each with a
  service time per request (its CPU per request). Under load, requests queue here before
  the balancer sees them. Departures follow Lindley's recursion, in closed form:
  `d_i = max(d_{i-1}, t_i) + c = (i+1) c + max_{j<=i} (t_j - j c)`.
- **delay**: a pure latency per request outside any queue (RPC and network hops, the part
  of the idle round trip that is not the stages' service), drawn from an empirical
  distribution given as quantile points (equally spaced probabilities 0..1, linear in
  between), seeded. It is added to the query's latency after the cluster (where on the path
  it falls does not change latency; the servers' deadline-aware policies see the arrival at
  the balancer).

Calibrate with `from_idle`: round trips of queries that meet no queue (one at a time) less
the servers' own latency for them, less the stages' service.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_POINTS = 21  # quantile points kept by `from_idle` (every 5%)


@dataclass(frozen=True)
class FrontModel:
    """A front tier: FIFO `stages_ms` (service per request) then a `delay_ms` distribution."""

    delay_ms: tuple[float, ...] = ()  # quantile points, nondecreasing; () = no delay
    stages_ms: tuple[float, ...] = ()  # service per request of each FIFO stage, in order

    def __post_init__(self) -> None:
        d = self.delay_ms
        assert all(x >= 0 for x in d), "delays are nonnegative"
        assert all(a <= b for a, b in zip(d, d[1:], strict=False)), "quantiles must not decrease"
        assert all(c >= 0 for c in self.stages_ms), "service times are nonnegative"

    # -- the two parts -------------------------------------------------------------------------
    def departures(self, t_s: np.ndarray) -> np.ndarray:
        """When each request leaves the last stage (s); `t_s` sorted arrival times [N]."""
        d = np.asarray(t_s, dtype=np.float64)
        idx = np.arange(len(d), dtype=np.float64)
        for c_ms in self.stages_ms:
            c = c_ms / 1e3
            if c > 0 and len(d):
                d = (idx + 1) * c + np.maximum.accumulate(d - idx * c)
        return d

    def delays(self, n: int, seed: int = 0) -> np.ndarray:
        """`n` seeded draws of the pure delay (s)."""
        if not self.delay_ms:
            return np.zeros(n)
        pts = np.asarray(self.delay_ms, dtype=np.float64) / 1e3
        if len(pts) == 1:
            return np.full(n, pts[0])
        u = np.random.default_rng(np.random.SeedSequence([seed, 0xF407])).random(n)
        return np.interp(u, np.linspace(0.0, 1.0, len(pts)), pts)

    def extra_s(self, t_s: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(arrival at the balancer [N], latency to add per request [N]: stage waits and
        service, then the delay), both in seconds."""
        dep = self.departures(t_s)
        return dep, (dep - np.asarray(t_s, dtype=np.float64)) + self.delays(len(dep), seed)

    # -- calibration and files -----------------------------------------------------------------
    @classmethod
    def from_idle(
        cls,
        round_trip_ms: Sequence[float],
        server_ms: float | Sequence[float],
        stages_ms: Sequence[float] = (),
        points: int = DEFAULT_POINTS,
    ) -> FrontModel:
        """From round trips of requests that met no queue: delay = round trip - the servers'
        latency (one figure, or one per request) - the stages' service, clipped at 0."""
        rt = np.asarray(round_trip_ms, dtype=np.float64)
        assert rt.size >= 1, "at least one round trip"
        own = np.broadcast_to(np.asarray(server_ms, dtype=np.float64), rt.shape)
        d = np.maximum(0.0, rt - own - float(sum(stages_ms)))
        q = np.quantile(d, np.linspace(0.0, 1.0, max(2, points)))
        return cls(tuple(float(x) for x in np.maximum.accumulate(q)), tuple(map(float, stages_ms)))

    def to_dict(self) -> dict[str, Any]:
        return {"delay_ms": list(self.delay_ms), "stages_ms": list(self.stages_ms)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FrontModel:
        unknown = set(d) - {"delay_ms", "stages_ms"}
        if unknown:
            raise ValueError(f"unknown front model keys {sorted(unknown)}")
        delay = tuple(map(float, d.get("delay_ms", ())))
        return cls(delay, tuple(map(float, d.get("stages_ms", ()))))

    @classmethod
    def load(cls, path: str | Path) -> FrontModel:
        """A JSON file with `delay_ms` (quantile points) and/or `stages_ms`."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read front model {path}: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"front model {path}: expected a JSON object")
        return cls.from_dict(data.get("front", data))
