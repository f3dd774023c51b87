"""Online retuning on a query-size shift: a live engine with and without the retuner's regimes.

Writes a trace (Poisson arrivals) of three phases: large queries, then small ones at a rate
the large queries' configuration cannot hold, then large ones again; each phase's queries
carry their phase's class (`large` or `small`), so `recsched bench` reports each phase's tail
apart. Then runs the same trace three times through `recsched bench`, from the same start
configuration: without retuning, with `--retune` (local steps when the tail breaches the
SLA), and with `--retune-sizes` (the knobs tuned for each size mix, switched to when the
served queries' median size moves; `recsched.bench.online.size_regimes`).

    python benchmarks/retune_size_shift.py --model rmc1 --sla-ms 20 --json F

The regimes' tuned configurations come from the tuner's cache (tuned on a miss, before the
run: `recsched tune MODEL --sla-ms X --sizes SPEC` caches the same ones). Not a test:
timings, a few minutes on this machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from recsched.workload.sizes import parse_sizes


def write_trace(path: Path, phases: list[tuple[str, str, float, float]], seed: int) -> int:
    """Phases of (class, size spec, qps, seconds) as a `time_s,size,class` CSV; returns rows."""
    rng = np.random.default_rng(seed)
    rows, t0 = [], 0.0
    for name, spec, qps, seconds in phases:
        gaps = rng.exponential(1.0 / qps, size=int(qps * seconds * 1.5) + 10)
        t = t0 + np.cumsum(gaps)
        t = t[t < t0 + seconds]
        sizes = parse_sizes(spec).sample(len(t), rng)
        rows += [(float(a), int(b), name) for a, b in zip(t, sizes, strict=True)]
        t0 += seconds
    with path.open("w") as f:
        f.write(f"# duration_s={t0}\ntime_s,size,class\n")
        f.writelines(f"{a:.6f},{b},{c}\n" for a, b, c in rows)
    return len(rows)


def per_second(r: dict, phase_s: float, phases: int) -> list[tuple[float, float]]:
    """Per phase: the median and the worst of its seconds' p95 (of the phase's own class),
    from the run's `timeline` (per class, per second of scheduled arrival)."""
    rows = [row for rows in r["timeline"].values() for row in rows if row[1] > 0]
    out = []
    for i in range(phases):
        p = [row[2] for row in rows if i * phase_s <= row[0] < (i + 1) * phase_s]
        p = [x for x in p if x == x]
        out.append((float(np.median(p)), float(max(p))) if p else (float("nan"),) * 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rmc1")
    ap.add_argument("--sla-ms", type=float, default=20.0)
    ap.add_argument("--large", default="lognormal:400:0.3", help="size spec of the large phases")
    ap.add_argument("--small", default="fixed:8", help="size spec of the small phase")
    ap.add_argument("--large-qps", type=float, default=150.0)
    ap.add_argument("--small-qps", type=float, default=2500.0)
    ap.add_argument("--phase-s", type=float, default=10.0)
    ap.add_argument("--start", default="split:1024", help="request:B the runs start from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--order", default="fixed,retune,retune-sizes", help="the runs, in order")
    ap.add_argument("--json")
    a = ap.parse_args()
    phases = [
        ("large", a.large, a.large_qps, a.phase_s),
        ("small", a.small, a.small_qps, a.phase_s),
        ("large", a.large, a.large_qps, a.phase_s),
    ]
    request, batch = a.start.split(":")
    out: dict = {"argv": sys.argv[1:], "phases": phases, "runs": {}, "per_second": {}}
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "size_shift.csv"
        n = write_trace(trace, phases, a.seed)
        seconds = 3 * a.phase_s
        base = [
            "recsched", "bench", a.model, "--preset", request, "--batch-size", batch,
            "--arrivals", f"trace:{trace}", "--qps", f"{n / seconds:.6f}", "--duration",
            f"{seconds:g}", "--sla-ms", f"{a.sla_ms:g}", "--classes", "large:0.5:1,small:0.5:1",
            "--seed", str(a.seed),
        ]  # fmt: skip
        variants = {
            "fixed": [],
            "retune": ["--retune"],
            "retune-sizes": ["--retune-sizes", f"{a.small},{a.large}"],
        }
        for name in a.order.split(","):
            extra = variants[name]
            path = Path(tmp) / f"{name}.json"
            cmd = [*base, *extra, "--json", str(path)]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            r = json.loads(path.read_text())
            out["runs"][name] = r
            print(f"{name}: " + "; ".join(
                f"{c} p95 {v['latency_ms']['p95']:.1f} ms, p99 {v['latency_ms']['p99']:.1f} ms "
                f"({v['queries']} queries, {v['errors']} errors)"
                for c, v in r["classes"].items()
            ))  # fmt: skip
            per_s = per_second(r, a.phase_s, len(phases))
            out["per_second"][name] = per_s
            print("  per-second p95 by phase (median / worst): " + "; ".join(
                f"{i + 1} {phases[i][0]} {m:.1f} / {w:.1f} ms" for i, (m, w) in enumerate(per_s)
            ))  # fmt: skip
            for sw in r.get("retune", {}).get("switches", []):
                print(
                    f"  {sw['t_s']:5.1f} s {sw['reason']}: {sw['request']} B={sw['batch_size']} "
                    f"merge {sw['merge_delay_ms']} ms"
                )
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
