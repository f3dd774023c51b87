"""The engine with operator-level policies on real models: scores equal eager execution."""

from __future__ import annotations

import time
from concurrent.futures import wait

import pytest
import torch

from recsched.config import preset
from recsched.engine import Engine
from recsched.graph import build_graph
from recsched.models.registry import load_model
from recsched.sched.opstream import DagPolicy
from recsched.types import Query, Task

SIZES = [1, 7, 60, 130, 5, 90, 64, 2, 33, 9]
_MODELS: dict[str, tuple] = {}


def model(name: str):
    """The small model and both its graphs, built once per test session."""
    if name not in _MODELS:
        ad = load_model(name, "small")
        _MODELS[name] = ad, {g: build_graph(ad, g) for g in ("coarse", "fine", "model")}
    return _MODELS[name]


def run(ad, graph, cfg, sizes=SIZES, values=None) -> tuple[list, Engine]:
    inputs = [ad.make_inputs(n, i) for i, n in enumerate(sizes)]
    values = values or [1.0] * len(sizes)
    with Engine(ad, cfg, graph=graph) as eng:
        futs = []
        for i, (n, x) in enumerate(zip(sizes, inputs, strict=True)):
            now = time.perf_counter()
            q = Query(i, ad.name, n, "c", values[i], now, now + 0.05)
            futs.append(eng.submit(q, x))
        wait(futs, timeout=60)
    with torch.inference_mode():
        for f, x, n in zip(futs, inputs, sizes, strict=True):
            got = f.result(timeout=0)
            assert got.shape[0] == n
            torch.testing.assert_close(got, ad.module(x), rtol=1e-4, atol=1e-5)
    return futs, eng


@pytest.mark.parametrize(
    "name, policy, granularity",
    [
        ("rmc1", "opstream", "coarse"),
        ("rmc1", "opstream", "fine"),
        ("rmc1", "roundrobin", "coarse"),
        ("rmc1", "roundrobin", "fine"),
        ("din", "opstream", "coarse"),
        ("din", "roundrobin", "fine"),
        ("rmc1", "opstream", "model"),
        ("din", "roundrobin", "model"),
    ],
)
def test_scores_equal_eager_execution(name, policy, granularity, monkeypatch):
    """Op by op (no whole-model tasks), so the graph runner is what is checked."""
    ad, graphs = model(name)
    tasks = record_tasks(monkeypatch)
    opts = {"check": True, "whole_tasks": False}
    cfg = preset(policy, granularity=granularity, batch_size=32, opstream=opts)
    _, eng = run(ad, graphs[granularity], cfg)
    assert tasks and all(t.ops is not None for t in tasks)
    assert eng.completed == len(SIZES) and eng.failed == 0
    pol = eng.core.operator
    assert pol.queued() == 0 and not pol.tasks
    n_batches = pol.batches_in
    assert pol.ops_dispatched >= n_batches * len(graphs[granularity].info.ops)


def record_tasks(monkeypatch) -> list[Task]:
    """Every task the operator-graph policies issue during the test."""
    seen: list[Task] = []
    issue = DagPolicy.issue

    def spy(self, *args, **kw):
        t = issue(self, *args, **kw)
        seen.append(t)
        return t

    monkeypatch.setattr(DagPolicy, "issue", spy)
    return seen


def test_whole_fresh_batches_run_the_model_forward(monkeypatch):
    ad, graphs = model("rmc1")
    tasks = record_tasks(monkeypatch)
    cfg = preset("opstream", batch_size=32, opstream={"check": True})
    run(ad, graphs["coarse"], cfg)
    assert any(t.ops is None for t in tasks)


@pytest.mark.parametrize(
    "name, granularity", [("rmc1", "coarse"), ("din", "coarse"), ("rmc1", "model")]
)
def test_mixed_values_with_every_mechanism_split_and_gated(name, granularity):
    """Tiny split/gate budgets force row pieces and gating on a real model."""
    ad, graphs = model(name)
    opts = {
        "check": True,
        "split_s": 1e-5,
        "gate_s": 1e-5,
        "max_chain_s": 1e-4,
        "split_frac": 0.0,
        "gate_frac": 0.0,
        "chain_frac": 0.0,
        "piece_overhead": 1.0,
        "min_piece_rows": 2,
    }
    cfg = preset("opstream", batch_size=64, granularity=granularity, opstream=opts)
    values = [10.0 if i % 4 == 0 else 1.0 for i in range(len(SIZES))]
    _, eng = run(ad, graphs[granularity], cfg, values=values)
    pol = eng.core.operator
    assert eng.completed == len(SIZES)
    assert pol.ops_dispatched > pol.batches_in * len(graphs[granularity].info.ops)  # pieces ran
    pol.check_invariants()


@pytest.mark.parametrize(
    "options",
    [
        {"priority": False, "interference": False},
        {"gating": False, "splitting": False, "chaining": False},
    ],
)
def test_ablations_still_equal_eager(options):
    ad, graphs = model("rmc1")
    cfg = preset("opstream", batch_size=16, opstream={"check": True, **options})
    run(ad, graphs["coarse"], cfg, sizes=[3, 40, 1, 17])
