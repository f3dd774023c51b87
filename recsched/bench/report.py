"""`recsched report`: JSON results -> one static HTML page with PNG plots (matplotlib, Agg).

What each kind of result becomes (the kind is recognised from the document's keys):

- bench / simulate: a latency CDF per class (from `latency_cdf_ms` when present, else the
  coarse p50/p95/p99/max points), and a row in the runs table;
- capacity: p95 and p99 against offered load, one curve per preset, capacity marked;
- compare: the same curves for each preset, and capacity bars labelled with their ratios;
- tune: the tuner's trajectory (measured rate per step, met / missed, accepted, best so far);
- trace (Chrome trace JSON, `--trace`): a lane timeline and each lane's utilization over time.

The page has no external assets (inline CSS, PNGs beside it), so it reads offline.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

KINDS = ("bench", "simulate", "capacity", "compare", "tune", "trace")
MAX_GANTT_EVENTS = 20_000  # draw at most this many boxes in a lane timeline
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")


@dataclass(frozen=True)
class Result:
    """One input file: its kind (one of KINDS, or None when unrecognised) and document."""

    path: Path
    kind: str | None
    doc: Any

    @property
    def name(self) -> str:
        return self.path.stem


def classify(doc: Any) -> str | None:
    """The kind of a result document from its keys (None when it is none of KINDS)."""
    if not isinstance(doc, Mapping):
        return None
    if "traceEvents" in doc:
        return "trace"
    if "presets" in doc and "ratios" in doc:
        return "compare"
    if "latency_bounded_qps" in doc and "runs" in doc:
        return "capacity"
    if "trajectory" in doc and "best" in doc:
        return "tune"
    if "latency_ms" in doc and ("offered_qps" in doc or "completed_qps" in doc):
        return "simulate" if doc.get("simulated") else "bench"
    return None


def load_results(paths: Iterable[str | Path]) -> list[Result]:
    """Read each JSON file; a file that is not JSON raises ValueError naming it."""
    out = []
    for p in paths:
        p = Path(p)
        try:
            doc = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{p}: not a readable JSON result ({exc})") from exc
        out.append(Result(p, classify(doc), doc))
    return out


# -- small helpers ------------------------------------------------------------------------------
def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def _fmt(x: Any, digits: int = 2) -> str:
    """A table cell: '-' for missing or NaN, 'inf', else the number with `digits` decimals."""
    if isinstance(x, bool):
        return "yes" if x else "NO"
    v = _num(x)
    if math.isnan(v):
        return "-"
    return "inf" if math.isinf(v) else f"{v:,.{digits}f}"


def _class_colors(names: Iterable[Any]) -> dict[str, str]:
    """One colour per request class, by sorted name, the same in every plot of a page."""
    uniq = sorted({str(n) for n in names if n is not None and str(n) != "all"})
    return {n: _COLORS[i % len(_COLORS)] for i, n in enumerate(uniq)}


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    assert path.stat().st_size > 0, f"empty plot {path}"
    return path.name


# -- plots -----------------------------------------------------------------------------------------
def cdf_points(result: Mapping[str, Any]) -> tuple[dict[str, list[tuple[float, float]]], bool]:
    """{class: [(percentile, ms)]} for a bench-like result, and whether it is the full CDF
    (`latency_cdf_ms`) or only the coarse p50/p95/p99/max points."""
    full = result.get("latency_cdf_ms")
    if isinstance(full, Mapping) and full:
        pts = {
            c: [(float(p), float(v)) for p, v in rows if v is not None] for c, rows in full.items()
        }
        return {c: v for c, v in pts.items() if v}, True
    coarse = {}
    groups = {"all": result.get("latency_ms") or {}}
    groups.update({c: v.get("latency_ms") or {} for c, v in (result.get("classes") or {}).items()})
    for name, lat in groups.items():
        pts = [
            (p, _num(lat.get(k))) for k, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
        ]
        pts = [(p, v) for p, v in pts if not math.isnan(v)]
        if pts:
            coarse[name] = pts
    return coarse, False


def plot_cdf(result: Mapping[str, Any], path: Path, title: str) -> str:
    """Latency CDF per class (log-scaled ms), the classes' SLAs as vertical lines."""
    pts, full = cdf_points(result)
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    classes = result.get("classes") or {}
    if len(pts) == 2 and "all" in pts:  # one class: its curve is the run's
        pts = {"all": pts["all"]}
    colors = _class_colors(pts)
    for name, rows in sorted(pts.items(), key=lambda kv: (kv[0] != "all", kv[0])):
        p, ms = zip(*rows, strict=True)
        color = "black" if name == "all" else colors[name]
        ax.plot(ms, np.asarray(p) / 100.0, color=color, lw=2.2 if name == "all" else 1.4,
                marker=None if full else "o", ls="-" if full else "--", label=name)  # fmt: skip
        sla = (classes.get(name) or {}).get("sla_ms") if name != "all" else result.get("sla_ms")
        if sla:
            ax.axvline(float(sla), color=color, ls=":", lw=1)
    if any(v for rows in pts.values() for _, v in rows if v > 0):
        ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("fraction of queries")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title + ("" if full else "  (coarse: p50/p95/p99/max only)"), fontsize=10)
    if pts:
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_load_curves(
    curves: Mapping[str, Mapping[str, Any]], path: Path, title: str, percentile: float = 95.0
) -> str:
    """p95 (solid) and p99 (dashed) against offered load per preset; the SLA and each
    preset's latency-bounded throughput marked. A run stopped once its verdict was decided
    (`"stopped"`) has percentiles of what had finished, a lower bound: drawn as an open
    upward triangle."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    slas = set()
    stop_label = "stopped once decided (a lower bound)"
    for i, (name, cap) in enumerate(curves.items()):
        color = _COLORS[i % len(_COLORS)]
        runs = sorted(cap.get("runs") or [], key=lambda r: _num(r.get("offered_qps")))
        x = [_num(r.get("offered_qps")) for r in runs]
        for key, ls in (("p95", "-"), ("p99", "--")):
            y = [_num((r.get("latency_ms") or {}).get(key)) for r in runs]
            ax.plot(x, y, ls=ls, marker="o", ms=3.5, color=color, label=f"{name} {key}")
            up = [(a, b) for a, b, r in zip(x, y, runs, strict=True) if "stopped" in r]
            if up:
                ax.plot(*zip(*up, strict=True), ls="none", marker="^", ms=8, mfc="none",
                        color=color, label=stop_label)  # fmt: skip
                stop_label = "_nolegend_"
        q = _num(cap.get("latency_bounded_qps"))
        if not math.isnan(q):
            ax.axvline(q, color=color, ls=":", lw=1.2)
        if cap.get("sla_ms"):
            slas.add(float(cap["sla_ms"]))
    for s in sorted(slas):
        ax.axhline(s, color="grey", ls="-.", lw=1)
        ax.annotate(f"SLA {s:g} ms", (0.01, s), xycoords=("axes fraction", "data"),
                    fontsize=8, color="grey", va="bottom")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("offered load (queries/s)")
    ax.set_ylabel("latency (ms, log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title + "  (dotted: latency-bounded throughput)", fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def plot_capacity_bars(compare: Mapping[str, Any], path: Path, title: str) -> str:
    """Latency-bounded throughput per preset, each bar labelled with its ratio to the first."""
    presets = compare.get("presets") or {}
    ratios = compare.get("ratios") or {}
    names = list(presets)
    qps = [_num(presets[n].get("latency_bounded_qps")) for n in names]
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    bars = ax.bar(names, [0 if math.isnan(q) else q for q in qps],
                  color=[_COLORS[i % len(_COLORS)] for i in range(len(names))])  # fmt: skip
    for bar, n in zip(bars, names, strict=True):
        r = _num(ratios.get(n))
        label = "-" if math.isnan(r) else f"x{r:.2f}"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=10, fontweight="bold")  # fmt: skip
    ax.set_ylabel("latency-bounded throughput (queries/s)")
    ax.set_title(title, fontsize=10)
    ax.margins(y=0.15)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_tune(tune: Mapping[str, Any], path: Path, title: str) -> str:
    """The tuner's trajectory: the measured rate per step, met (green) or missed (red),
    accepted steps ringed (a restart's point in grey: the climb moves there whatever it
    measured), screened-out first looks as a red triangle at the rate they missed, and the
    best rate met so far."""
    rows = tune.get("trajectory") or []
    step = [int(r.get("step", i + 1)) for i, r in enumerate(rows)]
    qps = [_num(r.get("qps")) for r in rows]
    met = [bool(r.get("met")) for r in rows]
    fig = Figure(figsize=(7.5, 4))
    ax = fig.add_subplot()
    best, cur = [], math.nan
    for q, m in zip(qps, met, strict=True):
        if m and not math.isnan(q):
            cur = q if math.isnan(cur) else max(cur, q)
        best.append(cur)
    ax.step(step, best, where="post", color="black", lw=1.5, label="best met so far")
    screened = [(s, _num(r["screened_qps"])) for s, r in zip(step, rows, strict=True)
                if r.get("screened_qps")]  # fmt: skip
    plain = [(s, q, m) for s, q, m, r in zip(step, qps, met, rows, strict=True)
             if not r.get("screened_qps")]  # fmt: skip
    if plain:
        xs, ys, ok = zip(*plain, strict=True)
        ax.scatter(xs, ys, c=["#2ca02c" if m else "#d62728" for m in ok], s=28, zorder=3,
                   label="measured (green met, red missed)")  # fmt: skip
    if screened:
        ax.scatter(*zip(*screened, strict=True), marker="v", c="#d62728", s=36, zorder=3,
                   label="screened out: missed just above the best")  # fmt: skip
    for restart, edge, label in ((False, "black", "accepted"), (True, "grey", "restart")):
        acc = [
            (s, _num(r["screened_qps"]) if r.get("screened_qps") else q)  # where it is drawn
            for s, q, r in zip(step, qps, rows, strict=True)
            if r.get("accepted") and (r.get("phase") == "restart") == restart
        ]
        if acc:
            ax.scatter(*zip(*acc, strict=True), s=110, facecolors="none", edgecolors=edge,
                       zorder=4, label=label)  # fmt: skip
    ax.set_xlabel("tuning step")
    ax.set_ylabel("latency-bounded throughput (queries/s)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


@dataclass(frozen=True)
class LaneRows:
    """A trace's "X" events grouped by lane ((pid, tid) rows), with names, in seconds."""

    names: dict[tuple[int, int], str]
    events: dict[tuple[int, int], np.ndarray]  # [n, 2] start, end (s), sorted by start
    classes: dict[tuple[int, int], list[Any]]
    span_s: tuple[float, float]


def lane_rows(trace: Mapping[str, Any]) -> LaneRows:
    """Group a Chrome trace's complete events by (pid, tid); name rows from the metadata."""
    procs, threads = {}, {}
    ev: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    cls: dict[tuple[int, int], list[Any]] = defaultdict(list)
    for e in trace.get("traceEvents") or []:
        key = (int(e.get("pid", 0)), int(e.get("tid", 0)))
        if e.get("ph") == "M":
            name = (e.get("args") or {}).get("name", "")
            (procs if e.get("name") == "process_name" else threads)[
                key[0] if e.get("name") == "process_name" else key
            ] = name
        elif e.get("ph") == "X":
            t = float(e["ts"]) / 1e6
            ev[key].append((t, t + float(e.get("dur", 0.0)) / 1e6))
            cls[key].append((e.get("args") or {}).get("cls"))
    keys = sorted(set(ev) | set(threads))
    multi = len({k[0] for k in keys}) > 1
    names = {}
    for k in keys:
        base = threads.get(k, f"lane {k[1]}")
        names[k] = f"{procs.get(k[0], f'pid {k[0]}')} / {base}" if multi else base
    arrays, classes = {}, {}
    for k in keys:
        a = np.asarray(ev.get(k, []), dtype=np.float64).reshape(-1, 2)
        order = np.argsort(a[:, 0], kind="stable")
        arrays[k] = a[order]
        classes[k] = [cls[k][i] for i in order.tolist()] if k in cls else []
    allv = [a for a in arrays.values() if len(a)]
    span = (min(a[:, 0].min() for a in allv), max(a[:, 1].max() for a in allv)) if allv else (0, 0)
    return LaneRows(names, arrays, classes, span)


def utilization_over_time(ev: np.ndarray, t0: float, t1: float, bins: int) -> np.ndarray:
    """Busy fraction of one lane in each of `bins` equal slices of [t0, t1] (overlaps are
    counted once per event, so a lane running one task at a time stays within [0, 1])."""
    edges = np.linspace(t0, t1, bins + 1)
    width = max((t1 - t0) / bins, 1e-12)
    busy = np.zeros(bins)
    for s, e in ev:
        i0 = max(0, int(np.searchsorted(edges, s, "right")) - 1)
        i1 = min(bins - 1, int(np.searchsorted(edges, e, "left")) - 1)
        for i in range(i0, max(i0, i1) + 1):
            busy[i] += max(0.0, min(e, edges[i + 1]) - max(s, edges[i]))
    return np.clip(busy / width, 0.0, 1.0)


def plot_trace(trace: Mapping[str, Any], path: Path, title: str, bins: int | None = None) -> str:
    """Lane timeline (one row per lane, boxes coloured by request class) above each lane's
    utilization over time (`bins` slices; default: about 2 events per slice, 10..100)."""
    rows = lane_rows(trace)
    keys = list(rows.names)
    if bins is None:
        per_lane = np.median([len(rows.events[k]) for k in keys]) if keys else 0
        bins = int(np.clip(per_lane / 2, 10, 100))
    t0, t1 = rows.span_s
    fig = Figure(figsize=(9, 2.2 + 0.45 * len(keys) + 2.2))
    gantt, util = fig.subplots(2, 1, sharex=True, height_ratios=[max(1, len(keys)), 2])
    color = _class_colors(c for k in keys for c in rows.classes[k])
    color["None"] = color["all"] = "#7f7f7f"  # events without a class
    all_cls = sorted({str(c) for k in keys for c in rows.classes[k]})
    budget = MAX_GANTT_EVENTS
    for y, k in enumerate(keys):
        ev = rows.events[k][:budget]
        budget -= len(ev)
        cs = [color[str(c)] for c in rows.classes[k][: len(ev)]]
        if len(ev):
            gantt.broken_barh(list(zip(ev[:, 0] - t0, ev[:, 1] - ev[:, 0], strict=True)),
                              (y - 0.4, 0.8), facecolors=cs, lw=0)  # fmt: skip
    gantt.set_yticks(range(len(keys)), [rows.names[k] for k in keys], fontsize=8)
    gantt.set_ylim(-0.6, len(keys) - 0.4)
    gantt.invert_yaxis()
    for c in all_cls:
        gantt.plot([], [], color=color[c], lw=6, label=f"class {c}")
    if all_cls:
        gantt.legend(fontsize=7, loc="upper right", ncol=min(4, len(all_cls)))
    gantt.set_title(title, fontsize=10)
    if t1 > t0:
        centers = np.linspace(0, t1 - t0, bins + 1)[:-1] + (t1 - t0) / bins / 2
        for i, k in enumerate(keys):
            u = utilization_over_time(rows.events[k], t0, t1, bins)
            util.plot(centers, 100 * u, lw=1.2, color=_COLORS[i % len(_COLORS)],
                      label=f"{rows.names[k]} ({100 * u.mean():.0f}% mean)")  # fmt: skip
    util.set_ylim(0, 105)
    util.set_ylabel("busy %")
    util.set_xlabel("time (s)")
    util.grid(True, alpha=0.3)
    if keys:
        util.legend(fontsize=7, loc="upper right", ncol=2)
    return _save(fig, path)


# -- the page ----------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.3em 0}
.meta{color:#666;font-size:.85em}.bad{color:#b00;font-weight:bold}.ok{color:#070}
"""


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _met(x: Any) -> str:
    if x is None:
        return "-"
    return '<span class="ok">yes</span>' if x else '<span class="bad">NO</span>'


def _img(name: str, alt: str) -> str:
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def _bench_rows(results: Sequence[Result]) -> str:
    head = ("result", "model", "preset", "driver", "offered qps", "completed qps", "p50 ms",
            "p95 ms", "p99 ms", "SLA ms", "SLA met", "queries", "failed")  # fmt: skip
    rows = []
    for r in results:
        d, lat = r.doc, r.doc.get("latency_ms") or {}
        driver = d.get("driver", "sim" if d.get("simulated") else "native")
        if d.get("mlperf"):
            driver += f" ({html.escape(str(d['mlperf'].get('validity')))})"
        rows.append((
            html.escape(r.name), html.escape(str(d.get("model", "?"))),
            html.escape(str(d.get("preset", "?"))), driver, _fmt(d.get("offered_qps")),
            _fmt(d.get("completed_qps")), _fmt(lat.get("p50")), _fmt(lat.get("p95")),
            _fmt(lat.get("p99")), _fmt(d.get("sla_ms")), _met(d.get("sla_met")),
            _fmt(d.get("queries"), 0), _fmt((d.get("failed") or 0) + (d.get("rejected") or 0), 0),
        ))  # fmt: skip
    return _table(head, rows)


def _capacity_table(caps: Mapping[str, Mapping[str, Any]], ratios: Mapping[str, Any]) -> str:
    head = ("preset", "latency-bounded qps", "ratio", "efficiency", "cost core-s/1k", "SLA ms",
            "runs")  # fmt: skip
    rows = [
        (
            html.escape(n),
            _fmt(c.get("latency_bounded_qps")),
            _fmt(ratios.get(n)),
            _fmt(c.get("efficiency")),
            _fmt(c.get("cost_core_s_per_1k")),
            _fmt(c.get("sla_ms")),
            _fmt(len(c.get("runs") or []), 0),
        )  # fmt: skip
        for n, c in caps.items()
    ]
    return _table(head, rows)


def _trace_table(trace: Mapping[str, Any]) -> str:
    rows = lane_rows(trace)
    t0, t1 = rows.span_s
    span = max(t1 - t0, 1e-12)
    out = []
    for k, name in rows.names.items():
        ev = rows.events[k]
        busy = float((ev[:, 1] - ev[:, 0]).sum()) if len(ev) else 0.0
        out.append((html.escape(name), _fmt(len(ev), 0), _fmt(1e3 * busy),
                    _fmt(100 * busy / span, 1)))  # fmt: skip
    return f'<p class="meta">span {1e3 * (t1 - t0):,.1f} ms</p>' + _table(
        ("lane", "events", "busy ms", "busy % of span"), out
    )


def write_report(
    paths: Sequence[str | Path], out: str | Path, title: str = "recsched report"
) -> Path:
    """Render the results at `paths` into `out/index.html` plus PNGs; returns the HTML path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(paths)
    by_kind: dict[str | None, list[Result]] = defaultdict(list)
    for r in results:
        by_kind[r.kind].append(r)
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="meta">{len(results)} result file(s): '
             + ", ".join(html.escape(str(r.path.name)) for r in results) + "</p>"]  # fmt: skip
    benches = by_kind["bench"] + by_kind["simulate"]
    if benches:
        parts.append("<h2>Runs: latency per class</h2>" + _bench_rows(benches))
        if any(r.doc.get("driver") == "mlperf" for r in benches):
            parts.append(
                "<p class=\"meta\">mlperf runs: the table's figures are LoadGen's (from its "
                "log); their CDFs come from recsched's own completion log, timed from LoadGen's "
                "issue callback.</p>"
            )
        for i, r in enumerate(benches):
            png = plot_cdf(r.doc, out / f"cdf_{i}_{_slug(r.name)}.png", _run_title(r))
            parts.append(f"<h3>{html.escape(_run_title(r))}</h3>{_img(png, 'latency CDF')}")
    caps = {f"{r.doc.get('model', '?')}/{r.doc.get('preset', r.name)}": r.doc
            for r in by_kind["capacity"]}  # fmt: skip
    if caps:
        parts.append("<h2>Capacity: tail latency against offered load</h2>")
        parts.append(_capacity_table(caps, {}))
        png = plot_load_curves(caps, out / "load_curves.png", "capacity searches")
        parts.append(_img(png, "tail latency against offered load"))
    for i, r in enumerate(by_kind["compare"]):
        d = r.doc
        t = f"compare {d.get('model', '')} (SLA {_fmt(d.get('sla_ms'))} ms): {r.name}"
        parts.append(f"<h2>{html.escape(t)}</h2>" + _capacity_table(d["presets"], d["ratios"]))
        png = plot_capacity_bars(d, out / f"compare_{i}_bars.png", t)
        parts.append(_img(png, "capacity bars"))
        png = plot_load_curves(d["presets"], out / f"compare_{i}_curves.png", t)
        parts.append(_img(png, "tail latency against offered load per preset"))
    for i, r in enumerate(by_kind["tune"]):
        d = r.doc
        best = d.get("best") or {}
        t = f"tuning {d.get('model', '')}: {r.name}"
        knobs = ", ".join(f"{k}={best[k]}" for k in ("batch_size", "merge_delay_ms", "lanes",
                          "threads_per_lane", "offload_threshold") if k in best)  # fmt: skip
        parts.append(
            f"<h2>{html.escape(t)}</h2><p>best: {html.escape(knobs)}, "
            f"{_fmt(best.get('qps'))} qps at p95 {_fmt(best.get('p95_ms'))} ms "
            f"(SLA {_fmt(d.get('sla_ms'))} ms); {_fmt(d.get('runs'), 0)} runs, stop: "
            f"{html.escape(str(d.get('stop_reason')))}</p>"
        )
        parts.append(_img(plot_tune(d, out / f"tune_{i}.png", t), "tuning trajectory"))
    for i, r in enumerate(by_kind["trace"]):
        t = f"lane trace: {r.name}"
        parts.append(f"<h2>{html.escape(t)}</h2>" + _trace_table(r.doc))
        parts.append(_img(plot_trace(r.doc, out / f"trace_{i}.png", t), "lane timeline"))
    if by_kind[None]:
        names = ", ".join(html.escape(r.path.name) for r in by_kind[None])
        parts.append(f'<p class="meta">not recognised as a result (skipped): {names}</p>')
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    index = out / "index.html"
    index.write_text(page)
    return index


def _run_title(r: Result) -> str:
    d = r.doc
    drv = d.get("driver") or ("sim" if d.get("simulated") else "native")
    return (
        f"{d.get('model', '?')} / {d.get('preset', '?')} ({drv}) at "
        f"{_fmt(d.get('offered_qps') or d.get('target_qps'))} qps: {r.name}"
    )


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)[:40]
