"""The machine's CPU time by state over a run: busy, idle and steal (Linux `/proc/stat`).

Why: on a virtual machine the hypervisor can take CPU time from the guest (`steal`), and a
run that lost 10% of its CPU that way reads slower for reasons that are not the server's.
Benchmarks record the shares next to their latencies so such runs can be told apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STATES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_ticks(path: str = "/proc/stat") -> list[int] | None:
    """All CPUs' cumulative ticks by state (`STATES` order); None where `/proc/stat` is not
    there (not Linux)."""
    try:
        with open(path) as f:
            return [int(v) for v in f.readline().split()[1 : 1 + len(STATES)]]
    except (OSError, ValueError):
        return None


def machine_shares(t0: list[int] | None, t1: list[int] | None) -> dict[str, float] | None:
    """Share of all CPUs' time between two `machine_ticks` readings: busy (user, nice,
    system, irq, softirq), idle (with iowait) and steal (taken by the hypervisor)."""
    if t0 is None or t1 is None:
        return None
    d = dict(zip(STATES, (b - a for a, b in zip(t0, t1, strict=True)), strict=True))
    total = sum(d.values())
    if total <= 0:
        return None
    busy = d["user"] + d["nice"] + d["system"] + d["irq"] + d["softirq"]
    return {
        "busy": busy / total,
        "idle": (d["idle"] + d["iowait"]) / total,
        "steal": d["steal"] / total,
    }


def run_share(result: Mapping[str, Any], state: str) -> float | None:
    """A result's machine share of `state` ("busy", "idle" or "steal") over its run, from its
    `machine_cpu` (`machine_shares`); None where it was not recorded."""
    return (result.get("machine_cpu") or {}).get(state)
