"""`--presets-file`: named presets from TOML, checked when read, usable by every command."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsched.bench.setup import Setup, default_lanes, register_presets
from recsched.cli import app
from recsched.config import BUILTIN_PRESETS, PRESETS, load_presets, preset

EXAMPLE = Path(__file__).parents[2] / "examples" / "presets.toml"


@pytest.fixture(autouse=True)
def _restore_presets():
    saved = dict(PRESETS)
    yield
    PRESETS.clear()
    PRESETS.update(saved)


def test_the_example_file_registers_presets_on_their_bases():
    assert register_presets(EXAMPLE) == [
        "din-short", "opstream-no-pieces", "dynamic-1x2", "opstream-reserved"
    ]  # fmt: skip
    c = preset("din-short")
    assert (c.request, c.batch_size, c.operator) == ("split", 64, "opstream")
    assert c.granularity == "model"
    assert c.opstream == {"gate_frac": 0.05, "split_frac": 0.1}
    assert preset("opstream-no-pieces").opstream["split_cheaper"] is False
    r = preset("opstream-reserved")  # TOML's array arrives as the tuple the config keeps
    assert (r.lanes, r.lane_nice, r.opstream["reserved_lanes"]) == (3, (0, 10, 10), 1)
    assert set(BUILTIN_PRESETS) <= set(PRESETS)


def test_a_presets_own_lanes_are_kept_and_flags_still_win():
    register_presets(EXAMPLE)
    s = Setup.make("ncf", sla_ms=50.0)
    cfg = s.config("dynamic-1x2")
    assert (cfg.lanes, cfg.threads_per_lane, cfg.batch_size) == (1, 2, 512)
    assert s.config("dynamic-1x2", lanes=2).lanes == 2
    assert s.config("dynamic").lanes == default_lanes()[0]


@pytest.mark.parametrize(
    "text,says",
    [
        ('[baseline]\nrequest = "split"\n', "built-in preset"),
        ('[x]\npreset = "nosuch"\n', "unknown base preset 'nosuch'"),
        ("[x]\nbatchsize = 64\n", "unknown fields ['batchsize']"),
        ('[x]\nrequest = "bogus"\n', "unknown request policy"),
        ("[x]\nbatch_size = 0\n", "batch_size must be >= 1"),
        ("x = 1\n", "a preset is a table"),
        ("[x\n", "not TOML"),
        ('[x]\npreset = "opstream"\nopstream = { gate_fraction = 0.1 }\n', "unknown opstream"),
    ],
)
def test_a_bad_file_names_the_table_and_the_problem(tmp_path, text, says):
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(ValueError, match="p.toml") as exc:
        register_presets(f)
    assert says in str(exc.value)
    assert "x" not in PRESETS or text.startswith("[baseline]")


def test_load_presets_alone_leaves_opstream_names_to_the_engine(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('[x]\npreset = "opstream"\nopstream = { gate_fraction = 0.1 }\n')
    assert load_presets(f) == ["x"]  # checked by register_presets, or when an engine is made


def test_bench_serves_a_preset_from_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSCHED_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "p.toml"
    f.write_text('[tiny-split]\npreset = "split"\nbatch_size = 16\nlanes = 1\n')
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, [
        "bench", "ncf", "--preset", "tiny-split", "--presets-file", str(f), "--qps", "40",
        "--duration", "0.5", "--sla-ms", "500", "--json", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["config"]["batch_size"] == 16 and r["config"]["lanes"] == 1
    assert r["preset"] == "tiny-split" and r["failed"] == 0
