"""What a request pays outside the servers: a front tier (HTTP proxy, ingress, RPC hops).

A real deployment does not hand queries to its servers at their arrival time. On Ray Serve a
request crosses Serve's HTTP proxy, the ingress replica and a handle call before an engine
sees it, and the answer crosses them back; on this 2-vCPU machine that costs 15-50 ms of
latency at idle, far more than rmc1's forward, and more for larger queries (their tensors
are copied at every hop). `FrontModel` puts it in front of a simulated cluster as two parts:

- **stages**: FIFO single-server queues in series (the proxy, the ingress), each with a
  service time per request of `fixed + per_item * items` (its CPU per request). Under load,
  requests queue here before the balancer sees them. Departures follow Lindley's recursion
  `d_i = max(d_{i-1}, t_i) + s_i`, in closed form with `S_i = s_0 + ... + s_i`:
  `d_i = S_i + max_{j<=i} (t_j - S_{j-1})`.
- **delay**: a pure latency per request outside any queue (RPC and network hops, the part
  of the idle round trip that is not the stages' service): `per_item * items` plus a draw
  from an empirical distribution given as quantile points (equally spaced probabilities
  0..1, linear in between), seeded. It is added to the query's latency after the cluster
  (where on the path it falls does not change latency; the servers' deadline-aware policies
  see the arrival at the balancer).

Calibrate with `from_idle`: round trips of queries that meet no queue (one at a time, of two
or more sizes) less the servers' own latency for them, less the stages' service; the
per-item delay is the least-squares slope over the sizes, the distribution the rest.
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
    """A front tier: FIFO stages, then a delay (module docstring). Times in ms."""

    delay_ms: tuple[float, ...] = ()  # quantile points, nondecreasing; () = no delay
    delay_ms_per_item: float = 0.0
    stages_ms: tuple[float, ...] = ()  # fixed service per request of each stage, in order
    stages_ms_per_item: tuple[float, ...] = ()  # () or one per stage

    def __post_init__(self) -> None:
        d = self.delay_ms
        assert all(x >= 0 for x in d), "delays are nonnegative"
        assert all(a <= b for a, b in zip(d, d[1:], strict=False)), "quantiles must not decrease"
        assert self.delay_ms_per_item >= 0, "the per-item delay is nonnegative"
        assert all(c >= 0 for c in self.stages_ms + self.stages_ms_per_item), "service >= 0"
        assert len(self.stages_ms_per_item) in (0, len(self.stages_ms)), "one per stage"

    # -- the two parts -------------------------------------------------------------------------
    def service_s(self, n_items: np.ndarray) -> list[np.ndarray]:
        """Each stage's service time per request (s) [N]."""
        n = np.asarray(n_items, dtype=np.float64)
        per = self.stages_ms_per_item or (0.0,) * len(self.stages_ms)
        return [(c + k * n) / 1e3 for c, k in zip(self.stages_ms, per, strict=True)]

    def departures(self, t_s: np.ndarray, n_items: np.ndarray) -> np.ndarray:
        """When each request leaves the last stage (s); `t_s` sorted arrival times [N]."""
        d = np.asarray(t_s, dtype=np.float64)
        for svc in self.service_s(n_items):
            if len(d) and svc.any():
                total = np.cumsum(svc)
                d = total + np.maximum.accumulate(d - (total - svc))
        return d

    def delays(self, n_items: np.ndarray, seed: int = 0) -> np.ndarray:
        """Seeded draws of the pure delay (s), one per request of `n_items` items [N]."""
        n = np.asarray(n_items, dtype=np.float64)
        out = n * (self.delay_ms_per_item / 1e3)
        if not self.delay_ms:
            return out
        pts = np.asarray(self.delay_ms, dtype=np.float64) / 1e3
        if len(pts) == 1:
            return out + pts[0]
        u = np.random.default_rng(np.random.SeedSequence([seed, 0xF407])).random(len(n))
        return out + np.interp(u, np.linspace(0.0, 1.0, len(pts)), pts)

    def extra_s(
        self, t_s: np.ndarray, n_items: np.ndarray, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(arrival at the balancer [N], latency to add per request [N]: stage waits and
        service, then the delay), both in seconds."""
        dep = self.departures(t_s, n_items)
        return dep, (dep - np.asarray(t_s, dtype=np.float64)) + self.delays(n_items, seed)

    # -- calibration and files -----------------------------------------------------------------
    @classmethod
    def from_idle(
        cls,
        round_trip_ms: Sequence[float],
        server_ms: float | Sequence[float],
        n_items: int | Sequence[int] = 1,
        stages_ms: Sequence[float] = (),
        stages_ms_per_item: Sequence[float] = (),
        points: int = DEFAULT_POINTS,
    ) -> FrontModel:
        """From round trips of requests that met no queue: what is left after the servers'
        latency (one figure, or one per request) and the stages' service is the delay; its
        slope in the items (least squares, at least 0; with one size, 0) is the per-item
        delay and the rest, clipped at 0, its distribution."""
        rt = np.asarray(round_trip_ms, dtype=np.float64)
        assert rt.size >= 1, "at least one round trip"
        own = np.broadcast_to(np.asarray(server_ms, dtype=np.float64), rt.shape)
        n = np.broadcast_to(np.asarray(n_items, dtype=np.float64), rt.shape)
        svc = sum(cls((), 0.0, tuple(stages_ms), tuple(stages_ms_per_item)).service_s(n))
        left = rt - own - np.asarray(svc) * 1e3
        slope = 0.0
        if np.ptp(n) > 0:
            slope = max(0.0, float(np.polyfit(n, left, 1)[0]))
        d = np.maximum(0.0, left - slope * n)
        q = np.quantile(d, np.linspace(0.0, 1.0, max(2, points)))
        return cls(
            tuple(float(x) for x in np.maximum.accumulate(q)), slope,
            tuple(map(float, stages_ms)), tuple(map(float, stages_ms_per_item)),
        )  # fmt: skip

    def scaled(self, factor: float) -> FrontModel:
        """Every time times `factor` (a machine slower by that much: the front's work shares
        the cores whose slowdown was measured)."""
        assert factor > 0, "a positive factor"
        return FrontModel(
            tuple(x * factor for x in self.delay_ms), self.delay_ms_per_item * factor,
            tuple(x * factor for x in self.stages_ms),
            tuple(x * factor for x in self.stages_ms_per_item),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FrontModel:
        known = {"delay_ms", "delay_ms_per_item", "stages_ms", "stages_ms_per_item"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown front model keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(
            tuple(map(float, d.get("delay_ms", ()))), float(d.get("delay_ms_per_item", 0.0)),
            tuple(map(float, d.get("stages_ms", ()))),
            tuple(map(float, d.get("stages_ms_per_item", ()))),
        )  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> FrontModel:
        """A JSON file with the fields of `to_dict` (or an object holding one under "front")."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read front model {path}: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"front model {path}: expected a JSON object")
        try:
            return cls.from_dict(data.get("front", data))
        except (TypeError, AssertionError) as e:
            raise ValueError(f"front model {path}: {e or 'invalid values'}") from e
