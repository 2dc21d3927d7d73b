"""Overlap of update masks between runs from one base (SPEC §2).

With I1, I2 the bitwise update masks of two runs against the same base and s1, s2 their
unchanged fractions: o1 = |I1∩I2|/|I1| with random baseline 1 − s2, o2 = |I1∩I2|/|I2| with
baseline 1 − s1 (Mukherjee et al. 2025); Jaccard |I1∩I2|/|I1∪I2| with baseline pq/(p+q−pq),
p = 1 − s1, q = 1 − s2 (Path Not Taken). Per tensor and over the whole model (counts summed).
"""

from __future__ import annotations

import os
from itertools import combinations
from pathlib import Path

from deltalens.checkpoints import open_pair, pair_sources
from deltalens.errors import DeltalensError
from deltalens.results import to_jsonable, write_json, write_parquet
from deltalens.weights.sparsity import bitwise_changed


def overlap_from_counts(n: int, c1: int, c2: int, both: int) -> dict:
    """SPEC §2 overlap metrics from counts: n elements, |I1| = c1, |I2| = c2, |I1∩I2| = both."""
    p = c1 / n if n else 0.0
    q = c2 / n if n else 0.0
    union = c1 + c2 - both
    jb_den = p + q - p * q
    return {
        "numel": n, "changed_a": c1, "changed_b": c2, "changed_both": both,
        "o1": both / c1 if c1 else None, "o1_baseline": q,
        "o2": both / c2 if c2 else None, "o2_baseline": p,
        "jaccard": both / union if union else None,
        "jaccard_baseline": p * q / jb_den if jb_den else None,
    }


def run_overlap(base: str | os.PathLike, runs: list[str | os.PathLike], *, out: str | os.PathLike | None = None,
                allow_pickle: bool = False, progress: bool = False) -> dict:
    """Pairwise update-mask overlaps of ``runs`` (≥ 2) against ``base``; writes overlap.json and
    overlap.parquet to ``out`` when given. Tensors present in every run are compared."""
    if len(runs) < 2:
        raise DeltalensError("overlap: expected at least two runs after BASE")
    sources, pairings = [], []
    base_src = None
    for run in runs:
        b, t = open_pair(base, run, allow_pickle=allow_pickle)
        base_src = base_src or b
        sources.append(t)
        pairings.append(pair_sources(b, t))
    by_key = [{p.key: p for p in pr.pairs} for pr in pairings]
    common = [p for p in pairings[0].pairs if all(p.key in keys for keys in by_key[1:])]
    labels = [str(r) for r in runs]
    pairs_idx = list(combinations(range(len(runs)), 2))
    rows = []
    totals = {ij: [0, 0, 0, 0] for ij in pairs_idx}
    from deltalens.weights.progress import TensorProgress

    with TensorProgress(common, enabled=progress, label="overlap") as bar:
        for pair in common:
            bar.describe(pair.name)
            w0 = base_src.get(pair.key)
            masks = []
            for i, src in enumerate(sources):
                rows_i = by_key[i][pair.key].rows
                w1 = src.get(pair.key)
                a, b = (w0[:rows_i], w1[:rows_i]) if rows_i is not None else (w0, w1)
                masks.append(bitwise_changed(a, b).reshape(-1))
            n = min(m.numel() for m in masks)
            masks = [m[:n] for m in masks]
            counts = [int(m.sum()) for m in masks]
            for i, j in pairs_idx:
                both = int((masks[i] & masks[j]).sum())
                row = {"a": labels[i], "b": labels[j], "name": pair.name, "module": pair.module, "layer": pair.layer}
                row.update(overlap_from_counts(n, counts[i], counts[j], both))
                rows.append(row)
                t = totals[(i, j)]
                t[0] += n
                t[1] += counts[i]
                t[2] += counts[j]
                t[3] += both
            bar.advance(pair)
    result = {
        "base": str(base), "runs": labels,
        "method": "bitwise update masks (stored dtype; exact upcast when dtypes differ)",
        "pairs": [{"a": labels[i], "b": labels[j], "overall": overlap_from_counts(*totals[(i, j)])}
                  for i, j in pairs_idx],
        "tensors": rows,
    }
    result = to_jsonable(result)
    if out is not None:
        import pandas as pd

        out = Path(out)
        write_parquet(out / "overlap.parquet", pd.DataFrame(rows))
        write_json(out / "overlap.json", result)
    return result
