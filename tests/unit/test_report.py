"""`recsched report` renders fixture results (bench, mlperf, simulate, capacity, compare, tune,
traces) into an HTML page whose every PNG exists, is a real non-empty PNG, and is referenced."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from recsched.bench.report import (
    cdf_points,
    classify,
    lane_rows,
    load_results,
    utilization_over_time,
    write_report,
)
from recsched.cli import app

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fixture_paths() -> list[Path]:
    paths = sorted(FIXTURES.glob("*.json"))
    assert len(paths) >= 7, "the report fixtures are missing"
    return paths


def _pngs(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def test_every_fixture_is_recognised():
    kinds = {r.path.stem: r.kind for r in load_results(fixture_paths())}
    assert kinds == {
        "bench_native": "bench", "bench_mlperf": "bench", "simulate": "simulate",
        "capacity_baseline": "capacity", "compare": "compare", "tune": "tune",
        "trace_bench": "trace", "trace_sim": "trace",
    }  # fmt: skip
    assert classify({"something": 1}) is None and classify([1, 2]) is None


def test_report_renders_from_fixtures(tmp_path):
    index = write_report(fixture_paths(), tmp_path / "rep", title="fixtures <&>")
    html = index.read_text()
    assert html.startswith("<!DOCTYPE html>") and "fixtures &lt;&amp;&gt;" in html
    pngs = _pngs(html)
    on_disk = sorted(p.name for p in index.parent.glob("*.png"))
    assert sorted(pngs) == on_disk, "the page references every PNG, and only those"
    # 3 CDFs (bench, mlperf, simulate), load curves, compare bars + curves, tune, 2 traces
    assert len(pngs) == 9
    for name in pngs:
        data = (index.parent / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
    assert "http://" not in html and "https://" not in html, "no external assets"
    for text in ("1.86", "INVALID", "deeprecsched", "cpu 1", "server 1 (cpu2) / cpu 0"):
        assert text in html, text


def test_cdf_points_full_and_coarse():
    bench = json.loads((FIXTURES / "bench_native.json").read_text())
    pts, full = cdf_points(bench)
    assert full and set(pts) == {"all", "high", "low"}
    p = [x for x, _ in pts["all"]]
    ms = [v for _, v in pts["all"]]
    assert 45 <= len(p) <= 55 and p[0] == 0 and p[-1] == 100
    assert ms == sorted(ms), "a CDF's latencies rise with the percentile"
    assert ms[-1] == pytest.approx(bench["latency_ms"]["max"], rel=1e-3)
    bench.pop("latency_cdf_ms")
    pts, full = cdf_points(bench)
    assert not full and set(pts) == {"all", "high", "low"}
    assert [x for x, _ in pts["all"]] == [50, 95, 99, 100]


def test_report_without_cdf_uses_coarse_points(tmp_path):
    bench = json.loads((FIXTURES / "bench_native.json").read_text())
    bench.pop("latency_cdf_ms")
    src = tmp_path / "old.json"
    src.write_text(json.dumps(bench))
    index = write_report([src], tmp_path / "rep")
    (png,) = _pngs(index.read_text())
    assert (index.parent / png).stat().st_size > 5000


def test_lane_rows_and_utilization():
    trace = json.loads((FIXTURES / "trace_sim.json").read_text())
    rows = lane_rows(trace)
    assert len(rows.names) == 4 and all(len(ev) == 40 for ev in rows.events.values())
    assert rows.names[(1, 0)] == "server 1 (cpu2) / cpu 0"
    ev = np.array([[0.0, 1.0], [2.0, 3.0]])
    u = utilization_over_time(ev, 0.0, 4.0, 4)
    assert u.tolist() == [1.0, 0.0, 1.0, 0.0]
    u = utilization_over_time(np.array([[0.5, 1.5]]), 0.0, 2.0, 2)
    assert u.tolist() == [0.5, 0.5]


def test_cli_report(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("compare.json", "tune.json"):
        shutil.copy(FIXTURES / name, src / name)
    (src / "other.json").write_text('{"hello": 1}')
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["report", *map(str, sorted(src.iterdir())), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "1 not recognised" in res.output
    html = (out / "index.html").read_text()
    assert len(_pngs(html)) == 3 and "other.json" in html
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = CliRunner().invoke(app, ["report", str(bad), "--out", str(out)])
    assert res.exit_code == 2 and "bad.json" in res.output


def test_load_curves_mark_runs_stopped_once_decided(tmp_path):
    """A capacity run stopped once its verdict was decided carries percentiles of what had
    finished (a lower bound): the curves draw it apart, so the picture changes."""
    from recsched.bench.report import plot_load_curves

    doc = json.loads((FIXTURES / "compare.json").read_text())
    curves = doc["presets"]
    plain = tmp_path / plot_load_curves(curves, tmp_path / "plain.png", "t")
    failing = [r for cap in curves.values() for r in cap["runs"] if not r.get("sla_met")]
    assert failing, "the fixture has runs past the capacity"
    for r in failing:
        r["stopped"] = {"at_s": 0.5, "class": "default", "issued": 10, "of": 100}
    marked = tmp_path / plot_load_curves(curves, tmp_path / "marked.png", "t")
    assert marked.read_bytes()[:8] == PNG_MAGIC
    assert marked.read_bytes() != plain.read_bytes()


def test_tune_plot_draws_screened_first_looks_apart(tmp_path):
    """A screened-out first look (one run just above the best rate, missed) has no measured
    rate of its own: the trajectory plot draws it at the rate it missed, not at zero."""
    from recsched.bench.report import plot_tune

    rows = [
        {"step": 1, "qps": 40.0, "met": True, "accepted": True, "phase": "start"},
        {"step": 2, "qps": 60.0, "met": True, "accepted": True, "phase": "batch_size"},
        {"step": 3, "qps": 0.0, "met": False, "accepted": False, "phase": "batch_size"},
    ]
    plain = tmp_path / plot_tune({"trajectory": rows}, tmp_path / "plain.png", "t")
    rows[2]["screened_qps"] = 66.0
    screened = tmp_path / plot_tune({"trajectory": rows}, tmp_path / "screened.png", "t")
    assert screened.read_bytes()[:8] == PNG_MAGIC
    assert screened.read_bytes() != plain.read_bytes()
