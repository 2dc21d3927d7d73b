"""Update sparsity and update size, streamed over a tensor pair (SPEC §2, §3).

The SPEC §2 rules are one function each (:func:`bitwise_unchanged`, :func:`relative_unchanged`,
:func:`absolute_unchanged`, :func:`bf16_visibility`). They are elementwise and written with
operators only, so the same function runs on torch tensors (the device pass, on CUDA and as the
CPU fallback), numpy arrays (the tests) and, compiled by numba, on scalars inside the fused CPU
loop (:mod:`deltalens.weights.sparsity_kernel`). Values are compared in float64, where every
bf16/fp16/fp32 value is exact, so each path gives the counts of a float64 reference exactly:

- bitwise: stored bits identical (−0.0 vs +0.0 changed; same-bits NaN unchanged); a pair of
  different dtypes is compared after an exact upcast to the wider float type, where any NaN
  equals any NaN (:func:`pair_bits`);
- relative (Path Not Taken): |w1 − w0| ≤ η·max(|w0|, |w1|), η = 1e-3;
- absolute (Mukherjee): |w1 − w0| ≤ tol for each tol in a list;
- precision visibility (ours): |Δ| ≥ half a bf16 ULP of w0 (visible) or 0 < |Δ| < that (vanishes
  on a bf16 save).

Elements whose stored bits are identical are unchanged under every rule (so a same-bits NaN is
unchanged everywhere; IEEE comparisons alone would call it changed); a pair with a NaN or ±Inf
that is not bit-identical is changed under every rule. The converse does not hold: ±0.0 is
changed bitwise but unchanged under the relative and absolute rules. In bf16 the relative rule
equals bitwise up to ±0.0 for η < 2⁻⁹ (SPEC §2; the tests show it). Sums (‖Δ‖², ‖W0‖², over
finite entries) accumulate in float64.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch

DEFAULT_ETA = 1e-3
DEFAULT_TOLS = (1e-5,)
TORCH_CPU_CHUNK = 1 << 16  # elements per chunk of the torch pass on CPU (float64 temporaries stay in L2)
CUDA_CHUNK = 1 << 24  # elements per chunk on CUDA: a few float64 temporaries of 128 MiB each
BF16_ETA_LIMIT = 2.0 ** -9  # below it the relative rule equals bitwise in bf16, up to ±0.0 (SPEC §2)
SPARSE_SHARE = 8  # the torch pass applies the rules to the changed elements only when at most 1/8 changed
from deltalens.weights.sparsity_rules import (  # noqa: E402,F401 (the rules, re-exported here)
    INF,
    absolute_unchanged,
    bf16_visibility,
    bits_view,
    bitwise_unchanged,
    relative_unchanged,
    update_abs,
)


def bf16_half_ulp(w0: torch.Tensor) -> torch.Tensor:
    """Half a bfloat16 ULP at each |w0| (SPEC §2 precision visibility, ours).

    ulp_bf16(x) = 2^(⌊log2|x|⌋ − 7) for normal x (8 significand bits), and the subnormal
    spacing 2^(−133) below 2^(−126); an update |Δ| < ulp/2 rounds back to w0 on a bf16 save.
    """
    w = w0.float()
    _, exponent = torch.frexp(w)  # |x| = m·2^e, m ∈ [0.5, 1) → ⌊log2|x|⌋ = e − 1
    # subnormals and zero share the smallest spacing (frexp gives e = 0 for zero)
    exponent = torch.where(w == 0, -125, exponent).clamp_min(-125)
    return torch.ldexp(torch.ones_like(w0, dtype=torch.float32), (exponent - 9).to(torch.float32))


# --- tensor helpers ---


def common_dtype(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """The float type both sides of a pair upcast to exactly before the bitwise rule."""
    if a == b:
        return a
    return torch.float64 if torch.float64 in (a, b) else torch.float32


def pair_bits(t0: torch.Tensor, t1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer views the bitwise rule compares: the stored bits of a same-dtype pair; for a
    pair of different dtypes the bits after an exact upcast to the wider float type, every NaN
    made one NaN (torch's upcast keeps a NaN's payload on some code paths and not on others, so
    across dtypes only "NaN on both sides" is well defined)."""
    if t0.dtype == t1.dtype:
        return bits_view(t0), bits_view(t1)
    wide = common_dtype(t0.dtype, t1.dtype)
    nan = torch.tensor(math.nan, dtype=wide, device=t0.device)
    return tuple(bits_view(torch.where(t.isnan(), nan, t.to(wide))) for t in (t0, t1))


def bitwise_changed(t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    """Bitwise update mask (SPEC §2 ``bitwise``): True where the bits of :func:`pair_bits` differ."""
    return ~bitwise_unchanged(*pair_bits(t0, t1))


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

    def add(self, *, numel, changed, nonfinite, rel_unchanged, abs_unchanged, sum_w02, sum_d2, max_abs) -> None:
        """Add the counts and sums of a stretch of the pair (either pass)."""
        self.numel += int(numel)
        self.changed += int(changed)
        self.nonfinite += int(nonfinite)
        self.rel_unchanged += int(rel_unchanged)
        self.abs_unchanged = [c + int(k) for c, k in zip(self.abs_unchanged, abs_unchanged)]
        self.sum_w02 += float(sum_w02)
        self.sum_d2 += float(sum_d2)
        self.max_abs = max(self.max_abs, float(max_abs))

    def update(self, a: torch.Tensor, b: torch.Tensor, *, sparsity: bool = True) -> None:
        """Add one chunk (1-D, stored dtypes) with torch ops: the pass on CUDA, and on CPU where
        the compiled loop does not apply (no numba, visibility, mixed or non-float dtypes).

        When at most 1/``SPARSE_SHARE`` of the chunk changed bitwise, the rules run on the changed
        elements only: the others have Δ = 0 and are unchanged under every rule (for bf16 pairs,
        mostly sparse RL updates, this is the short route).
        """
        n = a.numel()
        same = bitwise_unchanged(*pair_bits(a, b))
        changed = n - int(same.sum())
        f0 = a.to(torch.float64)
        fin0 = f0.abs() < INF
        sum_w02 = float(torch.where(fin0, f0, 0.0).square().sum())
        if changed * SPARSE_SHARE <= n:
            keep = ~same
            x0, x1, same, base = f0[keep], b[keep].to(torch.float64), same[keep], n - changed
        else:
            x0, x1, base = f0, b.to(torch.float64), 0
        d = update_abs(x0, x1)
        fin0x = x0.abs() < INF
        both = fin0x & (x1.abs() < INF)
        dz = torch.where(both, d, 0.0)
        counts = {"rel_unchanged": base, "abs_unchanged": [base] * len(self.tols)}
        if sparsity:
            counts["rel_unchanged"] += int(relative_unchanged(same, d, x0, x1, self.eta).sum())
            counts["abs_unchanged"] = [base + int(absolute_unchanged(same, d, tol).sum()) for tol in self.tols]
        self.add(numel=n, changed=changed, nonfinite=n - int(fin0.sum()) + int((fin0x & ~both).sum()),
                 sum_w02=sum_w02, sum_d2=float(dz.square().sum()), max_abs=float(dz.max()) if dz.numel() else 0.0,
                 **counts)
        if self.visible:
            visible, vanishing = bf16_visibility(d, bf16_half_ulp(x0))
            self.visible_count += int(visible.sum())
            self.vanishing_count += int(vanishing.sum())

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


@functools.cache
def compiled_pass():
    """The numba-compiled CPU pass (:mod:`deltalens.weights.sparsity_kernel`), or None when numba
    is not installed (the torch pass then runs on CPU too, with the same rule functions)."""
    if importlib.util.find_spec("numba") is None:
        return None
    from deltalens.weights import sparsity_kernel

    return sparsity_kernel


def stream_pair_stats(t0: torch.Tensor, t1: torch.Tensor, *, tols=DEFAULT_TOLS, eta: float = DEFAULT_ETA,
                      visible: bool = False, sparsity: bool = True, size: bool = True,
                      device: str = "cpu", chunk: int | None = None, kernel: str = "auto") -> dict:
    """Sparsity (SPEC §2) and size (SPEC §3) of one pair, streamed in chunks of the flat tensors.

    ``kernel``: "auto" runs the compiled loop on CPU (one fused pass per tensor, GIL released)
    when numba is installed, both tensors have one float dtype and visibility is off, and the
    torch pass otherwise; "torch" forces the torch pass (the tests check both give the same
    numbers, and those of a float64 reference). ``chunk``: elements per torch chunk, or per block
    of the compiled loop. On CPU, torch's intra-op threads are off during the torch pass: on
    cache-sized chunks they cost more than they give, badly so on a loaded machine.
    """
    if kernel not in ("auto", "torch"):
        raise ValueError(f"kernel: expected 'auto' or 'torch', got {kernel!r}")
    a_all, b_all = t0.reshape(-1), t1.reshape(-1)
    acc = SparsityAccumulator(tols, eta, visible)
    if device == "cpu" and kernel == "auto" and not visible and a_all.dtype == b_all.dtype:
        compiled = compiled_pass()
        if compiled is not None and compiled.supports(a_all.dtype):
            compiled.accumulate(acc, a_all, b_all, block=chunk)
            return acc.result(sparsity, size)
    chunk = chunk or (CUDA_CHUNK if device.startswith("cuda") else TORCH_CPU_CHUNK)
    threads_before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        for s in range(0, a_all.numel(), chunk):
            acc.update(a_all[s:s + chunk].to(device), b_all[s:s + chunk].to(device), sparsity=sparsity)
    finally:
        torch.set_num_threads(threads_before)
    return acc.result(sparsity, size)
