"""Lane traces from the real engine: valid Chrome trace JSON, events on every lane, lanes
named, one event per lane task, and a lane never running two tasks at once."""

import json
from concurrent.futures import wait

import pytest

from recsched.bench.run import InputPool, LoadSpec, attach_trace, bench_once
from recsched.config import EngineConfig, preset
from recsched.engine import Engine
from recsched.metrics.trace import TraceRecorder
from recsched.models.registry import load_model
from recsched.types import Query


@pytest.fixture(scope="module")
def ncf():
    return load_model("ncf")


def _load_trace(path):
    doc = json.loads(path.read_text())
    assert isinstance(doc["traceEvents"], list)
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    meta = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    for e in xs:
        assert {"name", "ph", "ts", "dur", "pid", "tid", "args"} <= set(e)
        assert e["ts"] >= 0 and e["dur"] >= 0 and isinstance(e["args"]["batch"], int)
    return xs, meta


def _no_overlap(xs, lane):
    ev = sorted((e["ts"], e["ts"] + e["dur"]) for e in xs if e["tid"] == lane)
    return all(b0 >= a1 - 1e-3 for (_, a1), (b0, _) in zip(ev, ev[1:], strict=False))


def _serve_burst(adapter, cfg, rec, n=30, items=64):
    """Submit `n` queries at once (classes alternate high/low) and wait for all."""
    pool = InputPool.make(adapter, rows=512, seed=1)
    eng = Engine(adapter, cfg, validate=False)
    with eng:
        attach_trace(eng, rec)
        futs = [
            eng.submit(
                Query(i, adapter.name, items, "high" if i % 2 else "low"), pool.take(i, items)
            )
            for i in range(n)
        ]
        wait(futs, timeout=60)
        assert all(f.exception() is None for f in futs)
        tasks = sum(lane.stats.tasks for lane in eng.lanes)
    op_names = {op.name for op in eng.graph.info.ops} if eng.graph is not None else set()
    return tasks, op_names


def test_whole_model_trace_has_every_lane(ncf, tmp_path):
    rec = TraceRecorder(process_name="ncf test")
    tasks, _ = _serve_burst(ncf, EngineConfig(request="whole", lanes=2), rec)
    path = tmp_path / "t.json"
    rec.write(path)
    xs, meta = _load_trace(path)
    assert meta == {0: "cpu 0", 1: "cpu 1"}
    assert {e["tid"] for e in xs} == {0, 1}, "a burst of 30 queries keeps both lanes busy"
    assert len(xs) == tasks == 30, "one event per lane task; whole = one task per query"
    assert {e["name"] for e in xs} == {"model"}
    assert {e["args"]["cls"] for e in xs} == {"high", "low"}
    assert all(e["args"]["items"] == 64 for e in xs)
    assert _no_overlap(xs, 0) and _no_overlap(xs, 1)


def _op_trace(ncf, tmp_path):
    rec = TraceRecorder()
    cfg = EngineConfig(request="split", batch_size=32, operator="roundrobin", lanes=2)
    tasks, op_names = _serve_burst(ncf, cfg, rec, n=12)
    path = tmp_path / "ops.json"
    rec.write(path)
    xs, _ = _load_trace(path)
    return xs, tasks, op_names


def test_operator_level_trace_has_every_lane(ncf, tmp_path):
    xs, tasks, op_names = _op_trace(ncf, tmp_path)
    assert len(xs) == tasks and {e["tid"] for e in xs} == {0, 1}
    assert len({e["args"]["batch"] for e in xs}) == 12 * 2, "64 items in batches of 32"
    for e in xs:
        assert e["name"] == "model" or set(e["name"].split("+")) <= op_names, e["name"]


def test_operator_level_trace_names_operators(ncf, tmp_path):
    xs, _, op_names = _op_trace(ncf, tmp_path)
    assert "model" not in {e["name"] for e in xs}, "operator tasks are named by their ops"


def test_bench_once_records_the_run(ncf, tmp_path):
    rec = TraceRecorder()
    load = LoadSpec(qps=300, duration_s=0.5, sizes="fixed:256", seed=2)
    cfg = preset("dynamic", lanes=2, batch_size=128)
    r = bench_once(ncf, cfg, load, sla_ms=1000.0, pool=InputPool.make(ncf, 1024), trace=rec)
    path = tmp_path / "b.json"
    rec.write(path)
    xs, meta = _load_trace(path)
    assert set(meta) == {0, 1} and {e["tid"] for e in xs} == {0, 1}
    # the warm-up's tasks are left out: at most the run's batches (2 per 256-item query)
    assert 0 < len(xs) <= 2 * r["queries"]
