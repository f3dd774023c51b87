"""How close the capacity searches' first guess is to the capacities later measured.

`Setup.start_qps` starts every search at `GUESS_FRACTION` x the simulator's capacity on lanes
that cost what the cached peak measured (`Setup.simulated_start_qps`). This prints, per model,
that simulated capacity (before the fraction) beside the tuner's start capacities recorded in
tuning JSONs (`recsched tune --json`, the first trajectory row: `split` B=1024, every query
whole, as the baseline), and their ratio. Needs each model's peak cached (`recsched peak M`);
the SLA is `--sla-x` on this machine's cached base latency, as in the tuning runs.

    python benchmarks/first_guess.py --tuned 'benchmarks/results/tune8_s10*/*_x20*.json' --json F

Not a test: the simulation is deterministic, the real capacities are whatever the JSONs hold.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics

from recsched.bench.setup import GUESS_FRACTION, Setup
from recsched.config import EngineConfig

MODELS = ("rmc1", "rmc2", "rmc3", "ncf", "wnd", "mtwnd", "din", "dien")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--tuned", action="append", required=True, help="glob of tune JSONs")
    ap.add_argument("--sla-x", type=float, default=20.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    real: dict[str, list[float]] = {}
    for pattern in args.tuned:
        for path in sorted(glob.glob(pattern)):
            doc = json.loads(open(path).read())
            first = doc["trajectory"][0]
            if first["config"].get("batch_size") == 1024 and first["met"]:
                real.setdefault(doc["model"], []).append(float(first["qps"]))
    rows = []
    for m in args.models.split(","):
        s = Setup.make(m, sla_x=args.sla_x)
        start = EngineConfig(request="split", batch_size=1024, lanes=2, threads_per_lane=1)
        guess = s.simulated_start_qps(start)
        sim = None if guess is None else guess / GUESS_FRACTION
        med = statistics.median(real[m]) if real.get(m) else None
        ratio = sim / med if sim and med else None
        rows.append({"model": m, "sla_ms": s.sla_ms, "simulated_qps": sim,
                     "real_start_qps": real.get(m, []), "ratio_to_median": ratio})  # fmt: skip
        shown = "no peak cached" if sim is None else f"{sim:8.1f}"
        got = ", ".join(f"{q:.1f}" for q in real.get(m, [])) or "-"
        print(f"{m:6s} SLA {s.sla_ms:6.1f} ms  simulated {shown}  real starts [{got}]"
              + (f"  sim / median {ratio:.2f}" if ratio else ""))  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"guess_fraction": GUESS_FRACTION, "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
