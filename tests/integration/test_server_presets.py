"""`recsched serve --preset deeprecsched|opstream`: the server serves what the measuring
commands would measure (the tuner's cached knobs; OpStream with the profiled cost model),
not the presets' untuned defaults. Loopback only; the tuner's cache in a temporary directory.
"""

from __future__ import annotations

import httpx
import pytest

from recsched.bench.setup import Setup
from recsched.config import preset
from recsched.graph.cost import CostModel
from recsched.server.app import BackgroundServer, RecschedServer, ServerConfig
from recsched.server.cli import preset_resolver
from tests.byo_model import make_deepfm
from tests.integration.test_server import body_for, tiny_adapter
from tests.tuned import cache_tuned

SLA_MS = 50.0
TUNED = {"request": "split", "batch_size": 64, "merge_delay_ms": 0.0, "order": "size"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSCHED_CACHE", str(tmp_path))
    return tmp_path


def put_tuned(adapter, knobs: dict) -> None:
    """Store `knobs` as the tuned configuration `recsched tune` would have cached."""
    cache_tuned(Setup.make(adapter.name, sla_ms=SLA_MS, adapter=adapter), knobs)


def test_resolver_serves_the_tuned_knobs_and_refuses_a_miss(cache):
    ad = tiny_adapter()
    configure = preset_resolver("small", 0, None, SLA_MS)
    with pytest.raises(ValueError, match="recsched tune tiny"):
        configure("tiny", ad, preset("deeprecsched"))  # nothing cached, and no tuning now
    put_tuned(ad, TUNED)
    cfg, extras = configure("tiny", ad, preset("deeprecsched"))
    assert {k: getattr(cfg, k) for k in TUNED} == TUNED and extras == {}
    # a field the command line set stays (`--lanes`)
    keep = preset_resolver("small", 0, None, SLA_MS, keep=("lanes",))
    tuned_lanes = {**TUNED, "lanes": 1}
    put_tuned(ad, tuned_lanes)
    assert configure("tiny", ad, preset("deeprecsched"))[0].lanes == 1
    assert keep("tiny", ad, preset("deeprecsched", lanes=2))[0].lanes == 2
    # presets that name only their fields pass through untouched, without a Setup
    plain = preset("dynamic", batch_size=8)
    assert configure("tiny", ad, plain) == (plain, {})


def test_resolver_gives_opstream_the_profiled_cost_model(cache):
    ad = make_deepfm()  # (a graph needs a model torch.fx can trace)
    put_tuned(ad, TUNED)
    configure = preset_resolver("small", 0, None, SLA_MS)
    cfg, extras = configure("deepfm", ad, preset("opstream"))
    assert cfg.operator == "opstream" and cfg.batch_size == 64
    assert isinstance(extras["cost"], CostModel) and extras["graph"] is not None
    # `auto` granularity: chosen from the profile, and the graph served is the one chosen
    assert cfg.granularity in ("model", "coarse", "fine")
    assert extras["graph"].info.granularity == cfg.granularity


def test_server_serves_the_tuned_configuration_and_refuses_an_untuned_reconfigure(cache):
    ad = tiny_adapter()
    put_tuned(ad, TUNED)
    configure = preset_resolver("small", 0, None, SLA_MS)
    start = preset("deeprecsched", compiled=False)
    rs = RecschedServer({"tiny": ad}, start, ServerConfig(configure=configure), token="t0k")
    auth = {"Authorization": "Bearer t0k"}
    assert rs.hosts["tiny"].config.batch_size == 64  # resolved when the model was loaded
    with BackgroundServer(rs) as bg, httpx.Client(base_url=bg.url, timeout=30) as client:
        cfg = "/v2/recsched/models/tiny/config"
        assert client.get(cfg).json()["engine"]["batch_size"] == 64
        body, headers, _ = body_for(n=5)
        assert client.post("/v2/models/tiny/infer", content=body, headers=headers).is_success
        # the Triton config says what is served
        mc = client.get("/v2/models/tiny/config").json()
        assert mc["dynamic_batching"]["preferred_batch_size"] == [64]
        # back to the tuned preset after a manual change: from the cache again
        r = client.post(cfg, json={"batch_size": 16}, headers=auth)
        assert r.json()["engine"]["batch_size"] == 16
        r = client.post(cfg, json={"preset": "deeprecsched", "compiled": False}, headers=auth)
        assert r.status_code == 200 and r.json()["engine"]["batch_size"] == 64
        for f in (cache / "tuned").iterdir():  # the cache is gone: refused, nothing changed
            f.unlink()
        r = client.post(cfg, json={"preset": "deeprecsched"}, headers=auth)
        assert r.status_code == 400 and "recsched tune tiny" in r.json()["error"]
        assert client.get(cfg).json()["engine"]["batch_size"] == 64
        assert client.post("/v2/models/tiny/infer", content=body, headers=headers).is_success


def test_serve_refuses_an_offload_threshold_without_cuda(monkeypatch):
    from typer.testing import CliRunner

    import recsched.models.registry as registry
    from recsched.cli import app

    def no_loading(*a, **k):
        raise AssertionError("refused after loading the model")

    monkeypatch.setattr(registry, "load_model", no_loading)
    monkeypatch.setattr("recsched.engine.cuda_available", lambda: False)
    res = CliRunner().invoke(app, ["serve", "rmc1", "--offload-threshold", "200"])
    assert res.exit_code == 2, res.output
    assert "--offload-threshold needs a CUDA device" in res.output


def test_a_tuned_offload_threshold_reaches_only_the_sequential_presets(cache):
    """(Tuned on a CUDA machine.) Accelerator lanes run whole-model tasks only, so the
    operator-level presets that reuse the tuned knobs must not inherit the threshold."""
    ad = tiny_adapter()
    put_tuned(ad, {**TUNED, "offload_threshold": 128})
    s = Setup.make("tiny", sla_ms=SLA_MS, adapter=ad)
    assert s.resolve(preset("deeprecsched")).offload_threshold == 128
    assert s.resolve(preset("opstream")).offload_threshold is None
    assert s.resolve(preset("opstream")).batch_size == 64
    # a model torch.fx cannot trace has no operators to choose among: `model`
    assert s.resolve(preset("opstream")).granularity == "model"
