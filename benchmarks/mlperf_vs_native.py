"""Do recsched's numbers survive MLPerf LoadGen? Both drivers on the same model and load.

1. Server: recsched's own open-loop driver and LoadGen's Server scenario at the same target
   rate, SLA and size distribution, for each rate given: p50/p95/p99 and completed QPS side
   by side (LoadGen's figures from its own log), plus LoadGen's validity.
2. Offline: LoadGen's Offline throughput (items/s) against `recsched peak`.

    python benchmarks/mlperf_vs_native.py --model ncf --preset dynamic --qps 50,100 \\
        --duration 5 --sla-ms 50 --json mlperf_vs_native.json

Runs are short and few by default; the machine is shared. LoadGen's logs go to --log-dir.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from recsched.bench import calibrate
from recsched.bench.mlperf import MlperfSpec, mlperf_once
from recsched.bench.run import bench_once
from recsched.bench.setup import Setup
from recsched.metrics.report import write_json


def server_pair(s: Setup, cfg, name: str, qps: float, duration: float, log_dir: Path) -> dict:
    """The native and the LoadGen Server run at one target rate."""
    native = bench_once(
        s.adapter, cfg, s.load(qps, duration), preset=name, sla_ms=s.sla_ms,
        percentile=s.percentile, pool=s.pool(), **s.engine_extras(cfg),
    )  # fmt: skip
    spec = MlperfSpec(
        "server", qps=qps, duration_s=duration, sla_ms=s.sla_ms, percentile=s.percentile,
        min_query_count=max(1, min(100, int(qps * duration))), seed=s.seed,
        log_dir=log_dir / f"server-{qps:g}",
    )  # fmt: skip
    mlperf = mlperf_once(
        s.adapter, cfg, spec, preset=name, sizes=s.sizes, classes=s.classes, pool=s.pool(),
        **s.engine_extras(cfg),
    )  # fmt: skip
    return {"qps": qps, "native": native, "mlperf": mlperf}


def offline(s: Setup, cfg, name: str, duration: float, log_dir: Path) -> dict:
    """LoadGen Offline against `recsched peak` (items/s)."""
    peak = calibrate.peak(s.adapter)
    mean_items = max(1.0, _mean_items(s))
    expected_qps = peak["peak_items_per_s"] / mean_items
    spec = MlperfSpec(
        "offline", qps=expected_qps, duration_s=duration, min_query_count=1, seed=s.seed,
        log_dir=log_dir / "offline",
    )  # fmt: skip
    r = mlperf_once(
        s.adapter, cfg, spec, preset=name, sizes=s.sizes, classes=s.classes, pool=s.pool(),
        **s.engine_extras(cfg),
    )  # fmt: skip
    return {
        "recsched_peak_items_per_s": peak["peak_items_per_s"],
        "recsched_peak_best_batch": peak.get("best_batch"),
        "mlperf_offline_items_per_s": r["completed_items_per_s"],
        "mlperf_offline_samples_per_s": r["completed_qps"],
        "ratio": r["completed_items_per_s"] / peak["peak_items_per_s"],
        "result": r,
    }


def _mean_items(s: Setup) -> float:
    from recsched.workload.sizes import parse_sizes

    return parse_sizes(s.sizes).mean()


def table(rows: list[dict], pct: float) -> Table:
    t = Table(title="native open loop vs MLPerf LoadGen Server (same model, load, SLA)")
    for c in ("target qps", "driver", "completed qps", "p50 ms", f"p{pct:g} ms", "p99 ms",
              "SLA met", "LoadGen validity"):  # fmt: skip
        t.add_column(c, justify="right")
    for row in rows:
        for drv in ("native", "mlperf"):
            r = row[drv]
            lat = r["latency_ms"]
            valid = r.get("mlperf", {}).get("validity", "-")
            t.add_row(
                f"{row['qps']:g}", drv, f"{r['completed_qps']:.1f}", f"{lat['p50']:.2f}",
                f"{lat.get(f'p{pct:g}', float('nan')):.2f}", f"{lat['p99']:.2f}",
                str(r["sla_met"]), str(valid),
            )  # fmt: skip
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="ncf")
    ap.add_argument("--preset", default="dynamic")
    ap.add_argument("--qps", default="50", help="comma-separated target rates")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--offline-duration", type=float, default=2.0)
    ap.add_argument("--sla-ms", type=float, default=None)
    ap.add_argument("--sla-x", type=float, default=None)
    ap.add_argument("--percentile", type=float, default=95.0)
    ap.add_argument("--lanes", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="B for split/dynamic")
    ap.add_argument("--sizes", default="production")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-dir", type=Path, default=None)
    ap.add_argument("--skip-offline", action="store_true")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    con = Console()
    s = Setup.make(a.model, seed=a.seed, sizes=a.sizes, sla_ms=a.sla_ms, sla_x=a.sla_x,
                   percentile=a.percentile)  # fmt: skip
    cfg = s.config(a.preset, lanes=a.lanes, batch_size=a.batch_size)
    log_dir = a.log_dir or Path(tempfile.mkdtemp(prefix="mlperf-vs-native-"))
    con.print(f"{a.model} {a.preset}: SLA {s.sla_ms:.2f} ms p{a.percentile:g}, "
              f"lanes {cfg.lanes}, LoadGen logs in {log_dir}")  # fmt: skip
    rates = [] if a.skip_server else [float(q) for q in a.qps.split(",")]
    rows = [server_pair(s, cfg, a.preset, q, a.duration, log_dir) for q in rates]
    if rows:
        con.print(table(rows, a.percentile))
    out = {"model": a.model, "preset": a.preset, "sla_ms": s.sla_ms, "server": rows}
    if not a.skip_offline:
        off = offline(s, cfg, a.preset, a.offline_duration, log_dir)
        con.print(
            f"Offline: LoadGen {off['mlperf_offline_items_per_s']:,.0f} items/s "
            f"({off['mlperf_offline_samples_per_s']:.1f} queries/s, "
            f"{off['result']['mlperf']['validity']}) vs recsched peak "
            f"{off['recsched_peak_items_per_s']:,.0f} items/s (best batch "
            f"{off['recsched_peak_best_batch']}): ratio {off['ratio']:.2f}"
        )
        out["offline"] = off
    if a.json is not None:
        write_json(out, a.json)
        con.print(f"wrote {a.json}")
    else:
        con.print_json(json.dumps({"offline_ratio": out.get("offline", {}).get("ratio")}))


if __name__ == "__main__":
    main()
