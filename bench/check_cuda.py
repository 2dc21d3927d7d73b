"""Check that ``--device cuda`` gives the CPU numbers (run on a machine with a GPU).

    python bench/check_cuda.py
Builds a small bf16 pair (plus NaN, a LoRA-like float32 side), diffs it on CPU and on CUDA,
and prints the largest relative difference per field; exits non-zero beyond 1e-4.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    import torch
    from safetensors.torch import save_file

    from deltalens.weights.diff import run_diff

    print("torch", torch.__version__, "cuda", torch.cuda.is_available(), flush=True)
    if not torch.cuda.is_available():
        return 1
    g = torch.Generator().manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    base, tuned = {}, {}
    for i in range(3):
        for name, shape in (("q_proj", (512, 256)), ("up_proj", (700, 256)), ("norm", (256,))):
            key = f"model.layers.{i}.{name}.weight"
            w = torch.randn(shape, generator=g).to(torch.bfloat16)
            mask = torch.rand(shape, generator=g) < 0.3
            base[key] = w
            tuned[key] = torch.where(mask, (w.float() * 1.02).to(torch.bfloat16), w)
    tuned["model.layers.0.up_proj.weight"].view(-1)[5] = float("nan")
    for d, sd in (("b", base), ("t", tuned)):
        (tmp / d).mkdir()
        save_file(sd, str(tmp / d / "model.safetensors"))
    worst = 0.0
    for exact in (False, True):
        t0 = time.perf_counter()
        cpu = run_diff(tmp / "b", tmp / "t", exact=exact)
        t1 = time.perf_counter()
        gpu = run_diff(tmp / "b", tmp / "t", exact=exact, device="cuda")
        t2 = time.perf_counter()
        for rc, rg in zip(cpu.rows, gpu.rows):
            for k, v in rc.items():
                if isinstance(v, float) and rg.get(k) is not None:
                    worst = max(worst, abs(v - rg[k]) / max(abs(v), 1e-12))
                elif isinstance(v, (int, str)) and rg.get(k) != v and k not in ("numerical_rank",):
                    print("mismatch", rc["name"], k, v, rg.get(k))
                    worst = math.inf
        print(f"exact={exact}: cpu {t1 - t0:.2f}s cuda {t2 - t1:.2f}s; worst relative difference {worst:.2e}", flush=True)
    big = torch.randn(4096, 11008, device="cuda")
    torch.cuda.synchronize()
    from deltalens.weights import rank as R

    t0 = time.perf_counter()
    R.singular_values_gram(big)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    R.singular_values_exact(big)
    torch.cuda.synchronize()
    print(f"4096x11008 on cuda: gram-eigvalsh-float64 {t1 - t0:.2f}s, svdvals-float32 {time.perf_counter() - t1:.2f}s")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
