"""Per-module, per-layer and whole-model aggregates of tensor rows (SPEC §2), generic over the
declared fields of the metric groups (:mod:`deltalens.weights.groups`)."""

from __future__ import annotations

import math

from deltalens.weights.groups import AggField


def _present(rows, name):
    return [(r["numel"], r[name]) for r in rows if r.get(name) is not None]


def aggregate_rows(rows: list[dict], fields: list[AggField]) -> dict:
    """Aggregate ``rows`` (each with ``numel``) over ``fields``.

    fraction: Σ numel·x / Σ numel over rows that have x (per key for dicts); value: mean and
    max; count: sum; rss: √Σx².
    """
    out: dict = {"tensors": len(rows), "numel": int(sum(r["numel"] for r in rows))}
    for f in fields:
        vals = _present(rows, f.name)
        if not vals:
            continue
        if f.kind == "fraction":
            if isinstance(vals[0][1], dict):
                keys = list(vals[0][1])
                out[f.name] = {k: _weighted([(n, v.get(k)) for n, v in vals]) for k in keys}
            else:
                out[f.name] = _weighted(vals)
        elif f.kind == "value":
            xs = [float(v) for _, v in vals]
            out[f"{f.name}_mean"] = sum(xs) / len(xs)
            out[f"{f.name}_max"] = max(xs)
        elif f.kind == "count":
            out[f.name] = int(sum(v for _, v in vals))
        elif f.kind == "rss":
            out[f.name] = math.sqrt(sum(float(v) ** 2 for _, v in vals))
        else:
            raise ValueError(f"unknown aggregate kind {f.kind!r} for field {f.name}")
    return out


def _weighted(pairs) -> float | None:
    pairs = [(n, v) for n, v in pairs if v is not None]
    total = sum(n for n, _ in pairs)
    return sum(n * float(v) for n, v in pairs) / total if total else None


def summarize(rows: list[dict], fields: list[AggField]) -> dict:
    """Model totals plus ``by_module`` and ``by_layer`` (keys: module kind; layer index as str)."""
    summary = aggregate_rows(rows, fields)
    by_module: dict[str, list] = {}
    by_layer: dict[int, list] = {}
    for r in rows:
        by_module.setdefault(r["module"], []).append(r)
        if r.get("layer") is not None:
            by_layer.setdefault(int(r["layer"]), []).append(r)
    summary["by_module"] = {k: aggregate_rows(v, fields) for k, v in by_module.items()}
    summary["by_layer"] = {str(k): aggregate_rows(by_layer[k], fields) for k in sorted(by_layer)}
    return summary
