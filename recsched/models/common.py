"""What every zoo model shares: the `RecModel` base (input specs, id sources, coarse stages)
and strict config parsing (TOML dict -> frozen dataclass, unknown or mistyped keys refused).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from torch import nn

from recsched.models.base import InputSpec
from recsched.models.inputs import IdSource

C = TypeVar("C")


class RecModel(nn.Module):
    """A zoo model: `forward(x: dict[str, Tensor]) -> Tensor [B, out_dim]`, rows independent.

    `coarse_stages` are the qualified names of the sub-modules that are the coarse operators
    (anything else is traced through). `input_specs()` is exact: validation relies on it.
    """

    coarse_stages: tuple[str, ...]
    out_dim: int
    config_class: ClassVar[type]

    def input_specs(self) -> tuple[InputSpec, ...]:
        raise NotImplementedError

    def id_sources(self) -> tuple[IdSource, ...]:
        raise NotImplementedError

    def tables(self) -> dict[str, nn.Module]:
        """Embedding tables by qualified name (`sparse_arch.t0`, ...)."""
        return {f"sparse_arch.{k}": m for k, m in self.get_submodule("sparse_arch").items()}


def _check_type(cls: type, name: str, hint: str, value: Any) -> Any:
    """Coerce/check one config value against its annotation (int, float, str, bool, tuples)."""

    def bad() -> ValueError:
        return ValueError(f"{cls.__name__}.{name}: expected {hint}, got {value!r}")

    if hint == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if hint == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad()
        return float(value)
    if hint == "str":
        if not isinstance(value, str):
            raise bad()
        return value
    if hint == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    if hint == "tuple[int, ...]":
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise bad()
        return tuple(value)
    raise AssertionError(f"unsupported config annotation {hint} for {name}")


def config_from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
    """Build the frozen config dataclass `cls` from `values`, refusing unknown keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} field(s) {unknown}; known: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _check_type(cls, k, str(fields[k].type), v) for k, v in values.items()}
    return cls(**kwargs)


def positive(cls_name: str, **values: int) -> None:
    """Raise ValueError naming the first non-positive value."""
    for k, v in values.items():
        if v <= 0:
            raise ValueError(f"{cls_name}.{k} must be > 0, got {v}")
