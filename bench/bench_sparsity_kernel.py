"""Per-core cost of the sparsity/size pass, without the driver, reader or disk (issue 2).

Runs over the tensors of the ``bench_diff.py`` pair (built if missing), memory-mapped and
already in the page cache, and times in one process, interleaved round by round:

- the minimal pass: bitwise mask and count on the int16 views (the floor: every byte read once);
- the minimal pass plus the float32 upcast of w0 and Σw0² (what ‖Δ‖/‖W0‖ needs at least);
- the compiled pass (numba; ``kernel="auto"`` on CPU) on 1 and 2 threads;
- the torch pass (``kernel="torch"``: the pass on CUDA, and on CPU without numba).

GB counts both tensors' bytes; GB per CPU-second is the steadier figure on a shared machine.

    python bench/bench_sparsity_kernel.py --size small --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

CPU_CHUNK = 1 << 16  # the minimal passes' chunk (elements)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here.parent / "src"), str(here)]
    import numpy as np
    import torch
    from bench_diff import build_pair
    from safetensors import safe_open

    from deltalens.weights import sparsity_kernel
    from deltalens.weights.sparsity import DEFAULT_ETA, DEFAULT_TOLS, SparsityAccumulator, stream_pair_stats

    torch.set_num_threads(1)  # the minimal passes use torch's copy on one thread, as the real pass does
    b, t, nbytes = build_pair(Path(args.out), args.size)
    f0, f1 = safe_open(str(b / "model.safetensors"), "pt"), safe_open(str(t / "model.safetensors"), "pt")
    pairs = [(f0.get_tensor(k).reshape(-1), f1.get_tensor(k).reshape(-1)) for k in f0.keys()]
    mask, buf = np.empty(CPU_CHUNK, bool), torch.empty(CPU_CHUNK)

    def minimal(upcast: bool) -> None:
        for a, c in pairs:
            ai, ci = a.view(torch.int16).numpy(), c.view(torch.int16).numpy()
            for s in range(0, ai.size, CPU_CHUNK):
                n = min(CPU_CHUNK, ai.size - s)
                np.count_nonzero(np.not_equal(ai[s:s + n], ci[s:s + n], out=mask[:n]))
                if upcast:
                    f = buf[:n].copy_(a[s:s + n]).numpy()
                    np.dot(f, f)

    def compiled(threads: int) -> None:
        for a, c in pairs:
            acc = SparsityAccumulator(DEFAULT_TOLS, DEFAULT_ETA, False)
            sparsity_kernel.accumulate(acc, a, c, threads=threads)

    def torch_pass() -> None:
        for a, c in pairs:
            stream_pair_stats(a, c, kernel="torch")

    cases = {"minimal: int16 != and count": lambda: minimal(False),
             "minimal + float32 upcast + Σw0²": lambda: minimal(True),
             "compiled pass, 1 thread": lambda: compiled(1),
             "compiled pass, 2 threads": lambda: compiled(2),
             "torch pass": torch_pass}
    for fn in cases.values():  # map the pages and warm up once
        fn()
    res: dict[str, list] = {}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            t0, c0 = time.perf_counter(), os.times()
            fn()
            wall, c1 = time.perf_counter() - t0, os.times()
            cpu = c1.user - c0.user + c1.system - c0.system
            res.setdefault(name, []).append((nbytes / wall / 1e9, nbytes / max(cpu, 1e-9) / 1e9))
    print(f"pair: {args.size}, {nbytes / 1e9:.2f} GB; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"{args.rounds} rounds, median [min–max]")
    for name, v in res.items():
        g, c = sorted(x[0] for x in v), sorted(x[1] for x in v)
        print(f"{name:36s} GB/s {statistics.median(g):5.2f} [{g[0]:.2f}–{g[-1]:.2f}]   "
              f"GB/CPU-s {statistics.median(c):5.2f} [{c[0]:.2f}–{c[-1]:.2f}]")


if __name__ == "__main__":
    main()
