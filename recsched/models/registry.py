"""The DeepRecInfra model zoo: names, configs (TOML package data), memory checks, building.

    load_model("rmc1")                               small scale, seed 0, Zipf 1.05
    load_model("rmc1", interaction="dot")            a config field overridden
    load_model("dien", scale="small", max_rows=1000) tables capped further (fast tests)

Scales: `paper` is the DeepRecSys table; `small` caps every table at 100_000 rows (same
architecture). A scale whose parameters do not fit in the available memory is refused before
anything is allocated (the size is measured by building the model on the `meta` device).
"""

from __future__ import annotations

import dataclasses
import importlib
import tomllib
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import psutil
import torch

from recsched.models.base import Inputs, InputSpec, ModelAdapter
from recsched.models.common import RecModel, config_from_dict
from recsched.models.dien import DIEN
from recsched.models.din import DIN
from recsched.models.dlrm import DLRM
from recsched.models.inputs import IdSource, InputMaker
from recsched.models.layers import init_weights
from recsched.models.ncf import NCF
from recsched.models.wnd import MultiTaskWnD, WideAndDeep

MODELS: tuple[str, ...] = ("rmc1", "rmc2", "rmc3", "ncf", "wnd", "mtwnd", "din", "dien")
ARCHS: dict[str, type[RecModel]] = {
    "dlrm": DLRM,
    "ncf": NCF,
    "wnd": WideAndDeep,
    "mtwnd": MultiTaskWnD,
    "din": DIN,
    "dien": DIEN,
}
SCALES: dict[str, int | None] = {"paper": None, "small": 100_000}
MEMORY_FRACTION = 0.9  # refuse a model whose parameters exceed this share of available memory


class ModelTooLarge(MemoryError):
    """The model at this scale does not fit in the available memory."""


def list_models() -> list[str]:
    """The eight DeepRecInfra models, in the DeepRecSys order."""
    return list(MODELS)


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; known scales: {', '.join(SCALES)}")


def model_toml(name: str) -> dict[str, Any]:
    """The raw TOML of a model: `arch`, `description`, `[config]`."""
    _check_name(name)
    text = resources.files("recsched.models").joinpath("configs", f"{name}.toml").read_text()
    data = tomllib.loads(text)
    assert data.get("arch") in ARCHS and isinstance(data.get("config"), dict), name
    return data


def _is_rows(field: str) -> bool:
    return field == "rows" or field.endswith("_rows")


def model_config(name: str, scale: str = "small", **overrides: Any) -> Any:
    """The frozen config dataclass of `name` at `scale`, with `overrides` applied.

    `max_rows=N` (an override that is not a config field) caps every table at N rows, on top
    of the scale's cap. Unknown or mistyped overrides raise ValueError.
    """
    _check_name(name)
    _check_scale(scale)
    max_rows = overrides.pop("max_rows", None)
    caps = [c for c in (SCALES[scale], max_rows) if c is not None]
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in caps):
        raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")
    data = model_toml(name)
    values = dict(data["config"])
    values.update(overrides)
    if caps:
        cap = min(caps)
        values = {
            k: min(v, cap) if _is_rows(k) and isinstance(v, int) else v for k, v in values.items()
        }
    return config_from_dict(ARCHS[data["arch"]].config_class, values)


def _model_class(name: str) -> type[RecModel]:
    return ARCHS[model_toml(name)["arch"]]


def _module_bytes(module: torch.nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def model_memory_bytes(name: str, scale: str = "small", **overrides: Any) -> int:
    """Bytes of parameters and buffers of `name` at `scale`, measured without allocating."""
    cfg = model_config(name, scale, **overrides)
    with torch.device("meta"):
        module = _model_class(name)(cfg)
    return _module_bytes(module)


def available_memory_bytes() -> int:
    """Memory the OS can give without swapping (MemAvailable)."""
    return int(psutil.virtual_memory().available)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB ({n:,} bytes)"


def check_fits(name: str, scale: str, needed: int) -> None:
    """Raise `ModelTooLarge` if `needed` bytes exceed the usable share of available memory."""
    available = available_memory_bytes()
    if needed > MEMORY_FRACTION * available:
        raise ModelTooLarge(
            f"model {name!r} at scale {scale!r} needs {_gb(needed)} for its parameters, "
            f"but only {_gb(available)} of memory is available "
            f"(limit {MEMORY_FRACTION:.0%} of it); use scale='small' or a smaller max_rows"
        )


def build_module(name: str, scale: str = "small", seed: int = 0, **overrides: Any) -> RecModel:
    """The `nn.Module` of `name`, weights from `seed`, in eval mode without gradients."""
    needed = model_memory_bytes(name, scale, **overrides)
    check_fits(name, scale, needed)
    cfg = model_config(name, scale, **overrides)
    module = _model_class(name)(cfg)
    init_weights(module, torch.Generator().manual_seed(int(seed)))
    module.eval().requires_grad_(False)
    assert _module_bytes(module) == needed, "meta estimate disagrees with the built model"
    return module


def _info(name: str, scale: str, module: RecModel) -> dict[str, object]:
    tables = module.tables()
    cfg = module.cfg  # type: ignore[attr-defined]
    return {
        "arch": model_toml(name)["arch"],
        "description": model_toml(name)["description"],
        "scale": scale,
        "params": sum(p.numel() for p in module.parameters()),
        "bytes": _module_bytes(module),
        "tables": len(tables),
        "rows": sum(int(t.weight.shape[0]) for t in tables.values()),
        "dim": cfg.dim,
        "config": dataclasses.asdict(cfg),
        "coarse_stages": list(module.coarse_stages),
    }


def load_model(
    name: str, scale: str = "small", seed: int = 0, zipf: float = 1.05, **overrides: Any
) -> ModelAdapter:
    """A servable zoo model: module (eval), exact input specs, `make_inputs(n, seed)`, info.

    `overrides` change config fields (e.g. `interaction="dot"`, `n_tasks=2`, `max_rows=1000`).
    Raises ValueError for an unknown model, scale or field; `ModelTooLarge` if it won't fit.
    A name registered with `register_model`, or `package.module:factory`, loads your own model.
    """
    custom = load_custom(name, scale, seed)
    if custom is not None:
        return custom
    module = build_module(name, scale, seed, **overrides)
    specs = module.input_specs()
    maker = InputMaker(specs, module.id_sources(), zipf=zipf, key=name)
    return ModelAdapter(
        name=name,
        module=module,
        inputs=specs,
        make_inputs=maker,
        out_dim=module.out_dim,
        info=_info(name, scale, module),
    )


# -- bring your own model --------------------------------------------------------------------

_CUSTOM: dict[str, Callable[..., ModelAdapter]] = {}


def adapter_for(
    name: str,
    module: torch.nn.Module,
    inputs: Sequence[InputSpec],
    *,
    out_dim: int = 1,
    make_inputs: Callable[[int, int], Inputs] | None = None,
    id_sources: Sequence[IdSource] = (),
    zipf: float = 1.05,
    info: dict[str, Any] | None = None,
) -> ModelAdapter:
    """Wrap any `nn.Module` taking `dict[str, Tensor]` (batch-first, rows independent) so it
    is served, scheduled, profiled and simulated like the zoo models.

    Without `make_inputs`, synthetic inputs follow the specs: dense N(0, 1), index inputs
    uniform in `[low, high)`, or Zipf for inputs named in `id_sources`.
    """
    module = module.eval()
    specs = tuple(inputs)
    maker = make_inputs or InputMaker(specs, tuple(id_sources), zipf=zipf, key=name)
    params = sum(p.numel() for p in module.parameters())
    meta = {"params": params, "bytes": 4 * params, "scale": "custom", "tables": 0, "rows": 0}
    meta["dim"] = 0
    return ModelAdapter(name, module, specs, maker, out_dim, {**meta, **(info or {})})


def register_model(name: str, factory: Callable[..., ModelAdapter]) -> None:
    """Make `load_model(name, scale=..., seed=...)` (and so every CLI command) find a model of
    yours: `factory(scale=..., seed=...)` returns a ModelAdapter (see `adapter_for`)."""
    if name in MODELS:
        raise ValueError(f"{name!r} is a built-in model; pick another name")
    _CUSTOM[name] = factory


def load_custom(name: str, scale: str, seed: int) -> ModelAdapter | None:
    """A registered model, or `package.module:factory` imported and called; None otherwise."""
    if name in _CUSTOM:
        return _CUSTOM[name](scale=scale, seed=seed)
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load model factory {name!r}: {exc}") from exc
        adapter = factory(scale=scale, seed=seed)
        if not isinstance(adapter, ModelAdapter):
            raise ValueError(f"{name!r} returned {type(adapter).__name__}, not a ModelAdapter")
        return adapter
    return None
