"""Update sparsity and update size, streamed over a tensor pair in chunks (SPEC §2, §3).

The three sparsity rules, always with the stored dtype:

- bitwise: stored bits identical (−0.0 vs +0.0 changed; same-bits NaN unchanged);
- relative (Path Not Taken): |w1 − w0| ≤ η·max(|w0|, |w1|), η = 1e-3;
- absolute (Mukherjee): |w1 − w0| ≤ tol for each tol in a list.

Elements whose stored bits are identical count as unchanged under every rule (so a same-bits
NaN is unchanged everywhere; IEEE comparisons alone would call it changed). The converse does
not hold: ±0.0 is changed bitwise but unchanged under the relative and absolute rules.

The pass works on the integer view for the bitwise test, upcasts each chunk once to float32
(float64 when an input is float64) for everything else, and keeps chunks small enough that
temporaries stay in cache. Sums are accumulated per chunk in float32 and across chunks in
float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch

DEFAULT_ETA = 1e-3
DEFAULT_TOLS = (1e-5,)
CPU_CHUNK = 1 << 16  # elements per chunk: 256 KiB of float32 per buffer (stays in L2)
CUDA_CHUNK = 1 << 26
BF16_ETA_LIMIT = 2.0 ** -9  # below it the relative rule equals bitwise in bf16, up to ±0.0 (SPEC §2)
SPARSE_SHARE = 8  # the bf16 pass compacts the changed elements when at most 1/8 of a chunk changed

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits_view(t: torch.Tensor) -> torch.Tensor:
    """The tensor's stored bits as a same-width integer tensor (no copy)."""
    return t.view(_INT_VIEW[t.element_size()])


def bitwise_changed(t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    """Bitwise update mask (SPEC §2 ``bitwise``): True where the stored bits differ.

    Tensors of different dtypes are compared after an exact upcast to the wider float type.
    """
    if t0.dtype != t1.dtype:
        wide = torch.float64 if torch.float64 in (t0.dtype, t1.dtype) else torch.float32
        t0, t1 = t0.to(wide), t1.to(wide)
    return bits_view(t0) != bits_view(t1)


def relative_unchanged(f0: torch.Tensor, f1: torch.Tensor, eta: float = DEFAULT_ETA) -> torch.Tensor:
    """SPEC §2 ``relative`` rule: |w1 − w0| ≤ η·max(|w0|, |w1|) (Path Not Taken, η = 1e-3)."""
    return (f1 - f0).abs() <= eta * torch.maximum(f0.abs(), f1.abs())


def absolute_unchanged(f0: torch.Tensor, f1: torch.Tensor, tol: float) -> torch.Tensor:
    """SPEC §2 ``absolute`` rule: |w1 − w0| ≤ tol (Mukherjee et al., tol = 1e-5 by default)."""
    return (f1 - f0).abs() <= tol


def bf16_half_ulp(w0: torch.Tensor) -> torch.Tensor:
    """Half a bfloat16 ULP at each |w0| (SPEC §2 precision visibility, ours).

    ulp_bf16(x) = 2^(⌊log2|x|⌋ − 7) for normal x (8 significand bits), and the subnormal
    spacing 2^(−133) below 2^(−126); an update |Δ| < ulp/2 rounds back to w0 on a bf16 save.
    """
    _, exponent = torch.frexp(w0.float())  # |x| = m·2^e, m ∈ [0.5, 1) → ⌊log2|x|⌋ = e − 1
    exponent = exponent.clamp_min(-125)  # subnormals and zero share the smallest spacing
    return torch.ldexp(torch.ones_like(w0, dtype=torch.float32), (exponent - 9).to(torch.float32))


def fraction(count: float, total: float) -> float | None:
    """count/total, or None for an empty total."""
    return float(count) / float(total) if total else None


class SparsityAccumulator:
    """Running counts and sums over the chunks of one tensor pair (SPEC §2, §3)."""

    def __init__(self, tols, eta: float, visible: bool):
        self.tols = tuple(float(t) for t in tols)
        self.eta = float(eta)
        self.visible = visible
        self.numel = 0
        self.changed = 0
        self.rel_unchanged = 0
        self.abs_unchanged = [0] * len(self.tols)
        self.nonfinite = 0
        self.sum_d2 = 0.0
        self.sum_w02 = 0.0
        self.max_abs = 0.0
        self.visible_count = 0
        self.vanishing_count = 0

    def update(self, a: torch.Tensor, b: torch.Tensor, *, sparsity: bool = True) -> None:
        """Add one chunk (1-D, stored dtypes) of the pair with torch ops (used on CUDA).

        Float work runs only on the bitwise-changed elements when they are fewer than half of
        the chunk (unchanged elements have Δ = 0 and are unchanged under every rule).
        """
        n = a.numel()
        self.numel += n
        wide = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
        f0 = a.to(wide)
        if a.dtype == b.dtype:
            neq = bits_view(a) != bits_view(b)
            f1 = None
        else:
            f1 = b.to(wide)
            neq = bits_view(f0) != bits_view(f1)
        changed = int(neq.sum())
        self.changed += changed
        s0 = float(torch.dot(f0, f0))
        finite0 = math.isfinite(s0)
        if not finite0:  # rare: count non-finite base entries; sums over finite ones
            ok0 = torch.isfinite(f0)
            self.nonfinite += int(n - ok0.sum())
            s0 = float(torch.dot(f0[ok0], f0[ok0]))
        self.sum_w02 += s0
        if changed == 0:
            self.rel_unchanged += n
            self.abs_unchanged = [c + n for c in self.abs_unchanged]
            return
        subset = changed < n // 2
        if subset:
            x0 = f0[neq]
            x1 = (b[neq] if f1 is None else f1[neq]).to(wide)
            base_unchanged = n - changed
        else:
            x0 = f0
            x1 = b.to(wide) if f1 is None else f1
            base_unchanged = 0
        ad = (x1 - x0).abs_()
        sd = float(torch.dot(ad, ad))
        if finite0 and math.isfinite(sd):
            mx = float(ad.max())
        else:
            fin = torch.isfinite(x0) & torch.isfinite(x1)
            self.nonfinite += int((torch.isfinite(x0) & ~torch.isfinite(x1)).sum())
            ad = torch.where(fin, ad, torch.zeros((), dtype=ad.dtype))
            sd = float(torch.dot(ad, ad))
            mx = float(ad.max())
            if not subset:  # same-bits NaN/Inf: unchanged under every rule
                base_unchanged = int((~neq & ~fin).sum())
            ad = torch.where(fin, ad, torch.full((), math.nan, dtype=ad.dtype))  # non-finite Δ: changed (NaN ≤ x is False)
        self.max_abs = max(self.max_abs, mx)
        self.sum_d2 += sd
        if sparsity:
            bound = torch.maximum(x0.abs(), x1.abs()).mul_(self.eta)  # x0 may alias the input: no in-place
            self.rel_unchanged += int((ad <= bound).sum()) + base_unchanged
            for i, tol in enumerate(self.tols):
                self.abs_unchanged[i] += int((ad <= tol).sum()) + base_unchanged
        if self.visible:
            half = bf16_half_ulp(x0.to(torch.float32))
            self.visible_count += int((ad >= half).sum())
            self.vanishing_count += int(((ad > 0) & (ad < half)).sum())

    def update_cpu(self, a: torch.Tensor, b: torch.Tensor, *, sparsity: bool = True, fast: bool = True) -> None:
        """:meth:`update` for CPU chunks, in numpy with preallocated buffers (same results).

        Fresh 1 MiB temporaries cost a page-faulting mmap each; boolean-mask indexing and torch's
        CPU comparisons are slow. So: dtype casts by ``copy_`` into float buffers, every other
        step an ``out=`` ufunc over the whole chunk, counts by ``count_nonzero``. A bf16 pair
        takes the shorter pass of :meth:`update_bf16_chunks` when ``fast`` (the default).
        """
        if fast and self.uses_bf16_pass(a, b):
            self.update_bf16_chunks(a.reshape(-1), b.reshape(-1), [0], a.numel())
            return
        with np.errstate(invalid="ignore", over="ignore"):
            self._update_cpu(a, b, sparsity)

    def uses_bf16_pass(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        """Whether :meth:`update_bf16_chunks` applies: a bf16 pair, η < 2⁻⁹, no visibility."""
        return a.dtype == b.dtype == torch.bfloat16 and not self.visible and 0 <= self.eta < BF16_ETA_LIMIT

    def update_bf16_chunks(self, a_all: torch.Tensor, b_all: torch.Tensor, starts, chunk: int) -> None:
        """The bf16 pass over the chunks of a bf16 pair starting at ``starts``: bitwise mask on the
        int16 view, one float32 pass for Σw0², and the float arithmetic only where it can matter.
        A chunk holding a NaN/Inf goes to the general pass. One loop with its buffers and views
        set up once: per-chunk Python overhead is ~20% of the pass at 64 Ki elements.

        - relative rule: in bf16 two different finite values differ by more than 2⁻⁹ of the
          larger magnitude (8 significand bits), so for η < 2⁻⁹ the relative rule keeps exactly
          the bitwise-unchanged elements plus the ±0.0 pairs (SPEC §2). With Δ = w1 − w0 in
          float32 (exact-or-nonzero: float subtraction of distinct values never gives 0), the
          relative count is the number of Δ == 0 (counted on the int32 view of |Δ|).
        - bitwise-identical elements have Δ = 0: unchanged under every rule, nothing added to
          ‖Δ‖² or max|Δ|. When at most 1/``SPARSE_SHARE`` of the chunk changed, Δ is computed on
          the compacted changed elements only; otherwise on the whole chunk (compaction costs
          about as much as the dense arithmetic it saves).
        """
        buf = self._buffers(min(chunk, a_all.numel()), torch.float32)
        f0_all, f1_all, mask_all = buf["f0"], buf["f1"], buf["mask"]
        ai_all, bi_all = bits_view(a_all).numpy(), bits_view(b_all).numpy()
        tols, total = self.tols, a_all.numel()
        count, dot, isfinite = np.count_nonzero, np.dot, math.isfinite
        numel = changed_all = zero_all = 0
        s0_all = sd_all = mx_all = 0.0
        small_all = [0] * len(tols)
        with np.errstate(invalid="ignore", over="ignore"):
            for s in starts:
                e = min(s + chunk, total)
                n = e - s
                mask = mask_all[:n]
                np.not_equal(ai_all[s:e], bi_all[s:e], out=mask)
                changed = int(count(mask))
                f0t = f0_all[:n]
                f0t.copy_(a_all[s:e])
                f0 = f0t.numpy()
                s0 = float(dot(f0, f0))
                if not isfinite(s0):
                    self._update_cpu(a_all[s:e], b_all[s:e], True)
                    continue
                if changed == 0:
                    sd, mx, zero, small = 0.0, 0.0, n, [n] * len(tols)
                else:
                    if changed * SPARSE_SHARE <= n:
                        idx = np.flatnonzero(mask)
                        x1 = torch.from_numpy(bi_all[s:e][idx]).view(torch.bfloat16).float().numpy()
                        d = np.subtract(x1, f0[idx], out=x1)
                        same = n - changed
                    else:
                        b_f = f1_all[:n]
                        b_f.copy_(b_all[s:e])
                        d = torch.sub(b_f, f0t, out=b_f).numpy()  # torch's float32 subtract: ~2x numpy's here
                        same = 0
                    sd = float(dot(d, d))
                    if not isfinite(sd):
                        self._update_cpu(a_all[s:e], b_all[s:e], True)
                        continue
                    cmp = mask[: d.size]  # the mask is no longer needed
                    np.abs(d, out=d)  # every zero is now +0.0, whose bits are the only all-zero int32
                    zero = same + d.size - int(count(d.view(np.int32)))
                    mx = float(d.max())
                    small = [same + int(count(np.less_equal(d, tol, out=cmp))) for tol in tols]
                numel += n
                changed_all += changed
                s0_all += s0
                sd_all += sd
                mx_all = max(mx_all, mx)
                zero_all += zero
                small_all = [c + k for c, k in zip(small_all, small)]
        self.numel += numel
        self.changed += changed_all
        self.sum_w02 += s0_all
        self.sum_d2 += sd_all
        self.max_abs = max(self.max_abs, mx_all)
        self.rel_unchanged += zero_all
        self.abs_unchanged = [c + k for c, k in zip(self.abs_unchanged, small_all)]

    def _update_cpu(self, a: torch.Tensor, b: torch.Tensor, sparsity: bool) -> None:
        n = a.numel()
        wide = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
        buf = self._buffers(n, wide)
        f0t, f1t = buf["f0"][:n], buf["f1"][:n]
        f0t.copy_(a)
        f1t.copy_(b)
        f0, f1 = f0t.numpy(), f1t.numpy()
        d, t, mask = buf["d"][:n], buf["t"][:n], buf["mask"][:n]
        if a.dtype == b.dtype:
            np.not_equal(bits_view(a).numpy(), bits_view(b).numpy(), out=mask)
        else:
            np.not_equal(bits_view(f0t).numpy(), bits_view(f1t).numpy(), out=mask)
        changed = int(np.count_nonzero(mask))
        self.numel += n
        self.changed += changed
        s0 = float(np.dot(f0, f0))
        np.subtract(f1, f0, out=d)
        np.abs(d, out=d)
        sd = float(np.dot(d, d))
        base_unchanged = 0
        if math.isfinite(s0) and math.isfinite(sd):
            mx = float(d.max()) if n else 0.0
        else:  # rare: count non-finite entries, sums over finite ones, same-bits NaN/Inf unchanged
            fin0, fin1 = np.isfinite(f0), np.isfinite(f1)
            fin = fin0 & fin1
            self.nonfinite += int(n - np.count_nonzero(fin))
            s0 = float(np.dot(np.where(fin0, f0, 0), np.where(fin0, f0, 0)))
            d[~fin] = 0
            sd = float(np.dot(d, d))
            mx = float(d.max())
            base_unchanged = int(np.count_nonzero(~mask & ~fin))
            d[~fin] = np.nan  # a non-finite Δ is changed under the relative/absolute rules (NaN ≤ x is False)
        self.sum_w02 += s0
        self.sum_d2 += sd
        self.max_abs = max(self.max_abs, mx)
        if sparsity:
            if changed == 0 and base_unchanged == 0:
                self.rel_unchanged += n
                self.abs_unchanged = [c + n for c in self.abs_unchanged]
            else:
                np.abs(f0, out=t)
                np.abs(f1, out=f1)
                np.maximum(t, f1, out=t)
                np.multiply(t, self.eta, out=t)
                np.less_equal(d, t, out=mask)
                self.rel_unchanged += int(np.count_nonzero(mask)) + base_unchanged
                for i, tol in enumerate(self.tols):
                    np.less_equal(d, tol, out=mask)
                    self.abs_unchanged[i] += int(np.count_nonzero(mask)) + base_unchanged
        if self.visible and changed:
            half = bf16_half_ulp(f0t).numpy()
            self.visible_count += int(np.count_nonzero(d >= half))
            self.vanishing_count += int(np.count_nonzero((d > 0) & (d < half)))

    def _buffers(self, n: int, wide: torch.dtype) -> dict:
        key = (n, wide)
        if getattr(self, "_buf_key", None) is None or self._buf_key[1] != wide or self._buf_key[0] < n:
            npdt = np.float64 if wide == torch.float64 else np.float32
            self._buf = {"f0": torch.empty(n, dtype=wide), "f1": torch.empty(n, dtype=wide),
                         "d": np.empty(n, npdt), "t": np.empty(n, npdt), "mask": np.empty(n, bool)}
            self._buf_key = key
        return self._buf

    def merge(self, other: "SparsityAccumulator") -> None:
        """Add another accumulator's counts (chunks processed by another worker)."""
        for k in ("numel", "changed", "rel_unchanged", "nonfinite", "sum_d2", "sum_w02", "visible_count",
                  "vanishing_count"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.abs_unchanged = [x + y for x, y in zip(self.abs_unchanged, other.abs_unchanged)]
        self.max_abs = max(self.max_abs, other.max_abs)

    def result(self, sparsity: bool, size: bool) -> dict:
        out: dict = {"nonfinite": int(self.nonfinite)}
        n = self.numel
        if sparsity:
            out["unchanged_bitwise"] = fraction(n - self.changed, n)
            out["unchanged_relative"] = fraction(self.rel_unchanged, n)
            out["unchanged_absolute"] = {_tol_key(t): fraction(c, n) for t, c in zip(self.tols, self.abs_unchanged)}
            if self.visible:
                out["visible_fraction"] = fraction(self.visible_count, n)
                out["vanishing_fraction"] = fraction(self.vanishing_count, n)
        if size:
            out.update(update_size(self.sum_d2, self.sum_w02, self.max_abs))
        return out


def update_size(sum_d2: float, sum_w02: float, max_abs: float) -> dict:
    """SPEC §3 size: ‖Δ‖_F = √Σδ², ‖Δ‖_F/‖W0‖_F, max |Δ| (over finite entries)."""
    fro = math.sqrt(sum_d2)
    w0 = math.sqrt(sum_w02)
    return {"delta_fro": fro, "delta_rel": fro / w0 if w0 > 0 else None, "delta_max_abs": float(max_abs)}


def _tol_key(tol: float) -> str:
    """JSON key of a tolerance, Python's repr of the float ('1e-05')."""
    return repr(float(tol))


def stream_pair_stats(t0: torch.Tensor, t1: torch.Tensor, *, tols=DEFAULT_TOLS, eta: float = DEFAULT_ETA,
                      visible: bool = False, sparsity: bool = True, size: bool = True,
                      device: str = "cpu", chunk: int | None = None, workers: int | None = None,
                      kernel: str = "auto") -> dict:
    """Sparsity (SPEC §2) and size (SPEC §3) of one pair, streamed in chunks of the flat tensors.

    On CPU the chunks are shared among ``workers`` threads (default 1), each running
    single-threaded torch ops: intra-op threading on cache-sized chunks costs more than it gives,
    badly so on a loaded machine. Two workers measured no faster than one on the 2-core box
    (each chunk is ~12 short numpy/torch calls with the GIL taken between them) and used about
    twice the CPU per byte (bench/bench_sparsity_kernel.py; docs/diff.md), hence the default. ``kernel``: "auto" (numpy on CPU, with the short
    bf16 pass where it applies; torch elsewhere), "numpy" (the general numpy pass for every
    dtype) or "torch" to run the device kernel on CPU (the tests check all give the same numbers).
    """
    chunk = chunk or (CUDA_CHUNK if device.startswith("cuda") else CPU_CHUNK)
    a_all, b_all = t0.reshape(-1), t1.reshape(-1)
    starts = list(range(0, a_all.numel(), chunk))
    if device != "cpu" or kernel == "torch":
        acc = SparsityAccumulator(tols, eta, visible)
        for s in starts:
            acc.update(a_all[s:s + chunk].to(device), b_all[s:s + chunk].to(device), sparsity=sparsity)
        return acc.result(sparsity, size)
    workers = max(1, min(workers or 1, len(starts)))
    accs = [SparsityAccumulator(tols, eta, visible) for _ in range(workers)]

    bf16_pass = kernel == "auto" and accs[0].uses_bf16_pass(a_all, b_all)

    def work(i: int) -> None:
        if bf16_pass:
            accs[i].update_bf16_chunks(a_all, b_all, starts[i::workers], chunk)
            return
        for s in starts[i::workers]:
            accs[i].update_cpu(a_all[s:s + chunk], b_all[s:s + chunk], sparsity=sparsity, fast=False)

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers == 1:
            work(0)
        else:
            list(_pool(workers).map(work, range(workers)))
    finally:
        torch.set_num_threads(threads_before)
    for other in accs[1:]:
        accs[0].merge(other)
    return accs[0].result(sparsity, size)


_POOLS: dict = {}


def _pool(workers: int):
    """A thread pool kept for the process (starting threads per tensor costs more than a small
    tensor's whole pass)."""
    if workers not in _POOLS:
        from concurrent.futures import ThreadPoolExecutor

        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="deltalens-sparsity")
    return _POOLS[workers]
