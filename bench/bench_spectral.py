"""Benchmark the fast weight diff (SPEC §2–§5) on Qwen2.5-1.5B shapes against the naive approach.

    PYTHONPATH=src python bench/bench_spectral.py [--repeats 2] [--device cuda] [--out bench.json]

Builds a synthetic bf16 pair per matrix shape (W0 ~ N(0, 0.02²); W1 = W0 + a sparse RL-like
update rounded back to bf16) and measures, per shape, interleaved and repeated (the best of
``--repeats`` rounds is kept for every side, so a burst of load on the shared machine hits no
side alone; on CPU both sides run with 1 and with all threads and keep the faster, unless
``--naive-threads`` fixes the naive side's: on the loaded 2-core machine LAPACK's SVD took 7–44 s
with two threads for what one thread did in 2.2–3.8 s, so the naive side gets its best setting):

- fast: what the diff driver runs per 2-D tensor in its default fast mode: the float32 copies (up
  to 2²⁶ elements; the embedding stays bf16, cast chunk by chunk), the §2 sparsity/size pass (``stream_pair_stats``), the §3 rank group and the §4–§5
  spectral + frame groups (``compute_rank`` / ``compute_spectral``, default k, overlap k = 64);
- naive, literal (the issue's wording): both sides in float32, ``torch.linalg.svd`` with its
  default ``full_matrices=True`` of W0, W1 and Δ;
- naive, reduced: the same with ``full_matrices=False`` (the cheaper, fairer baseline);
- Gram frame: the fast row with the full float64 Gram frame forced on every shape (what the top-q
  route escalates to; exact by construction), on the naive subset, its embedding extrapolated.

The naive sides are measured on q, k, gate and down (v, o, up priced from k, q, gate: same
shapes). Whole model = 28 × one layer + the 151936×1536 embedding (tied with lm_head, analysed
once). Fast is measured on the embedding; the naive embedding is extrapolated linearly in m from
the q and gate timings at n = 1536 (an SVD of a tall m×n matrix costs ≈ c₁n³ + c₂mn²). The literal
naive embedding cannot run at all (its U would be 151936² float32 = 86 GiB), so it is priced as the
reduced one: a lower bound, which favours the naive side. Everything extrapolated says so.

Memory: a sampler thread reads RssAnon from /proc/self/status every 2 ms during one extra fast
call per shape (the timed calls run without it: its thread would take the GIL from the chunk
loops); the report gives the peak anonymous memory of the whole process (inputs included) and
what the call added over its inputs. CUDA: max allocated bytes instead.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import threading
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

from deltalens.weights.groups import MetricContext, compute_frame, compute_rank, compute_spectral, matrix_operands  # noqa: E402
from deltalens.weights.options import make_options  # noqa: E402
from deltalens.weights.sparsity import stream_pair_stats  # noqa: E402

HIDDEN, INTER, VOCAB, LAYERS, KV = 1536, 8960, 151936, 28, 256
LAYER_SHAPES = {
    "q": (HIDDEN, HIDDEN), "k": (KV, HIDDEN), "v": (KV, HIDDEN), "o": (HIDDEN, HIDDEN),
    "gate": (INTER, HIDDEN), "up": (INTER, HIDDEN), "down": (HIDDEN, INTER),
}
NAIVE_SUBSET = ("q", "k", "gate", "down")
SAME_SHAPE = {"v": "k", "o": "q", "up": "gate"}


def synthetic_pair(shape, seed, *, changed_fraction=0.5, step=3e-4):
    """bf16 W0 and W1 as stored (half of the entries moved by an RL-sized step, rounded to bf16)."""
    g = torch.Generator().manual_seed(seed)
    w0 = (0.02 * torch.randn(shape, generator=g)).bfloat16()
    upd = step * torch.randn(shape, generator=g)
    upd *= torch.rand(shape, generator=g) < changed_fraction
    w1 = (w0.float() + upd).bfloat16()
    return w0, w1


def _anon_kib() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


class AnonPeak:
    """Peak RssAnon (bytes) while the block runs, sampled every 2 ms by a thread."""

    def __enter__(self):
        self.base = self.peak = _anon_kib() * 1024
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.002):
                self.peak = max(self.peak, _anon_kib() * 1024)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _anon_kib() * 1024)


def fast_row(raw0, raw1, options):
    """The driver's per-tensor work in fast mode (compute_row without file reading): float32 copies
    for the matrix groups up to 2²⁶ elements, the stored bf16 tensors above (the embedding)."""
    stats = stream_pair_stats(raw0, raw1, device=options.device)
    w0, w1 = matrix_operands(raw0, raw1, options.device)
    ctx = MetricContext.after_stream(stats, "bench", "bench", 0, raw0, raw1, w0, w1, options)
    row = dict(stats)
    row.update(compute_rank(w0, w1, ctx))
    row.update(compute_spectral(w0, w1, ctx))
    return row


def gram_row(raw0, raw1, options):
    """:func:`fast_row` with the full Gram frame forced on every shape (``FULL_FRAME_MAX`` raised):
    the exact-by-construction route the top-q route escalates to."""
    from deltalens.weights import spectral

    before = spectral.FULL_FRAME_MAX
    spectral.FULL_FRAME_MAX = 1 << 30
    try:
        return fast_row(raw0, raw1, options)
    finally:
        spectral.FULL_FRAME_MAX = before


def naive(raw0, raw1, device, full_matrices):
    a0, a1 = raw0.to(device, torch.float32), raw1.to(device, torch.float32)
    for w in (a0, a1, a1 - a0):
        torch.linalg.svd(w, full_matrices=full_matrices)


def threads(n):
    """Run the wrapped call with torch's intra-op thread count set to n (then restore it)."""
    def wrap(fn):
        def run():
            before = torch.get_num_threads()
            torch.set_num_threads(n)
            try:
                return fn()
            finally:
                torch.set_num_threads(before)
        return run
    return wrap


def timed(fn, device):
    """(seconds, result) of one call."""
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def record_memory(entry: dict, fn, device) -> dict:
    """One extra call of ``fn`` under the memory sampler (CUDA: peak allocated bytes): its peak
    anonymous memory and what it added over its inputs go into ``entry``. Timed calls run without
    the sampler, whose thread wakes every 2 ms and would take the GIL from the chunk loops."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with AnonPeak() as mem:
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else mem.peak
    entry["fast_peak_anon_mib"] = peak / 2**20
    entry["fast_added_mib"] = (peak - mem.base) / 2**20
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds per shape; the best of each side is kept")
    ap.add_argument("--no-embedding", action="store_true", help="skip the embedding")
    ap.add_argument("--naive-threads", type=int, default=0,
                    help="torch threads for the naive SVDs (default: 1 and all, the faster kept, like fast mode; "
                         "on a loaded machine 1 is much faster)")
    ap.add_argument("--out", type=pathlib.Path, help="also write the numbers as JSON here")
    ap.add_argument("--shrink", type=int, default=1, help="divide every dimension by this (smoke tests only)")
    args = ap.parse_args(argv)
    global HIDDEN, INTER, VOCAB, KV
    if args.shrink > 1:
        HIDDEN, INTER, VOCAB, KV = (x // args.shrink for x in (HIDDEN, INTER, VOCAB, KV))
        LAYER_SHAPES.update({k: tuple(x // args.shrink for x in v) for k, v in LAYER_SHAPES.items()})
        print(f"SMOKE TEST: every dimension divided by {args.shrink}; timings say nothing about the real shapes")
    dev = args.device
    options = make_options(device=dev)
    thread_counts = sorted({1, torch.get_num_threads()}) if dev == "cpu" else [torch.get_num_threads()]
    naive_threads = [args.naive_threads] if args.naive_threads else thread_counts
    print(f"device: {dev}" + (f" ({torch.cuda.get_device_name()})" if dev == "cuda" else f" ({torch.get_num_threads()} threads)"))
    fast_row(*synthetic_pair((40, 30), 0), options)  # warm-up (imports, kernels)

    report: dict = {"device": dev, "threads": torch.get_num_threads(), "fast_thread_counts": thread_counts,
                    "naive_threads": naive_threads, "repeats": args.repeats, "shapes": {}}
    print(f"fast: best over {thread_counts} threads; naive SVDs: best over {naive_threads} thread(s)")
    for i, (name, shape) in enumerate(LAYER_SHAPES.items()):
        raw0, raw1 = synthetic_pair(shape, seed=i)
        entry = {"shape": shape, "fast": [], "literal": [], "reduced": [], "gram": []}
        row = record_memory(entry, lambda: fast_row(raw0, raw1, options), dev)
        for _ in range(args.repeats):
            for n_threads in thread_counts:
                dt, row = timed(threads(n_threads)(lambda: fast_row(raw0, raw1, options)), dev)
                entry["fast"].append(dt)
                entry[f"fast_{n_threads}_threads"] = min(entry.get(f"fast_{n_threads}_threads", dt), dt)
            if name in NAIVE_SUBSET:
                entry["gram"].append(min(timed(threads(t)(lambda: gram_row(raw0, raw1, options)), dev)[0]
                                         for t in thread_counts))
                for n_threads in naive_threads:
                    entry["literal"].append(timed(threads(n_threads)(lambda: naive(raw0, raw1, dev, True)), dev)[0])
                    entry["reduced"].append(timed(threads(n_threads)(lambda: naive(raw0, raw1, dev, False)), dev)[0])
        entry["route"] = row["method"]["route"]
        entry["rank_method"] = row["rank_method"]
        report["shapes"][name] = entry
        best = {k: min(entry[k]) for k in ("fast", "literal", "reduced", "gram") if entry[k]}
        line = f"{name:5s} {str(shape):14s} fast {best['fast']:7.3f} s ({entry['route']})"
        if "literal" in best:
            line += (f"   naive literal {best['literal']:7.2f} s ({best['literal'] / best['fast']:5.1f}x)"
                     f"   reduced {best['reduced']:6.2f} s ({best['reduced'] / best['fast']:5.1f}x)"
                     f"   gram {best['gram']:6.2f} s ({best['gram'] / best['fast']:5.1f}x)")
        print(line + f"   peak anon {entry['fast_peak_anon_mib']:.0f} MiB (+{entry['fast_added_mib']:.0f})", flush=True)
        del raw0, raw1

    def best(name, side):
        return min(report["shapes"][SAME_SHAPE.get(name, name)][side])

    layer = {side: sum(best(n, side) for n in LAYER_SHAPES) for side in ("fast", "literal", "reduced", "gram")}
    emb = {}
    if not args.no_embedding:
        raw0, raw1 = synthetic_pair((VOCAB, HIDDEN), seed=99)
        entry = {"shape": (VOCAB, HIDDEN), "fast": []}
        record_memory(entry, lambda: fast_row(raw0, raw1, options), dev)
        for _ in range(args.repeats):
            entry["fast"].append(timed(lambda: fast_row(raw0, raw1, options), dev)[0])
        entry["inputs_bf16_mib"] = 2 * raw0.numel() * 2 / 2**20
        del raw0, raw1
        slope = {s: (best("gate", s) - best("q", s)) / (INTER - HIDDEN) for s in ("literal", "reduced", "gram")}
        emb = {"fast": min(entry["fast"]),
               "reduced": best("q", "reduced") + slope["reduced"] * (VOCAB - HIDDEN),
               "gram": best("q", "gram") + slope["gram"] * (VOCAB - HIDDEN)}
        emb["literal"] = emb["reduced"]  # the literal SVD cannot run: priced as reduced (a lower bound)
        report["shapes"]["embed"] = entry
        print(f"embed {str((VOCAB, HIDDEN)):14s} fast {emb['fast']:7.3f} s   naive (extrapolated, reduced) "
              f"{emb['reduced']:7.2f} s   peak anon {entry['fast_peak_anon_mib']:.0f} MiB (+{entry['fast_added_mib']:.0f}; "
              f"bf16 inputs {entry['inputs_bf16_mib']:.0f} MiB)")
    total = {s: LAYERS * layer[s] + emb.get(s, 0.0) for s in layer}
    report["whole_model"] = {
        "seconds": total, "one_layer_seconds": layer, "embedding_seconds": emb,
        "ratio_literal": total["literal"] / total["fast"], "ratio_reduced": total["reduced"] / total["fast"],
        "ratio_gram": total["gram"] / total["fast"],
        "note": "28 x measured layer (v, o, up priced from k, q, gate) + embedding; naive and Gram embedding "
                "extrapolated linearly in m from q and gate, literal priced as reduced (cannot run)",
    }
    peak = max(v.get("fast_peak_anon_mib", 0) for v in report["shapes"].values())
    added = max(v.get("fast_added_mib", 0) for v in report["shapes"].values())
    report["fast_peak_anon_mib"], report["fast_added_mib"] = peak, added
    print(f"\nwhole model (extrapolated: {LAYERS} x measured layer + embedding; best of {args.repeats} interleaved rounds):")
    print(f"  fast (§2–§5)    {total['fast'] / 60:7.2f} min   (one layer {layer['fast']:.2f} s, embedding {emb.get('fast', 0):.2f} s)")
    print(f"  naive, literal  {total['literal'] / 60:7.2f} min   (one layer {layer['literal']:.1f} s)   ratio {report['whole_model']['ratio_literal']:.1f}x")
    print(f"  naive, reduced  {total['reduced'] / 60:7.2f} min   (one layer {layer['reduced']:.1f} s)   ratio {report['whole_model']['ratio_reduced']:.1f}x")
    print(f"  Gram frame      {total['gram'] / 60:7.2f} min   (one layer {layer['gram']:.1f} s)   ratio {report['whole_model']['ratio_gram']:.1f}x")
    print(f"  targets: >= 20x vs naive, fast <= 10 min, peak anonymous memory < 2 GB; fast peak anon {peak:.0f} MiB "
          f"(process, inputs included), at most {added:.0f} MiB added over the bf16 inputs", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
