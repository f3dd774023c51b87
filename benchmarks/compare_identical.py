"""How far apart `compare` reads one configuration against itself, and whether its place in
the interleaving matters.

`recsched compare` runs the presets' capacity searches in turns, run by run, the baseline's
first. Here every "preset" is the baseline's own configuration under another name, so any
ratio between them is the machine's noise plus whatever the turn order adds. Each round
rotates the order (round r starts with copy r mod N), so every copy takes every place.

    python benchmarks/compare_identical.py --model rmc1 --copies 3 --rounds 6 --json F

Prints each round's capacities in turn order, then per place the mean capacity and the
ratios to the first place. Not a test: timings, minutes on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics

from recsched import config
from recsched.bench.setup import Setup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rmc1")
    ap.add_argument("--preset", default="baseline", help="the configuration every copy serves")
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--sla-x", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per run (compare's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    names = [f"copy{i}" for i in range(args.copies)]
    for n in names:  # the same configuration under each name
        config.PRESETS[n] = dict(config.PRESETS[args.preset])
    setup = Setup.make(args.model, sla_x=args.sla_x)
    rounds = []
    for r in range(args.rounds):
        k = r % args.copies
        order = names[k:] + names[:k]
        caps = setup.capacities(order, duration_s=args.duration)
        qps = [caps[n]["latency_bounded_qps"] for n in order]
        rounds.append({"order": order, "qps": qps})
        print(f"round {r}: " + ", ".join(f"{n} {q:.1f}" for n, q in zip(order, qps, strict=True)))
    by_place = list(zip(*(rd["qps"] for rd in rounds), strict=True))
    ratios = [[q / r0 for q, r0 in zip(p, by_place[0], strict=True)] for p in by_place]
    summary = {
        "mean_qps_by_place": [statistics.fmean(p) for p in by_place],
        "ratio_to_first_by_place": ratios,
        "median_ratio_by_place": [statistics.median(x) for x in ratios],
        "all_ratios_min_max": [min(min(x) for x in ratios[1:]), max(max(x) for x in ratios[1:])],
    }
    for i, p in enumerate(by_place):
        print(
            f"place {i + 1}: mean {statistics.fmean(p):.1f} qps, ratio to the first "
            f"median {statistics.median(ratios[i]):.2f} ("
            + ", ".join(f"{x:.2f}" for x in ratios[i])
            + ")"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": vars(args), "rounds": rounds, **summary}, f, indent=1)


if __name__ == "__main__":
    main()
