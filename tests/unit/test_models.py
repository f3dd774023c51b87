"""The DeepRecInfra model zoo: configs, shapes, determinism, row independence, masking,
validation, memory refusal, and the Zipf inputs. Tables are capped small for speed."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from recsched.models import (
    InputError,
    ModelTooLarge,
    list_models,
    load_model,
    model_config,
    model_memory_bytes,
    registry,
    slice_rows,
    validate_inputs,
)
from recsched.models.base import InputSpec, ModelAdapter
from recsched.models.dien import AUGRU
from recsched.models.inputs import IdSource, InputMaker

ROWS = 2000  # every table capped for speed (same architecture)
NAMES = ["rmc1", "rmc2", "rmc3", "ncf", "wnd", "mtwnd", "din", "dien"]
PROB_MODELS = {"rmc1", "rmc2", "rmc3", "ncf", "wnd", "mtwnd"}  # sigmoid outputs
SOFTMAX_MODELS = {"din", "dien"}


@functools.cache
def model(name: str, seed: int = 0, **overrides: object) -> ModelAdapter:
    return load_model(name, seed=seed, max_rows=ROWS, **overrides)


def score(m: ModelAdapter, x: dict[str, torch.Tensor]) -> torch.Tensor:
    return m.forward(x)


# --- the catalogue and its configs -------------------------------------------------------


def test_list_models_in_issue_order() -> None:
    assert list_models() == NAMES


def test_paper_configs_match_the_deeprecinfra_table() -> None:
    c = model_config("rmc1", "paper")
    assert (c.num_tables, c.rows, c.dim, c.lookups, c.dense_in) == (8, 4_000_000, 32, 80, 128)
    assert (c.bottom_mlp, c.top_mlp, c.interaction) == ((64, 32), (256, 64, 1), "cat")
    c = model_config("rmc2", "paper")
    assert (c.num_tables, c.rows, c.dim, c.lookups, c.dense_in) == (32, 500_000, 64, 120, 256)
    assert (c.bottom_mlp, c.top_mlp) == ((128, 64), (128, 64, 1))
    c = model_config("rmc3", "paper")
    assert (c.num_tables, c.rows, c.dim, c.lookups, c.dense_in) == (10, 2_000_000, 32, 20, 2560)
    assert (c.bottom_mlp, c.top_mlp) == ((1024, 256, 32), (512, 256, 1))
    c = model_config("ncf", "paper")
    assert (c.user_rows, c.item_rows, c.dim, c.mlp) == (140_000, 28_000, 64, (256, 256, 128, 64))
    c = model_config("wnd", "paper")
    assert (c.num_tables, c.rows, c.dim, c.dense_in) == (27, 1_000_000, 32, 512)
    assert c.top_mlp == (1024, 512, 256, 1)
    c = model_config("mtwnd", "paper")
    assert (c.num_tables, c.rows, c.num_large_tables, c.large_rows) == (41, 500_000, 2, 5_000_000)
    assert (c.shared_mlp, c.task_mlp, c.n_tasks) == ((1024, 512), (512, 256, 128, 1), 3)
    c = model_config("din", "paper")
    rows = (c.profile_rows, c.behaviour_rows, c.ad_rows, c.context_rows)
    assert rows == (1_000_000, 100_000, 10_000_000, 10_000_000)
    assert (c.dim, c.seq_len, c.top_mlp) == (32, 250, (200, 80, 2))
    c = model_config("dien", "paper")
    rows = (c.profile_rows, c.behaviour_rows, c.ad_rows, c.context_rows)
    assert rows == (500_000, 500_000, 5_000_000, 5_000_000)
    assert (c.dim, c.seq_len, c.hidden, c.top_mlp) == (32, 40, 64, (200, 80, 2))


def test_small_scale_caps_every_table_and_keeps_the_architecture() -> None:
    for name in NAMES:
        paper, small = model_config(name, "paper"), model_config(name, "small")
        for field, value in vars(small).items():
            if field == "rows" or field.endswith("_rows"):
                assert value == min(getattr(paper, field), 100_000), (name, field)
            else:
                assert value == getattr(paper, field), (name, field)


def test_unknown_names_scales_and_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="known models: rmc1, rmc2, rmc3, ncf"):
        load_model("rmc9")
    with pytest.raises(ValueError, match="unknown scale"):
        model_config("rmc1", "huge")
    with pytest.raises(ValueError, match="unknown DLRMConfig field"):
        model_config("rmc1", n_tasks=2)
    with pytest.raises(ValueError, match="interaction"):
        model_config("rmc1", interaction="sum")
    with pytest.raises(ValueError, match="expected int"):
        model_config("mtwnd", n_tasks="3")
    with pytest.raises(ValueError, match="bottom_mlp"):  # dot needs bottom output == dim
        model_config("rmc1", interaction="dot", bottom_mlp=[64, 16])


# --- every model: shapes, ranges, determinism, row independence ---------------------------


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_range(name: str) -> None:
    m = model(name)
    x = m.make_inputs(33, seed=1)
    y = score(m, x)
    assert y.shape == (33, m.out_dim) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert ((y > 0) & (y < 1)).all()
    if name in SOFTMAX_MODELS:
        assert m.out_dim == 2
        assert torch.allclose(y.sum(dim=1), torch.ones(33), atol=1e-5)
    else:
        assert m.out_dim == (3 if name == "mtwnd" else 1)
    assert y.std(dim=0).min() > 1e-4, "scores do not depend on the inputs"


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_weights_inputs_and_scores(name: str) -> None:
    a = model(name)
    b = load_model(name, seed=0, max_rows=ROWS)
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    xa, xb = a.make_inputs(20, 7), b.make_inputs(20, 7)
    assert all(torch.equal(xa[k], xb[k]) for k in xa)
    assert torch.equal(score(a, xa), score(b, xb))
    c = model(name, seed=1)
    assert not torch.equal(score(a, xa), score(c, xa)), "the seed does not reach the weights"
    xc = a.make_inputs(20, 8)
    assert any(not torch.equal(xa[k], xc[k]) for k in xa)


@pytest.mark.parametrize("name", NAMES)
def test_rows_are_independent(name: str) -> None:
    m = model(name)
    x = m.make_inputs(37, seed=3)
    whole = score(m, x)
    parts = [score(m, slice_rows(x, a, b)) for a, b in ((0, 1), (1, 10), (10, 37))]
    assert torch.allclose(torch.cat(parts), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_module_layout_for_operator_graphs(name: str) -> None:
    m = model(name)
    mod = m.module
    assert not mod.training and not any(p.requires_grad for p in mod.parameters())
    stages = mod.coarse_stages
    assert len(set(stages)) == len(stages)
    for s in stages:
        mod.get_submodule(s)  # raises if the name is wrong
    tables = [
        n for n, sub in mod.named_modules() if isinstance(sub, nn.EmbeddingBag | nn.Embedding)
    ]
    assert tables and all(t.startswith("sparse_arch.") and t in stages for t in tables)
    assert m.info["tables"] == len(tables)
    for mlp in ("over_arch",):
        assert mlp in stages
    # torch.fx traces it and the traced graph computes the same scores
    gm = torch.fx.symbolic_trace(mod)
    x = m.make_inputs(9, seed=2)
    with torch.inference_mode():
        assert torch.allclose(gm(x), mod(x), rtol=1e-5, atol=1e-6)


def test_info_describes_the_model() -> None:
    m = model("rmc1")
    info = m.info
    assert info["scale"] == "small" and info["dim"] == 32 and info["tables"] == 8
    assert info["rows"] == 8 * ROWS
    assert info["params"] == sum(p.numel() for p in m.module.parameters())
    assert info["bytes"] == 4 * info["params"] == model_memory_bytes("rmc1", max_rows=ROWS)


# --- model-specific behaviour --------------------------------------------------------------


def test_dlrm_dot_and_cat_interactions() -> None:
    cat, dot = model("rmc1"), model("rmc1", interaction="dot")
    assert type(cat.module.interaction).__name__ == "CatInteraction"
    assert type(dot.module.interaction).__name__ == "DotInteraction"
    # cat: 32 + 8 * 32 features into the top MLP; dot: 32 + 9 * 8 / 2
    assert cat.module.over_arch[0].in_features == 32 + 8 * 32
    assert dot.module.over_arch[0].in_features == 32 + 36
    x = cat.make_inputs(16, seed=0)
    yc, yd = score(cat, x), score(dot, x)
    assert yc.shape == yd.shape == (16, 1) and not torch.allclose(yc, yd)
    assert ((yd > 0) & (yd < 1)).all()


def test_dot_interaction_is_the_lower_triangle_of_the_gram_matrix() -> None:
    inter = model("rmc1", interaction="dot").module.interaction
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(4, 32, generator=g)
    sparse = [torch.randn(4, 32, generator=g) for _ in range(8)]
    out = inter(dense, sparse)
    vecs = [dense, *sparse]
    expect = [(vecs[i] * vecs[j]).sum(1) for i in range(9) for j in range(i)]
    assert torch.allclose(out[:, :32], dense)
    assert torch.allclose(out[:, 32:], torch.stack(expect, dim=1), atol=1e-5)


def test_mtwnd_task_count() -> None:
    two = model("mtwnd", n_tasks=2)
    assert two.out_dim == 2 and len(two.module.heads) == 2
    assert "heads.1" in two.module.coarse_stages and "heads.2" not in two.module.coarse_stages
    y = score(two, two.make_inputs(5, seed=0))
    assert y.shape == (5, 2)
    assert model("mtwnd").module.wide.out_features == 3


def test_ncf_fuses_gmf_with_the_mlp_tower() -> None:
    mod = model("ncf").module
    assert mod.over_arch.predict.in_features == 64 + 64  # GMF [64] + tower output [64]
    widths = [lin.out_features for lin in mod.mlp_tower.mlp if isinstance(lin, nn.Linear)]
    assert widths == [256, 256, 128, 64] and mod.mlp_tower.mlp[0].in_features == 128


@pytest.mark.parametrize("name", ["din", "dien"])
def test_behaviours_past_the_history_length_are_masked(name: str) -> None:
    m = model(name)
    x = m.make_inputs(16, seed=4)
    seq = x["hist"].shape[1]
    x["hist_len"] = torch.randint(1, seq, (16,), generator=torch.Generator().manual_seed(0))
    base = score(m, x)
    cols = torch.arange(seq).unsqueeze(0)
    past = cols >= x["hist_len"].unsqueeze(1)
    beyond = dict(x, hist=torch.where(past, (x["hist"] + 17) % ROWS, x["hist"]))
    assert torch.allclose(score(m, beyond), base, rtol=1e-5, atol=1e-6)
    within = dict(x, hist=torch.where(~past, (x["hist"] + 17) % ROWS, x["hist"]))
    assert not torch.allclose(score(m, within), base, rtol=1e-4, atol=1e-5)
    longer = dict(x, hist_len=x["hist_len"] + 1)  # one more behaviour counts
    assert not torch.allclose(score(m, longer), base, rtol=1e-4, atol=1e-5)


def test_augru_with_attention_one_is_a_gru_and_with_zero_keeps_its_state() -> None:
    torch.manual_seed(0)
    H, S, B = 8, 5, 3
    augru = AUGRU(H, S)
    states = torch.randn(B, S, H)
    # PyTorch's GRU keeps z * h; AUGRU keeps (1 - u) * h: negate the update-gate rows.
    cell = nn.GRUCell(H, H)
    flip = torch.ones(3 * H, 1)
    flip[H : 2 * H] = -1
    with torch.no_grad():
        cell.weight_ih.copy_(augru.x2h.weight * flip)
        cell.bias_ih.copy_(augru.x2h.bias * flip[:, 0])
        cell.weight_hh.copy_(augru.h2h.weight * flip)
        cell.bias_hh.copy_(augru.h2h.bias * flip[:, 0])
        h = torch.zeros(B, H)
        for t in range(S):
            h = cell(states[:, t], h)
        assert torch.allclose(augru(states, torch.ones(B, S)), h, atol=1e-5)
        assert torch.equal(augru(states, torch.zeros(B, S)), torch.zeros(B, H))


def test_dien_runs_with_its_gru_stages() -> None:
    m = model("dien")
    mod = m.module
    assert (
        isinstance(mod.interest_extractor.gru, nn.GRU)
        and mod.interest_extractor.gru.hidden_size == 64
    )
    assert (
        mod.augru.seq_len == 40
        and len([k for k in mod.sparse_arch if k.startswith("behaviour")]) == 40
    )
    y = score(m, m.make_inputs(3, seed=0))
    assert y.shape == (3, 2)


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_make_inputs_pass_validation(name: str) -> None:
    m = model(name)
    x = m.make_inputs(11, seed=5)
    assert validate_inputs(m.inputs, x) == 11
    for spec in m.inputs:
        assert x[spec.name].shape == (11, *spec.shape)


def test_validation_names_the_bad_input() -> None:
    m = model("rmc1")
    x = m.make_inputs(4, seed=0)
    bad = dict(x, sparse=x["sparse"].clone())
    bad["sparse"][2, 3, 1] = ROWS  # one past the last row
    with pytest.raises(InputError, match="input 'sparse': index out of range"):
        validate_inputs(m.inputs, bad)
    with pytest.raises(InputError, match="input 'sparse': dtype torch.int32"):
        validate_inputs(m.inputs, dict(x, sparse=x["sparse"].int()))
    nan = x["dense"].clone()
    nan[1, 5] = float("nan")
    with pytest.raises(InputError, match="input 'dense': contains NaN"):
        validate_inputs(m.inputs, dict(x, dense=nan))
    d = model("din")
    xd = d.make_inputs(4, seed=0)
    with pytest.raises(InputError, match="input 'hist_len'"):
        validate_inputs(d.inputs, dict(xd, hist_len=torch.zeros(4, dtype=torch.int64)))


# --- memory -------------------------------------------------------------------------------


def test_paper_scale_sizes_without_building() -> None:
    assert 4.0e9 < model_memory_bytes("rmc1", "paper") < 4.2e9  # 8 x 4M x 32 x 4 B + MLPs
    emb = (41 * 500_000 + 2 * 5_000_000) * 32 * 4
    assert emb < model_memory_bytes("mtwnd", "paper") < emb * 1.01


def test_a_scale_that_does_not_fit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "available_memory_bytes", lambda: 1_000_000_000)
    needed = model_memory_bytes("rmc1", "paper")
    with pytest.raises(ModelTooLarge) as err:
        load_model("rmc1", scale="paper")
    msg = str(err.value)
    assert "'rmc1'" in msg and f"{needed:,} bytes" in msg and "1,000,000,000 bytes" in msg
    # small scale still fits in the same budget
    assert load_model("ncf", max_rows=ROWS).out_dim == 1


# --- synthetic inputs ---------------------------------------------------------------------


def _ids(zipf: float, rows: int = 10_000, n: int = 2000, seed: int = 0, key: str = "m"):
    spec = InputSpec("ids", (2, 50), torch.int64, "index", 0, rows)
    maker = InputMaker([spec], [IdSource("ids", ("a", "b"), rows, 50)], zipf=zipf, key=key)
    return maker(n, seed)["ids"]


def _top_share(ids: torch.Tensor, rows: int, frac: float = 0.01) -> float:
    counts = np.bincount(ids.reshape(-1).numpy(), minlength=rows)
    top = np.sort(counts)[::-1][: int(rows * frac)]
    return float(top.sum() / counts.sum())


def test_zipf_ids_are_skewed_and_scattered() -> None:
    ids = _ids(1.05)
    assert ids.min() >= 0 and ids.max() < 10_000
    table_a = ids[:, 0]
    assert _top_share(table_a, 10_000) > 0.45  # top 1% of rows take about half the lookups
    assert _top_share(_ids(0.0)[:, 0], 10_000) < 0.05  # exponent 0: uniform
    counts = np.bincount(table_a.reshape(-1).numpy(), minlength=10_000)
    hottest = np.argsort(counts)[::-1][:100]
    assert (hottest >= 100).sum() > 50, "hot rows are not scattered over the table"
    hot_b = np.argsort(np.bincount(ids[:, 1].reshape(-1).numpy(), minlength=10_000))[::-1][:20]
    assert len(set(hottest[:20]) & set(hot_b)) < 5, "tables share their hot rows"


def test_zipf_ids_are_deterministic() -> None:
    assert torch.equal(_ids(1.05, seed=3), _ids(1.05, seed=3))
    assert not torch.equal(_ids(1.05, seed=3), _ids(1.05, seed=4))
    assert not torch.equal(_ids(1.05, key="x"), _ids(1.05, key="y"))
    with pytest.raises(ValueError, match="zipf"):
        _ids(-1.0)


def test_sequence_lengths_cover_their_range() -> None:
    x = model("din").make_inputs(4000, seed=0)
    assert x["hist_len"].min() == 1 and x["hist_len"].max() == 250
