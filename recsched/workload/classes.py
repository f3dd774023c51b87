"""Priority classes: parse `--classes` specs and assign a class to each query.

Spec grammar (comma-separated classes)::

    NAME:SHARE[:VALUE[:SLA]]        e.g.  high:0.2:10:20ms,low:0.8:1:100ms
    SLA := NUMBER(ms|s)[@pPERCENTILE]     e.g.  20ms, 0.02s, 20ms@p99, 1s@p99.9

SHARE is the class's fraction of queries; shares must be >= 0 and sum to 1 (within 1%),
then they are normalised exactly. VALUE is the commercial value weight (default 1).
SLA is optional: without it the run's `--sla-ms`/`--sla-x` applies to the class. The SLA
percentile defaults to p95 (DeepRecSys's tail target).
"""

from __future__ import annotations

import math
import re

import numpy as np

from recsched.types import DEFAULT_CLASS, PriorityClass

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_SLA = re.compile(r"^(?P<num>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)(?P<unit>ms|s)(?:@p(?P<pct>.+))?$")
SHARE_TOLERANCE = 0.01


class ClassSpecError(ValueError):
    """A `--classes` spec is malformed; the message names the offending part."""


def parse_sla(text: str) -> tuple[float, float]:
    """Parse an SLA such as `20ms`, `0.02s` or `20ms@p99` into `(sla_ms, percentile)`."""
    m = _SLA.match(text.strip())
    if m is None:
        raise ClassSpecError(
            f"SLA '{text}': expected a number with a unit and an optional percentile, "
            "like 20ms, 0.02s or 20ms@p99"
        )
    sla_ms = float(m["num"]) * (1000.0 if m["unit"] == "s" else 1.0)
    if not (math.isfinite(sla_ms) and sla_ms > 0):
        raise ClassSpecError(f"SLA '{text}': must be a positive time")
    pct = 95.0
    if m["pct"] is not None:
        try:
            pct = float(m["pct"])
        except ValueError:
            raise ClassSpecError(f"SLA '{text}': percentile '{m['pct']}' is not a number") from None
        if not 0.0 < pct < 100.0:
            raise ClassSpecError(f"SLA '{text}': percentile must be in (0, 100), got {pct:g}")
    return sla_ms, pct


def _number(part: str, what: str, cls_text: str) -> float:
    try:
        x = float(part)
    except ValueError:
        raise ClassSpecError(f"class '{cls_text}': {what} '{part}' is not a number") from None
    if not math.isfinite(x) or x < 0:
        raise ClassSpecError(f"class '{cls_text}': {what} must be finite and >= 0, got {part}")
    return x


def _parse_one(text: str) -> PriorityClass:
    parts = text.strip().split(":")
    if not 2 <= len(parts) <= 4:
        raise ClassSpecError(
            f"class '{text}': expected NAME:SHARE[:VALUE[:SLA]], got {len(parts)} fields"
        )
    name = parts[0].strip()
    if not _NAME.match(name):
        raise ClassSpecError(f"class '{text}': name '{name}' must be letters, digits, _ . -")
    share = _number(parts[1], "share", text)
    value = _number(parts[2], "value", text) if len(parts) > 2 else 1.0
    sla_ms, pct = (None, 95.0)
    if len(parts) > 3:
        try:
            sla_ms, pct = parse_sla(parts[3])
        except ClassSpecError as e:
            raise ClassSpecError(f"class '{text}': {e}") from None
    return PriorityClass(name, share, value, sla_ms, pct)


def parse_classes(spec: str | None) -> tuple[PriorityClass, ...]:
    """Parse a `--classes` spec. `None` or `""` gives the single `DEFAULT_CLASS`."""
    if spec is None or not spec.strip():
        return (DEFAULT_CLASS,)
    classes = [_parse_one(t) for t in spec.split(",")]
    names = [c.name for c in classes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ClassSpecError(f"classes '{spec}': duplicate name(s) {', '.join(dup)}")
    total = sum(c.share for c in classes)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise ClassSpecError(
            f"classes '{spec}': shares sum to {total:g}, expected 1 (within {SHARE_TOLERANCE:g})"
        )
    return tuple(
        PriorityClass(c.name, c.share / total, c.value, c.sla_ms, c.percentile) for c in classes
    )


def format_classes(classes: tuple[PriorityClass, ...]) -> str:
    """The spec string that `parse_classes` maps back to `classes` (shares to 17 digits)."""
    out = []
    for c in classes:
        s = f"{c.name}:{c.share!r}:{c.value!r}"
        if c.sla_ms is not None:
            s += f":{c.sla_ms!r}ms"
            if c.percentile != 95.0:
                s += f"@p{c.percentile!r}"
        out.append(s)
    return ",".join(out)


def assign_classes(
    n: int, classes: tuple[PriorityClass, ...], rng: np.random.Generator
) -> np.ndarray:
    """Draw `n` class indices (int64, into `classes`) i.i.d. with the classes' shares."""
    assert n >= 0 and len(classes) >= 1
    if len(classes) == 1:
        return np.zeros(n, dtype=np.int64)
    p = np.array([c.share for c in classes], dtype=np.float64)
    assert np.all(p >= 0) and p.sum() > 0, "class shares must be >= 0 and not all zero"
    cdf = np.cumsum(p / p.sum())
    cdf[-1] = 1.0
    idx = np.searchsorted(cdf, rng.random(n), side="right").astype(np.int64)
    return np.minimum(idx, len(classes) - 1)
