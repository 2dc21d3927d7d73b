"""The one place that pools per-tensor rows into per-module, per-layer and whole-model numbers.

Every consumer (the diff's summary, the terminal table, ``--plots``, the HTML report and the lab)
pools through :func:`pool` with one of three weightings, each the one right for its quantity,
and the weighting is in the aggregate field's name:

- ``params`` (fractions of *parameters*: the unchanged fractions of SPEC §2): Σ_t numel_t·f_t /
  Σ_t numel_t, the parameter-weighted fraction of the pooled tensors. Summary key: the field's
  own name (``unchanged_bitwise``), as SPEC §2 defines the model-level fraction that way.
- ``energy`` (fractions of *update energy*: ``rescale_share`` and its baseline, SPEC §5):
  Σ_t s_t·‖Δ_t‖²_F / Σ_t ‖Δ_t‖²_F, exactly the share of the pooled ‖Δ‖²_F that the pooled
  tensors' numerators hold. Summary key ``<name>_energy_weighted``; the ratio to the baseline is
  ``rescale_ratio_energy_weighted`` = pooled share / pooled baseline.
- ``mean`` (per-tensor quantities with no natural weight: angles, NSS, ranks): the unweighted
  mean over tensors, and the max. Summary keys ``<name>_mean`` and ``<name>_max``.

Plus ``count`` (a sum: non-finite entries, unresolved or gap-limited angles) and ``rss``
(√Σx²: ‖Δ‖_F of a group from its tensors'). Rows whose value or weight is missing or non-finite
are left out of a pool and counted (:class:`Pooled`). Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: Module kinds in the order every table and figure shows them (a tensor row's ``module``).
MODULE_ORDER = ("q", "k", "v", "o", "gate", "up", "down", "embed", "norm", "lm_head", "other")
KINDS = ("fraction", "energy", "value", "count", "rss")  # AggField kinds: fraction = params-weighted


def number(value) -> float:
    """A JSON number as float; ``None``, booleans, strings and other non-numbers become NaN."""
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    return math.nan


def numel_weight(row: dict) -> float:
    """The ``params`` weighting: the tensor's parameter count."""
    return number(row.get("numel"))


def energy_weight(row: dict) -> float:
    """The ``energy`` weighting: ‖Δ‖_F² of the tensor (``delta_fro`` squared)."""
    fro = number(row.get("delta_fro"))
    return fro * fro


def unit_weight(row: dict) -> float:
    """The ``mean`` weighting: every tensor counts once."""
    return 1.0


WEIGHTS: dict[str, Callable[[dict], float]] = {"params": numel_weight, "energy": energy_weight, "mean": unit_weight}


@dataclass(frozen=True)
class Pooled:
    """A pooled value and how many rows went into it / were left out."""

    value: float
    used: int
    skipped: int


def pool(rows: Iterable[dict], value: str | Callable[[dict], float], weighting: str) -> Pooled:
    """Σ w·v / Σ w over the rows where both v and w are finite and w > 0; ``value`` is a field
    name or a function of the row; ``weighting`` one of :data:`WEIGHTS`. NaN when nothing pools."""
    get = (lambda row: number(row.get(value))) if isinstance(value, str) else value
    weight = WEIGHTS[weighting]
    num = den = 0.0
    used = skipped = 0
    for row in rows:
        v, w = get(row), weight(row)
        if not (math.isfinite(v) and math.isfinite(w)) or w <= 0:
            skipped += 1
            continue
        num += w * v
        den += w
        used += 1
    return Pooled(num / den if den > 0 else math.nan, used, skipped)


def ordered_modules(present: Iterable[str]) -> list[str]:
    """Module kinds in :data:`MODULE_ORDER`, unknown ones after them, sorted."""
    present = set(present)
    return [m for m in MODULE_ORDER if m in present] + sorted(present - set(MODULE_ORDER))


def modules_of(rows: Iterable[dict]) -> list[str]:
    return ordered_modules(r.get("module") or "other" for r in rows)


def _layer(row: dict) -> int | None:
    layer = row.get("layer")
    return layer if isinstance(layer, int) and not isinstance(layer, bool) else None


def by_layer(rows: Iterable[dict], module: str | None = None) -> dict[int, list[dict]]:
    """Rows grouped by integer layer (rows without a layer are left out), optionally one module kind."""
    groups: dict[int, list[dict]] = {}
    for row in rows:
        layer = _layer(row)
        if layer is None or (module is not None and (row.get("module") or "other") != module):
            continue
        groups.setdefault(layer, []).append(row)
    return dict(sorted(groups.items()))


def by_module(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row.get("module") or "other", []).append(row)
    return {m: groups[m] for m in modules_of(rows)}


def aggregate_rows(rows: list[dict], fields) -> dict:
    """Aggregate ``rows`` (each with ``numel``) over ``fields`` (:class:`~deltalens.weights.groups.AggField`).

    fraction: parameter-weighted (key = the name; per key for dicts); energy: ‖Δ‖²-weighted
    (``<name>_energy_weighted``); value: unweighted ``<name>_mean`` and ``<name>_max``; count:
    sum; rss: √Σx². When both ``rescale_share`` and ``rescale_baseline`` pool by energy, their
    ratio is ``rescale_ratio_energy_weighted``.
    """
    out: dict = {"tensors": len(rows), "numel": int(sum(r["numel"] for r in rows))}
    for f in fields:
        if f.kind not in KINDS:
            raise ValueError(f"unknown aggregate kind {f.kind!r} for field {f.name}")
        present = [r for r in rows if r.get(f.name) is not None]
        if not present:
            continue
        if f.kind == "fraction":
            first = present[0][f.name]
            if isinstance(first, dict):
                out[f.name] = {k: _finite(pool(present, lambda r, k=k: number(r[f.name].get(k)), "params"))
                               for k in first}
            else:
                out[f.name] = _finite(pool(present, f.name, "params"))
        elif f.kind == "energy":
            out[f"{f.name}_energy_weighted"] = _finite(pool(present, f.name, "energy"))
        elif f.kind == "value":
            xs = [number(r[f.name]) for r in present]
            out[f"{f.name}_mean"] = _finite(pool(present, f.name, "mean"))
            finite = [x for x in xs if math.isfinite(x)]
            if finite:
                out[f"{f.name}_max"] = max(finite)
        elif f.kind == "count":
            out[f.name] = int(sum(r[f.name] for r in present))
        else:
            out[f.name] = math.sqrt(sum(number(r[f.name]) ** 2 for r in present))
    share, base = out.get("rescale_share_energy_weighted"), out.get("rescale_baseline_energy_weighted")
    if share is not None and base:
        out["rescale_ratio_energy_weighted"] = share / base
    return out


def _finite(p: Pooled) -> float | None:
    return p.value if math.isfinite(p.value) else None


def summarize(rows: list[dict], fields) -> dict:
    """Model totals plus ``by_module`` and ``by_layer`` (keys: module kind; layer index as str)."""
    summary = aggregate_rows(rows, fields)
    summary["by_module"] = {k: aggregate_rows(v, fields) for k, v in by_module(rows).items()}
    summary["by_layer"] = {str(k): aggregate_rows(v, fields) for k, v in by_layer(rows).items()}
    return summary
