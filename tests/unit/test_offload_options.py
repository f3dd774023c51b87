"""`--offload-threshold` / `--accel-lanes` on the measuring commands, and the tuner's space
with an accelerator.

These machines have no GPU: what is tested is the refusal without CUDA (before any model is
loaded), the options' plumbing into the configuration overrides with `cuda_available()`
patched to True (nothing is served), and the tuning space. The accelerator lanes themselves
are not run here.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import recsched.engine
from recsched.bench import cli as bench_cli
from recsched.bench.setup import Setup
from recsched.config import EngineConfig

NO_CUDA = (
    "error: --offload-threshold needs a CUDA device (torch.cuda.is_available() is False on "
    "this machine); leave it unset to serve on CPU lanes"
)
COMMANDS = ("bench", "capacity", "compare", "tune")
# The CPU-only space, knob by knob, as it was before the accelerator flag (cached tuning
# results and the tuner's tests depend on it).
CORES = os.cpu_count() or 1  # `tune` starts with one single-threaded lane per core
CPU_KNOBS = ["batch_size", "request", "order", "merge_delay_ms", "lanes/threads_per_lane"]


@pytest.fixture
def app() -> typer.Typer:
    """The measuring commands alone (the same functions `recsched` registers)."""
    a = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    bench_cli.register(a)
    return a


class Loaded(Exception):
    """Raised where a command would load a model or measure."""


@pytest.fixture
def nothing_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model (or anything else `Setup.make` does) fails the test."""

    def make(*args: Any, **kwargs: Any) -> Setup:
        raise Loaded("Setup.make was called")

    monkeypatch.setattr(Setup, "make", make)
    monkeypatch.setattr("recsched.bench.setup.load", make)


def _invoke(app: typer.Typer, args: list[str]) -> Any:
    return CliRunner().invoke(app, args)


def _refused(res: Any, message: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit)  # typer.Exit, not Loaded or a traceback
    assert res.stderr.splitlines() == [message]
    assert "Traceback" not in res.output


@pytest.mark.parametrize("command", COMMANDS)
def test_offload_threshold_is_refused_without_cuda(
    app: typer.Typer, nothing_slow: None, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setattr(recsched.engine, "cuda_available", lambda: False)
    res = _invoke(app, [command, "rmc1", "--offload-threshold", "64", "--sla-ms", "50"])
    _refused(res, NO_CUDA)
    res = _invoke(app, [command, "rmc1", "--offload-threshold", "64", "--accel-lanes", "2"])
    _refused(res, NO_CUDA)


def test_this_machine_refuses_as_it_is(app: typer.Typer, nothing_slow: None) -> None:
    """Unpatched: on these CPU-only machines the real `cuda_available()` refuses."""
    if recsched.engine.cuda_available():
        pytest.skip("a CUDA device is present")
    _refused(_invoke(app, ["capacity", "rmc1", "--offload-threshold", "256"]), NO_CUDA)


@pytest.mark.parametrize("command", ("capacity", "compare", "tune"))
def test_offload_threshold_is_refused_with_sim(
    app: typer.Typer, nothing_slow: None, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """The simulator path of these commands has no accelerator profile: refused even where
    CUDA exists, pointing at `recsched simulate`."""
    monkeypatch.setattr(recsched.engine, "cuda_available", lambda: True)
    res = _invoke(app, [command, "rmc1", "--sim", "--offload-threshold", "64"])
    assert res.exit_code == 2 and len(res.stderr.splitlines()) == 1
    assert "--sim" in res.stderr and "recsched simulate" in res.stderr


def test_accel_lanes_alone_and_operator_presets_are_refused(
    app: typer.Typer, nothing_slow: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recsched.engine, "cuda_available", lambda: True)
    res = _invoke(app, ["bench", "rmc1", "--accel-lanes", "2"])
    _refused(res, "error: --accel-lanes applies only with --offload-threshold")
    res = _invoke(app, ["compare", "rmc1", "--offload-threshold", "64"])  # default: opstream
    assert res.exit_code == 2 and "'opstream'" in res.stderr and "sequential" in res.stderr
    res = _invoke(app, ["bench", "rmc1", "--preset", "roundrobin", "--offload-threshold", "64"])
    assert res.exit_code == 2 and "'roundrobin'" in res.stderr


class _Recorder:
    """Stands in for a `Setup` (where CUDA is patched present): records the overrides each
    command hands on, then stops the command before anything is served."""

    sla_ms = 50.0

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _stop(self, what: str, kwargs: dict[str, Any]) -> Any:
        self.calls.append((what, kwargs))
        raise Loaded(what)

    def config(self, name: str, log: Any = None, **overrides: Any) -> EngineConfig:
        return self._stop("config", overrides)

    def capacity(self, name: str, duration_s: float = 3.0, log: Any = None, **kw: Any) -> dict:
        return self._stop("capacity", kw)

    def capacities(self, names: Any, duration_s: float = 3.0, **kw: Any) -> dict:
        return self._stop("capacities", kw)

    def tune(self, **kw: Any) -> dict:
        return self._stop("tune", kw)


@pytest.mark.parametrize(
    ("command", "what"),
    [("bench", "config"), ("capacity", "capacity"), ("compare", "capacities"), ("tune", "tune")],
)
def test_the_options_travel_as_config_overrides(
    app: typer.Typer, monkeypatch: pytest.MonkeyPatch, command: str, what: str
) -> None:
    """Plumbing only (CUDA patched present, nothing served): the threshold and the lane count
    reach the configuration overrides; without them, no accelerator key is passed at all."""
    monkeypatch.setattr(recsched.engine, "cuda_available", lambda: True)
    rec = _Recorder()
    monkeypatch.setattr(Setup, "make", lambda *a, **k: rec)
    extra = ["--presets", "baseline,dynamic"] if command == "compare" else []
    args = [command, "rmc1", *extra]
    res = _invoke(app, [*args, "--offload-threshold", "128", "--accel-lanes", "2"])
    assert isinstance(res.exception, Loaded), res.output
    assert rec.calls[-1][0] == what
    assert rec.calls[-1][1]["offload_threshold"] == 128 and rec.calls[-1][1]["accel_lanes"] == 2
    res = _invoke(app, args)
    assert isinstance(res.exception, Loaded), res.output
    assert not {"offload_threshold", "accel_lanes"} & set(rec.calls[-1][1])


def test_tuning_space_without_an_accelerator_is_unchanged() -> None:
    from recsched.bench.tune import tuning_space

    cpu = tuning_space(2)
    assert [k.name for k in cpu.knobs] == CPU_KNOBS
    assert cpu.knobs == tuning_space(2, has_accel=False).knobs


def test_tuning_space_with_an_accelerator_has_the_offload_knob() -> None:
    from recsched.bench.tune import tuning_space

    cpu, acc = tuning_space(2), tuning_space(2, has_accel=True)
    names = [k.name for k in acc.knobs]
    assert names == [*CPU_KNOBS[:2], "offload_threshold", *CPU_KNOBS[2:]]
    knob = acc.knobs[names.index("offload_threshold")]
    assert None in knob.values and all(v is None or v >= 1 for v in knob.values)
    assert [k for k in acc.knobs if k.name != "offload_threshold"] == list(cpu.knobs)
    start = EngineConfig(request="split", batch_size=1024, merge_delay_ms=0.0, lanes=2)
    assert acc.feasible(start, acc.key(start))  # the CPU start (never offload) is in it


class _Surface:
    """What `recsched.bench.tune.tune` reads of a `Setup`: a run meets the SLA below a
    capacity that depends on the batch size only (no engine, no timing)."""

    percentile, sla_ms, sizes, arrivals, classes, sim, scale, seed = (
        95.0, 20.0, "fixed:8", "poisson", (), False, "small", 0,
    )  # fmt: skip

    def __init__(self) -> None:
        self.adapter = type("A", (), {"name": "fake"})()
        self.configs: list[EngineConfig] = []

    def start_qps(self, cfg: EngineConfig) -> float:
        return 100.0

    def run_fn(self, cfg: EngineConfig, name: str, duration: float, stop_on_miss: bool = False):
        self.configs.append(cfg)

        def run(qps: float) -> dict:
            ok = qps <= (400.0 if cfg.batch_size == 256 else 300.0)
            return {"sla_met": ok, "latency_ms": {"p95": 10.0 if ok else 40.0}, "queries": 100}

        return run


def test_tune_searches_the_threshold_only_with_an_accelerator(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """No CUDA and no threshold: the CPU space and the CPU start (as before). A threshold
    (or CUDA, patched present) adds the offload knob; the given threshold is the start's."""
    import recsched.bench.tune as tune_mod

    monkeypatch.setenv("RECSCHED_CACHE", str(tmp_path))
    spaces: list[bool] = []
    real = tune_mod.tuning_space

    def spy(cores: int, has_accel: bool = False) -> Any:
        spaces.append(has_accel)
        return real(cores, has_accel)

    monkeypatch.setattr(tune_mod, "tuning_space", spy)
    monkeypatch.setattr(recsched.engine, "cuda_available", lambda: False)
    fake = _Surface()
    doc = tune_mod.tune(fake, budget=2, duration=0.1)  # type: ignore[arg-type]
    assert spaces == [False]
    assert fake.configs[0] == EngineConfig(
        request="split", batch_size=1024, merge_delay_ms=0.0, lanes=CORES, threads_per_lane=1
    )  # the start, as before: no threshold, no accelerator lanes
    assert all(c.offload_threshold is None for c in fake.configs)
    assert "offload_threshold" not in doc["trajectory"][0]["config"]  # not a knob

    fake = _Surface()
    accel = {"offload_threshold": 64, "accel_lanes": 2}
    doc = tune_mod.tune(fake, budget=2, duration=0.1, refresh=True, **accel)  # type: ignore[arg-type]
    assert spaces[-1] is True
    assert fake.configs[0].offload_threshold == 64 and fake.configs[0].accel_lanes == 2
    assert doc["trajectory"][0]["config"]["offload_threshold"] == 64

    monkeypatch.setattr(recsched.engine, "cuda_available", lambda: True)
    tune_mod.tune(_Surface(), budget=2, duration=0.1, refresh=True)  # type: ignore[arg-type]
    assert spaces[-1] is True
    tune_mod.tune(_Surface(), budget=2, duration=0.1, operator="opstream", refresh=True)  # type: ignore[arg-type]
    assert spaces[-1] is False  # accelerator lanes run whole-model tasks only
