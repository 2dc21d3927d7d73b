"""Micro benchmark of the §5 principal/low overlap selection (``spectral._overlaps``).

    PYTHONPATH=src python bench/bench_overlap.py [--repeats 3] [--threads 1 2] [--shapes kv q gate embed]

For each shape (Qwen2.5-1.5B's k/v, q/o, gate/up/down and embedding, tall; ``_overlaps`` selects in
the stored orientation, whose cost is the same; gate and embed by default): W0 = 0.02·randn rounded to bf16 (handed over as float32, as
the diff driver does up to 2²⁶ elements; the 151936×1536 embedding stays bf16), the update mask
a random 50 %, the rank-64 reconstruction W0 V Vᵀ from a random orthonormal V (left = W0 V),
α = 0.05. Times, per thread count, the best of ``--repeats`` interleaved rounds of

- old: what ``_overlaps`` did before the one-pass bracket select: up to 2²⁵ entries both
  selections on one float32 buffer with ``numpy.partition`` (``deltalens.weights.selection._count_selected_in_memory``),
  above it the chunked three-pass radix select (``_count_selected_in_mask``), recomputing the
  reconstruction chunk by chunk on every pass;
- new: ``_overlaps`` as it is (sample → bracket → one pass; the radix select only as fallback).

Both must give the same hit counts (the run stops otherwise); the ratio old/new is printed.
The machine is shared: take the minimum over repeats, and rerun when the load is high.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

from deltalens.linalg import chunk_rows  # noqa: E402
from deltalens.weights import selection, spectral  # noqa: E402

SHAPES = {  # tall; a wide matrix (k/v, down) costs the same in its stored orientation
    "kv": (1536, 256, torch.float32), "q": (1536, 1536, torch.float32),
    "gate": (8960, 1536, torch.float32), "embed": (151936, 1536, torch.bfloat16),
}
OLD_IN_MEMORY_MAX = 1 << 25  # the old code's SELECT_IN_MEMORY_MAX
RANK, ALPHA = 64, 0.05


def make_inputs(shape, seed=0):
    m, n, dtype = shape
    g = torch.Generator().manual_seed(seed)
    w0 = torch.empty(m, n, dtype=torch.bfloat16)
    step = chunk_rows(n)
    for s in range(0, m, step):  # chunked: a float32 randn of the embedding alone is 0.9 GB
        w0[s : s + step] = (0.02 * torch.randn(min(step, m - s), n, generator=g)).bfloat16()
    w0 = w0.to(dtype)
    mask = torch.rand(m, n, generator=g) < 0.5
    v = torch.linalg.qr(torch.randn(n, RANK, generator=g)).Q
    left = torch.cat([w0[s : s + step].float() @ v for s in range(0, m, step)])
    return w0, mask, left, v


def old_overlaps(a0, mask, left, v_k):
    """The pre-bracket ``_overlaps`` (in-memory partition ≤ 2²⁵ entries, else chunked radix)."""
    m, n = a0.shape
    count = math.ceil(ALPHA * m * n)
    step = chunk_rows(n)
    vk, lk = v_k.float(), left.float()

    def recon_chunks():
        for s in range(0, m, step):
            yield (lk[s : s + step] @ vk.T).abs_().reshape(-1), mask[s : s + step].reshape(-1)

    def weight_chunks():
        for s in range(0, m, step):
            yield a0[s : s + step].float().abs().reshape(-1), mask[s : s + step].reshape(-1)

    if m * n <= OLD_IN_MEMORY_MAX:
        flat = mask.reshape(-1).numpy()
        recon = (lk @ vk.T).abs_().reshape(-1).numpy()
        hp = selection._count_selected_in_memory(recon, flat, count, largest=True)
        del recon
        hl = selection._count_selected_in_memory(a0.float().abs().reshape(-1).numpy(), flat, count, largest=False)
        return hp, hl
    return (selection._count_selected_in_mask(recon_chunks, count, largest=True),
            selection._count_selected_in_mask(weight_chunks, count, largest=False))


def new_overlaps(a0, mask, left, v_k):
    hp, hl, _ = spectral._overlaps(a0, mask, left, v_k, ALPHA, torch.device("cpu"))
    return hp, hl


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shapes", nargs="+", default=["gate", "embed"], choices=list(SHAPES))
    args = ap.parse_args(argv)
    fallbacks = []
    radix = selection._count_selected_in_mask

    def counting_radix(*a, **k):  # counts the new path's fallbacks (the old path calls it directly)
        fallbacks.append(1)
        return radix(*a, **k)

    for name in args.shapes:
        m, n, dtype = SHAPES[name]
        a0, mask, left, v = make_inputs(SHAPES[name])
        print(f"{name}: {m}×{n} {str(dtype).removeprefix('torch.')}, rank {RANK}, alpha {ALPHA}, mask 50 %")
        for threads in args.threads:
            torch.set_num_threads(threads)
            best = {"old": math.inf, "new": math.inf}
            results = {}
            fallbacks.clear()
            for _ in range(args.repeats):
                for side, fn in (("old", old_overlaps), ("new", new_overlaps)):
                    selection._count_selected_in_mask = counting_radix if side == "new" else radix
                    t = time.perf_counter()
                    results[side] = fn(a0, mask, left, v)
                    best[side] = min(best[side], time.perf_counter() - t)
            selection._count_selected_in_mask = radix
            if results["old"] != results["new"]:
                sys.exit(f"mismatch: old {results['old']} vs new {results['new']}")
            print(f"  {threads} thread(s): old {best['old']:.3f} s, new {best['new']:.3f} s, "
                  f"old/new {best['old'] / best['new']:.1f}x (min of {args.repeats}; hits {results['new']}; "
                  f"radix fallbacks in new: {len(fallbacks)})")


if __name__ == "__main__":
    main()
