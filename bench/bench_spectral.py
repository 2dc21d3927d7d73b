"""Benchmark the spectral diff (SPEC §4–§5) on Qwen2.5-1.5B shapes against the naive approach.

    PYTHONPATH=src python bench/bench_spectral.py [--device cuda] [--out bench.json]

Builds a synthetic bf16 pair per matrix shape (W0 ~ N(0, 0.02²); W1 = W0 + a sparse RL-like
update rounded back to bf16), then measures in the same run:

- fast mode (``spectral_metrics``, all §4 and §5 numbers, default k) on one layer's seven
  matrices (q, k, v, o, gate, up, down) and on the embedding (tied with lm_head, so analysed once);
- the naive approach, ``torch.linalg.svd(·, full_matrices=False)`` in float32 of W0, W1 and Δ,
  on a subset of shapes (q, k, gate, down), which is what it costs to get the same frames by brute
  force (the naive approach also loads both models whole; its memory is not modelled here).

Whole-model times are extrapolated: 28 × (one layer) + embedding. The naive embedding SVD is
measured only with ``--naive-embedding``; otherwise it is extrapolated from the q (1536×1536) and
gate (8960×1536) timings by the cost model t(m) = a + b·m at fixed n = 1536 (SVD of a tall m×n
matrix costs ≈ c₁n³ + c₂mn²). Everything extrapolated is labelled as such in the output.
Memory: the peak resident memory *added* by one ``spectral_metrics`` call over its inputs
(Linux VmHWM after resetting it via /proc/self/clear_refs), or CUDA's max allocated bytes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

from deltalens.weights.spectral import spectral_metrics  # noqa: E402

HIDDEN, INTER, VOCAB, LAYERS, KV = 1536, 8960, 151936, 28, 256
LAYER_SHAPES = {
    "q": (HIDDEN, HIDDEN), "k": (KV, HIDDEN), "v": (KV, HIDDEN), "o": (HIDDEN, HIDDEN),
    "gate": (INTER, HIDDEN), "up": (INTER, HIDDEN), "down": (HIDDEN, INTER),
}
NAIVE_SUBSET = ("q", "k", "gate", "down")


def synthetic_pair(shape, seed, *, changed_fraction=0.5, step=3e-4):
    """bf16 W0 and W1 (as float32) plus the bitwise update mask in bf16."""
    g = torch.Generator().manual_seed(seed)
    w0 = (0.02 * torch.randn(shape, generator=g)).bfloat16()
    upd = step * torch.randn(shape, generator=g)
    upd *= torch.rand(shape, generator=g) < changed_fraction
    w1 = (w0.float() + upd).bfloat16()
    changed = w0.view(torch.int16) != w1.view(torch.int16)
    return w0.float(), w1.float(), changed


def _rss_kib(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measured(fn, device):
    """(seconds, extra peak MiB) of fn()."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        try:
            pathlib.Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        base = _rss_kib("VmRSS") * 1024
    t = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _rss_kib("VmHWM") * 1024
    return dt, max(0, peak - base) / 2**20, out


def summarize(report, fast_layer, fast_emb, naive_layer, naive_emb, note):
    """Whole-model extrapolation: LAYERS × one layer + embedding (tied lm_head analysed once)."""
    fast_total = LAYERS * fast_layer + fast_emb
    naive_total = LAYERS * naive_layer + naive_emb
    report["whole_model"] = {"fast_seconds": fast_total, "naive_seconds": naive_total, "ratio": naive_total / fast_total,
                             "fast_one_layer_seconds": fast_layer, "naive_one_layer_seconds": naive_layer,
                             "fast_embedding_seconds": fast_emb, "naive_embedding_seconds": naive_emb, "note": note}
    peak = max(v["extra_peak_mib"] for v in report["fast"].values())
    report["fast_extra_peak_mib"] = peak
    print(f"\nwhole model (extrapolated: {LAYERS} × measured layer + embedding; {note}):")
    print(f"  fast  {fast_total / 60:7.2f} min   (one layer {fast_layer:.1f} s, embedding {fast_emb:.1f} s)")
    print(f"  naive {naive_total / 60:7.2f} min   (one layer {naive_layer:.1f} s, embedding {naive_emb:.1f} s)")
    print(f"  ratio naive/fast {naive_total / fast_total:.1f}x   (targets: >= 20x, fast <= 10 min)")
    print(f"  fast mode peak memory added over its inputs: {peak:.0f} MiB", flush=True)


def naive(w0, w1, device):
    a0, a1 = w0.to(device), w1.to(device)
    for w in (a0, a1, a1 - a0):
        torch.linalg.svd(w, full_matrices=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--naive-embedding", action="store_true", help="measure the naive embedding SVDs too")
    ap.add_argument("--no-embedding", action="store_true", help="skip the embedding (fast mode too)")
    ap.add_argument("--no-check", action="store_true", help="skip the fast-vs-exact check on the q matrix")
    ap.add_argument("--out", type=pathlib.Path, help="also write the numbers as JSON here")
    ap.add_argument("--shrink", type=int, default=1, help="divide every dimension by this (smoke tests only)")
    args = ap.parse_args(argv)
    if args.shrink > 1:
        global HIDDEN, INTER, VOCAB, KV
        HIDDEN, INTER, VOCAB, KV = (x // args.shrink for x in (HIDDEN, INTER, VOCAB, KV))
        LAYER_SHAPES.update({k: tuple(x // args.shrink for x in v) for k, v in LAYER_SHAPES.items()})
        print(f"SMOKE TEST: every dimension divided by {args.shrink}; timings say nothing about the real shapes")
    dev = args.device
    print(f"device: {dev}" + (f" ({torch.cuda.get_device_name()})" if dev == "cuda" else f" ({torch.get_num_threads()} threads)"))
    spectral_metrics(torch.randn(40, 30), torch.randn(40, 30), device=dev)  # warm-up (imports, kernels)

    report: dict = {"device": dev, "fast": {}, "naive": {}, "extrapolated": []}
    fast_layer = 0.0
    for i, (name, shape) in enumerate(LAYER_SHAPES.items()):
        w0, w1, changed = synthetic_pair(shape, seed=i)
        dt, mib, _ = measured(lambda: spectral_metrics(w0, w1, changed=changed, device=dev), dev)
        fast_layer += dt
        report["fast"][name] = {"shape": shape, "seconds": dt, "extra_peak_mib": mib}
        print(f"fast   {name:5s} {str(shape):14s} {dt:8.2f} s  +{mib:7.0f} MiB")
        if name in NAIVE_SUBSET:
            nt, nmib, _ = measured(lambda: naive(w0, w1, dev), dev)
            report["naive"][name] = {"shape": shape, "seconds": nt, "extra_peak_mib": nmib}
            print(f"naive  {name:5s} {str(shape):14s} {nt:8.2f} s  +{nmib:7.0f} MiB   ratio {nt / dt:6.1f}x")
        del w0, w1, changed
    nv = {k: v["seconds"] for k, v in report["naive"].items()}
    naive_layer = 2 * nv["q"] + 2 * nv["k"] + 2 * nv["gate"] + nv["down"]
    report["extrapolated"].append("naive v, o, up from the measured k, q, gate (same shapes)")

    fast_emb = 0.0
    emb = None
    if not args.no_embedding:
        emb = synthetic_pair((VOCAB, HIDDEN), seed=99)
        fast_emb, mib, _ = measured(lambda: spectral_metrics(*emb[:2], changed=emb[2], device=dev), dev)
        report["fast"]["embed"] = {"shape": (VOCAB, HIDDEN), "seconds": fast_emb, "extra_peak_mib": mib}
        print(f"fast   embed {str((VOCAB, HIDDEN)):14s} {fast_emb:8.2f} s  +{mib:7.0f} MiB")
        slope = (nv["gate"] - nv["q"]) / (INTER - HIDDEN)
        naive_emb = nv["q"] + slope * (VOCAB - HIDDEN)
        print(f"naive  embed {str((VOCAB, HIDDEN)):14s} {naive_emb:8.2f} s  (extrapolated: t(m) = a + b·m through q and gate)")
        summarize(report, fast_layer, fast_emb, naive_layer, naive_emb, "naive embedding extrapolated from q and gate")
        if args.naive_embedding:  # measured last: the slowest step, so a cut-off still leaves the summary above
            naive_emb, nmib, _ = measured(lambda: naive(emb[0], emb[1], dev), dev)
            report["naive"]["embed"] = {"shape": (VOCAB, HIDDEN), "seconds": naive_emb, "extra_peak_mib": nmib}
            print(f"naive  embed {str((VOCAB, HIDDEN)):14s} {naive_emb:8.2f} s  +{nmib:7.0f} MiB   ratio {naive_emb / fast_emb:6.1f}x (measured)")
            summarize(report, fast_layer, fast_emb, naive_layer, naive_emb, "naive embedding measured")
        emb = None
    else:
        summarize(report, fast_layer, 0.0, naive_layer, 0.0, "embedding left out")

    if not args.no_check:
        w0, w1, changed = synthetic_pair(LAYER_SHAPES["q"], seed=0)
        fast = spectral_metrics(w0, w1, top_k=(16, 64), changed=changed, device=dev)
        ex = spectral_metrics(w0, w1, top_k=(16, 64), changed=changed, exact=True, device=dev)
        ang = max(abs(a - b) for k in fast["by_k"] for side in ("angles_left_deg", "angles_right_deg")
                  for a, b in zip(fast["by_k"][k][side], ex["by_k"][k][side]))
        check = {"max_angle_diff_deg": ang, "nss_rel_diff": abs(fast["nss"] - ex["nss"]) / ex["nss"],
                 "rescale_share_abs_diff": abs(fast["rescale_share"] - ex["rescale_share"]),
                 "nss_exact": ex["nss"], "rescale_share_exact": ex["rescale_share"]}
        report["fast_vs_exact_q"] = check
        print("\nfast vs exact (float64 SVD) on the q matrix, k = 16 and 64:")
        print("  " + ", ".join(f"{k} {v:.3g}" for k, v in check.items()))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
