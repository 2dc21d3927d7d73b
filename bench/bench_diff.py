"""Benchmark of the streaming sparsity/size pass (issue 2).

Builds a synthetic bf16 pair with real Llama shapes (hidden, intermediate, vocab of the
chosen size; fewer layers to keep it quick), ~30% of entries changed RL-style, then measures
in one run:

- ``cat``: reading both files to /dev/null (the disk / page-cache bound);
- ``naive``: read both files into memory, cast every tensor to float32, compare, norm (the
  load-everything loop the issue measured at 0.2–0.3 GB/s);
- ``deltalens``: ``run_diff(metrics="sparsity,size")`` (and, once, the default with ranks).

Each is run cold (files evicted from the page cache with posix_fadvise DONTNEED, best effort)
and warm. Throughput is GB of both files per second; memory is the peak *anonymous* memory
(RssAnon of /proc/self/status) above the level before the run, sampled every 5 ms.

    python bench/bench_diff.py --size small      # ~1.3 GB pair, a few minutes on 2 cores
    python bench/bench_diff.py --size tiny       # ~0.2 GB, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

SIZES = {  # hidden, intermediate, layers, vocab
    "tiny": (1024, 2816, 2, 32000),
    "small": (2048, 5632, 4, 32000),
    "medium": (4096, 11008, 2, 32000),  # Llama-2-7B shapes, 2 of its 32 layers
}


def anonymous_bytes() -> int:
    """Resident anonymous memory (RssAnon in /proc/self/status: a counter, cheap to read,
    unlike smaps_rollup whose page walk stalls page faults on large mappings)."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"^RssAnon:\s+(\d+) kB", text, re.M).group(1)) * 1024


class PeakAnon:
    """Peak anonymous memory above the level at entry, sampled in a thread."""

    def __enter__(self):
        self.start = anonymous_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, anonymous_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, anonymous_bytes())
        self.used = self.peak - self.start
        return False


def evict(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def build_pair(out: Path, size: str) -> tuple[Path, Path, int]:
    import torch
    from safetensors.torch import save_file

    hidden, inter, layers, vocab = SIZES[size]
    kv = hidden // 4
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
              "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                       p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,)})
    b, t = out / size / "base", out / size / "tuned"
    if not (t / "model.safetensors").is_file():
        g = torch.Generator().manual_seed(0)
        base, tuned = {}, {}
        for name, shape in shapes.items():
            w = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
            mask = torch.rand(shape, generator=g) < 0.3
            base[name] = w
            tuned[name] = torch.where(mask, (w.float() * (1 + 0.02 * torch.randn(shape, generator=g))).to(torch.bfloat16), w)
        b.mkdir(parents=True, exist_ok=True)
        t.mkdir(parents=True, exist_ok=True)
        save_file(base, str(b / "model.safetensors"))
        save_file(tuned, str(t / "model.safetensors"))
        del base, tuned
    for folder in (b, t):  # as in a real HF folder; without it the tied-head check reads embed/lm_head again
        (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
                                                        "intermediate_size": inter, "num_hidden_layers": layers,
                                                        "vocab_size": vocab, "tie_word_embeddings": False}))
    nbytes = (b / "model.safetensors").stat().st_size + (t / "model.safetensors").stat().st_size
    return b, t, nbytes


def run_cat(files) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def run_naive(b: Path, t: Path) -> None:
    import torch
    from safetensors.torch import load

    # read both files into memory (safetensors' load_file would memory-map them)
    s0 = load((b / "model.safetensors").read_bytes())
    s1 = load((t / "model.safetensors").read_bytes())
    for k, w0 in s0.items():
        f0, f1 = w0.float(), s1[k].float()
        _ = (f0 == f1).float().mean().item(), torch.linalg.norm(f1 - f0).item(), torch.linalg.norm(f0).item()


def run_ours(b: Path, t: Path, metrics: str) -> None:
    from deltalens.weights.diff import run_diff

    run_diff(b, t, metrics=metrics)


def measure(label, fn, files, nbytes, cold: bool) -> dict:
    if cold:
        evict(files)
    with PeakAnon() as mem:
        t0, c0 = time.perf_counter(), _cpu_seconds()
        fn()
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    return {"what": label, "cache": "cold" if cold else "warm", "seconds": wall, "gb_s": nbytes / wall / 1e9,
            "cpu_s": cpu, "peak_anon_mb": mem.used / 2**20}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (``cat``): robust to other load."""
    self_t = os.times()
    return self_t.user + self_t.system + self_t.children_user + self_t.children_system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="small")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--with-rank", action="store_true", help="also time the default metrics (with ranks), warm")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of cat and deltalens (naive runs once); "
                                                          "prints median [min–max] of each")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import torch  # noqa: F401  (import cost outside the timings)

    import deltalens.weights.diff  # noqa: F401

    b, t, nbytes = build_pair(Path(args.out), args.size)
    files = [b / "model.safetensors", t / "model.safetensors"]
    hidden, inter, _, vocab = SIZES[args.size]
    largest_f32_mb = max(vocab * hidden, inter * hidden) * 4 / 2**20
    print(f"pair: {args.size}, {nbytes / 1e9:.2f} GB (both files, bf16); largest tensor in float32: {largest_f32_mb:.0f} MB; "
          f"torch threads: {torch.get_num_threads()}")
    results = []
    for round_ in range(args.repeat):
        for cold in (True, False):
            results.append(measure("cat", lambda: run_cat(files), files, nbytes, cold))
            if round_ == 0:
                results.append(measure("naive", lambda: run_naive(b, t), files, nbytes, cold))
            results.append(measure("deltalens sparsity,size", lambda: run_ours(b, t, "sparsity,size"), files, nbytes, cold))
    if args.with_rank:
        results.append(measure("deltalens all (with ranks)", lambda: run_ours(b, t, "sparsity,size,rank"), files, nbytes, False))
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other load slows every row alike)")
    print(f"{'what':30s} {'cache':5s} {'s':>7s} {'GB/s':>7s} {'cpu s':>7s} {'GB/cpu-s':>9s} {'peak anon MB':>13s}")
    for r in results:
        print(f"{r['what']:30s} {r['cache']:5s} {r['seconds']:7.2f} {r['gb_s']:7.2f} {r['cpu_s']:7.2f} "
              f"{nbytes / 1e9 / max(r['cpu_s'], 1e-9):9.2f} {r['peak_anon_mb']:13.0f}")
    if args.repeat > 1:
        print(f"over {args.repeat} rounds, GB/s median [min–max]:")
        for cache in ("cold", "warm"):
            for what in ("cat", "deltalens sparsity,size"):
                v = sorted(r["gb_s"] for r in results if r["what"] == what and r["cache"] == cache)
                print(f"  {what:28s} {cache}: {v[len(v) // 2]:.2f} [{v[0]:.2f}–{v[-1]:.2f}]")
    for cache in ("cold", "warm"):
        by = {r["what"]: r for r in results if r["cache"] == cache}  # the last round
        ours, naive, cat = by["deltalens sparsity,size"], by["naive"], by["cat"]
        print(f"{cache}: deltalens/cat throughput {ours['gb_s'] / cat['gb_s']:.2f}, deltalens/naive throughput "
              f"{ours['gb_s'] / naive['gb_s']:.2f}, peak anon deltalens/naive {ours['peak_anon_mb'] / max(naive['peak_anon_mb'], 1):.3f}, "
              f"deltalens peak anon / largest f32 tensor {ours['peak_anon_mb'] / largest_f32_mb:.2f}")


if __name__ == "__main__":
    main()
