"""The report's view of pooled ``diff.json`` rows: the pooling itself, its weightings and the
module order come from :mod:`deltalens.weights.aggregate` (the one place that pools); this module
adds the report's k choices and method texts. The poolings:

- fractions of *parameters* (unchanged fractions, SPEC §2) pool weighted by ``numel``:
  Σ_t numel_t·f_t / Σ_t numel_t, the parameter-weighted fraction of the tensors pooled;
- fractions of *update energy* (``rescale_share``, block shares and their baselines, SPEC §5)
  pool weighted by ‖Δ_t‖_F² = ``delta_fro``²: Σ_t s_t·‖Δ_t‖² / Σ_t ‖Δ_t‖², which is exactly the
  share of the pooled ‖Δ‖_F² that the pooled tensors' numerators hold.

Rows whose value or weight is missing or non-finite are left out of a pool (and counted).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from deltalens.report.inputs import as_float
from deltalens.weights import aggregate as wagg

MODULE_ORDER, Pooled, pool = wagg.MODULE_ORDER, wagg.Pooled, wagg.pool  # the one pooling module
modules_of, by_layer, by_module, ordered_modules = wagg.modules_of, wagg.by_layer, wagg.by_module, wagg.ordered_modules


def mean(values: Iterable[float]) -> float:
    """Unweighted mean of the finite values (NaN when there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def matrix_rows(rows: list[dict]) -> list[dict]:
    """Rows of 2-D tensors (the ones spectral and rank measures exist for)."""
    return [r for r in rows if isinstance(r.get("shape"), list) and len(r["shape"]) == 2]


def k_keys(rows: list[dict]) -> list[str]:
    """The ``by_k`` keys present, sorted numerically (k is keyed as a string, e.g. ``"4"``)."""
    keys: set[str] = set()
    for row in rows:
        if isinstance(row.get("by_k"), dict):
            keys.update(row["by_k"])
    return sorted(keys, key=lambda k: (as_float(_num(k)), k))


def _num(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return None


def at_k(row: dict, k: str | None) -> dict:
    entry = (row.get("by_k") or {}).get(k) if k is not None else None
    return entry if isinstance(entry, dict) else {}


@dataclass(frozen=True)
class KChoice:
    """Which ``by_k`` entry of each tensor a figure or table uses, and how to say so.

    When every 2-D tensor carries the same k keys (integer k), there is one choice per key. When
    the keys differ between tensors (k given as a fraction of min(m, n) resolves per shape),
    the choices are "each tensor's smallest k" and "each tensor's largest k".
    """

    label: str
    pick: str  # a key, or "min" / "max" over each tensor's keys

    def key_for(self, row: dict) -> str | None:
        keys = [k for k in (row.get("by_k") or {}) if _num(k) is not None]
        if self.pick not in ("min", "max"):
            return self.pick if self.pick in (row.get("by_k") or {}) else None
        if not keys:
            return None
        return (min if self.pick == "min" else max)(keys, key=float)

    def entry(self, row: dict) -> dict:
        return at_k(row, self.key_for(row))


def k_choices(row_sets: Iterable[list[dict]]) -> list[KChoice]:
    """The k choices for these tensors (see :class:`KChoice`); empty when no tensor has ``by_k``."""
    key_sets = {tuple(sorted(r["by_k"])) for rows in row_sets for r in rows if isinstance(r.get("by_k"), dict) and r["by_k"]}
    if not key_sets:
        return []
    if len(key_sets) == 1:
        return [KChoice(f"k = {k}", k) for k in sorted(next(iter(key_sets)), key=lambda k: (as_float(_num(k)), k))]
    every = sorted({k for ks in key_sets for k in ks if _num(k) is not None}, key=float)
    span = f"k from {every[0]} to {every[-1]} by tensor shape" if every else "k by tensor"
    return [KChoice(f"each tensor's smallest k ({span})", "min"), KChoice(f"each tensor's largest k ({span})", "max")]


def method_text(rows: Iterable[dict], aspect: str | None = None) -> str:
    """How the spectral numbers were computed, from each row's ``method`` (a string, or a dict
    with ``mode`` and per-quantity descriptions such as ``angles``, ``nss``, ``frame``)."""
    seen: list[str] = []
    for row in rows:
        method = row.get("method")
        if isinstance(method, dict):
            parts = [f"{method['mode']} mode"] if method.get("mode") else []
            if aspect and method.get(aspect):
                parts.append(str(method[aspect]))
            text = ": ".join(parts)
        else:
            text = str(method) if method else ""
        if text and text not in seen:
            seen.append(text)
    return " | ".join(seen) if seen else "method not recorded"


def min_dim(row: dict) -> float:
    shape = row.get("shape")
    if isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) for s in shape):
        return float(min(shape))
    return math.nan
