"""MLPerf LoadGen as a driver: a tiny Server run and a tiny Offline run against the engine,
LoadGen's log parsed honestly (VALID or INVALID), every issued sample completed once; the SUT's
bookkeeping with LoadGen's calls faked; user.conf overrides; the log parser on odd input."""

import json
import threading
from collections import Counter, namedtuple
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from recsched.bench.mlperf import (
    EngineSUT,
    MlperfSpec,
    SampleLibrary,
    loadgen_settings,
    mlperf_once,
    parse_detail_log,
    parse_summary_log,
)
from recsched.bench.run import InputPool
from recsched.cli import app
from recsched.config import EngineConfig, preset
from recsched.engine import Engine
from recsched.models.registry import load_model
from recsched.workload.classes import parse_classes

pytest.importorskip("mlperf_loadgen")

BENCH_KEYS = ("model", "preset", "offered_qps", "completed_qps", "duration_s", "queries",
              "rejected", "late_issues", "latency_ms", "sla_ms", "sla_percentile", "sla_met",
              "classes", "lane_utilization", "cost_core_s_per_1k")  # fmt: skip


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSCHED_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def ncf():
    return load_model("ncf")


def test_server_run_is_parsed_honestly(ncf, tmp_path):
    classes = parse_classes("high:0.3:10:400ms,low:0.7:1")
    spec = MlperfSpec(
        "server", qps=120, duration_s=2.0, sla_ms=200.0, percentile=95, min_query_count=100,
        qsl_size=256, seed=1, log_dir=tmp_path / "lg",
    )  # fmt: skip
    cfg = preset("dynamic", lanes=2, batch_size=64)
    r = mlperf_once(ncf, cfg, spec, preset="dynamic", classes=classes,
                    pool=InputPool.make(ncf, 1024))  # fmt: skip
    m = r["mlperf"]
    assert (tmp_path / "lg" / "mlperf_log_detail.txt").is_file()
    assert m["scenario"] == "Server" and m["validity"] in ("VALID", "INVALID")
    for k in ("perf_constraints_met", "min_duration_met", "min_queries_met"):
        assert isinstance(m[k], bool), k
    assert m["min_duration_met"] is True, "LoadGen ran for at least the requested duration"
    # every issued sample was completed exactly once, and LoadGen counted the same
    assert m["issued"] == m["completed"] == m["sample_count"] == m["query_count"] == r["queries"]
    assert r["queries"] >= 100 and sum(c["queries"] for c in r["classes"].values()) == r["queries"]
    assert set(r["classes"]) == {"high", "low"}
    # the settings LoadGen used are ours
    assert m["target_qps"] == 120 and m["target_latency_ms"] == 200.0
    assert m["target_latency_percentile"] == pytest.approx(0.95)
    assert m["min_duration_ms"] == 2000 and m["min_query_count"] == 100
    # the figures are parsed numbers in a sane order
    assert m["scheduled_samples_per_s"] > 0 and 0 < r["completed_qps"]
    lat = r["latency_ms"]
    assert 0 < m["latency_ms"]["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert r["driver"] == "mlperf" and all(k in r for k in BENCH_KEYS)
    if r["failed"] + r["rejected"] == 0:
        assert r["sla_met"] == m["perf_constraints_met"]
    # the headline figures are LoadGen's own, read from its log
    raw = parse_detail_log(tmp_path / "lg" / "mlperf_log_detail.txt")
    assert m["validity"] == raw["result_validity"]
    assert lat["p99"] == pytest.approx(raw["result_99.00_percentile_latency_ns"] / 1e6)
    assert r["completed_qps"] == pytest.approx(raw["result_completed_samples_per_sec"])
    assert set(r["latency_cdf_ms"]) == {"all", "high", "low"}
    json.dumps(r)  # plain JSON


def test_offline_run_counts_every_sample(ncf, tmp_path):
    spec = MlperfSpec("offline", qps=200, duration_s=0.5, min_query_count=1, qsl_size=128,
                      window=16, log_dir=tmp_path / "off")  # fmt: skip
    r = mlperf_once(ncf, preset("dynamic", lanes=2), spec, pool=InputPool.make(ncf, 1024))
    m = r["mlperf"]
    assert m["scenario"] == "Offline" and m["validity"] in ("VALID", "INVALID")
    assert m["query_count"] == 1, "Offline issues one query of many samples"
    assert m["issued"] == m["completed"] == m["sample_count"] == r["queries"] >= 100
    assert r["completed_qps"] > 0 and r["peak_items_per_s"] == r["completed_items_per_s"] > 0
    assert r["sla_ms"] is None and r["sla_met"] is None


def test_user_conf_overrides_only_what_it_names(tmp_path):
    conf = tmp_path / "user.conf"
    conf.write_text("ncf.Server.target_qps = 77\n*.Server.target_latency = 9\n")
    spec = MlperfSpec("server", qps=10, duration_s=1.5, sla_ms=50.0, user_conf=conf)
    ts = loadgen_settings(spec, "ncf")
    assert ts.server_target_qps == 77 and ts.server_target_latency_ns == 9_000_000
    assert ts.min_duration_ms == 1500, "the official mlperf.conf is not loaded over our options"
    assert ts.server_target_latency_percentile == pytest.approx(0.95)
    other = loadgen_settings(spec, "rmc1")  # only the '*' key applies to another model
    assert other.server_target_qps == 10 and other.server_target_latency_ns == 9_000_000
    with pytest.raises(FileNotFoundError):
        loadgen_settings(MlperfSpec("server", sla_ms=5.0, user_conf=tmp_path / "no"), "ncf")
    with pytest.raises(ValueError, match="target latency"):
        MlperfSpec("server", sla_ms=None)


Sample = namedtuple("Sample", "id index")


class FakeLoadGen:
    """QuerySamplesComplete / QuerySampleResponse stand-ins that record what they got."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sizes: dict[int, int] = {}
        self.calls = Counter()
        self.all_done = threading.Event()
        self.expect = 0

    def response(self, sid, ptr, size):
        return SimpleNamespace(id=sid, data=ptr, size=size)

    def complete(self, responses):
        with self.lock:
            for resp in responses:
                self.calls[resp.id] += 1
                self.sizes[resp.id] = resp.size
            if sum(self.calls.values()) >= self.expect:
                self.all_done.set()


@pytest.mark.parametrize("window", [None, 3])
def test_sut_completes_each_sample_once(ncf, window):
    pool = InputPool.make(ncf, 512, seed=2)
    lib = SampleLibrary.make("fixed:40", parse_classes(None), 16, pool.rows, seed=0)
    fake = FakeLoadGen()
    fake.expect = 50
    with Engine(ncf, EngineConfig(lanes=2), validate=False) as eng:
        sut = EngineSUT(eng, lib, pool.take, complete=fake.complete, response=fake.response,
                        sla_ms=100.0, window=window)  # fmt: skip
        sut.issue([Sample(1000 + i, i % 16) for i in range(20)])
        sut.issue([Sample(2000 + i, i % 16) for i in range(30)])
        assert fake.all_done.wait(30)
    assert set(fake.calls) == {1000 + i for i in range(20)} | {2000 + i for i in range(30)}
    assert set(fake.calls.values()) == {1}, "each sample completed exactly once"
    out_dim = 1
    assert set(fake.sizes.values()) == {40 * out_dim * 4}, "the response carries the scores"
    assert sut.issued == sut.completed == 50 and sut.failed == 0 and sut.outstanding() == 0
    assert len(sut.log) == 50


def test_sut_completes_failed_samples_too(ncf):
    pool = InputPool.make(ncf, 512, seed=2)
    lib = SampleLibrary.make("fixed:8", parse_classes(None), 4, pool.rows)
    fake = FakeLoadGen()
    fake.expect = 5
    eng = Engine(ncf, EngineConfig(lanes=1), validate=False)  # never started: rejects all
    sut = EngineSUT(eng, lib, pool.take, complete=fake.complete, response=fake.response)
    sut.issue([Sample(i, i % 4) for i in range(5)])
    assert fake.all_done.is_set() and set(fake.calls.values()) == {1}
    assert set(fake.sizes.values()) == {0}, "a failed sample gets an empty response"
    assert sut.failed == sut.rejected == 5 and sut.outstanding() == 0


def test_sample_library_is_seeded_and_fits_the_pool():
    a = SampleLibrary.make("production", parse_classes("a:0.5:1,b:0.5:2"), 500, 300, seed=4)
    b = SampleLibrary.make("production", parse_classes("a:0.5:1,b:0.5:2"), 500, 300, seed=4)
    assert (a.n_items == b.n_items).all() and (a.cls == b.cls).all()
    assert a.n_items.min() >= 1 and a.n_items.max() <= 300
    assert ((a.offsets >= 0) & (a.offsets + a.n_items <= 300)).all()
    assert set(a.cls.tolist()) == {0, 1}


def test_parsers_tolerate_odd_lines(tmp_path):
    detail = tmp_path / "mlperf_log_detail.txt"
    rows = [
        {"key": "result_validity", "value": "VALID", "metadata": {}},
        {"key": "result_99.00_percentile_latency_ns", "value": 2_500_000, "metadata": {}},
        {"key": "bad_thing", "value": "oops", "metadata": {"is_error": True}},
        {"key": "result_validity", "value": "INVALID", "metadata": {}},
    ]
    text = "\n".join(":::MLLOG " + json.dumps(r) for r in rows)
    detail.write_text("noise line\n" + text + '\n:::MLLOG {"key": "cut sh')
    d = parse_detail_log(detail)
    assert d["result_validity"] == "INVALID", "the last value of a repeated key wins"
    assert d["result_99.00_percentile_latency_ns"] == 2_500_000
    assert d["_errors"] == ["bad_thing: oops"] and d["_warnings"] == []
    summary = tmp_path / "mlperf_log_summary.txt"
    summary.write_text("Scenario : Server\nResult is : VALID\n * note: x\n==========\n")
    s = parse_summary_log(summary)
    assert s == {"Scenario": "Server", "Result is": "VALID"}


def test_cli_bench_mlperf_with_trace(tmp_path):
    out, trace = tmp_path / "r.json", tmp_path / "t.json"
    res = CliRunner().invoke(
        app,
        ["bench", "ncf", "--preset", "dynamic", "--qps", "60", "--duration", "1", "--lanes", "2",
         "--sla-ms", "500", "--driver", "mlperf", "--trace", str(trace), "--json", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["driver"] == "mlperf" and r["mlperf"]["issued"] == r["mlperf"]["completed"]
    assert (tmp_path / "r.mlperf" / "mlperf_log_detail.txt").is_file()
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e["ph"] == "X" for e in events)
