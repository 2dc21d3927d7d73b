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

import torch

DEFAULT_ETA = 1e-3
DEFAULT_TOLS = (1e-5,)
CPU_CHUNK = 1 << 18  # elements per chunk: 1 MiB of float32 per temporary
CUDA_CHUNK = 1 << 26

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

    def update(self, a: torch.Tensor, b: torch.Tensor, *, sparsity: bool = True, size: bool = True) -> None:
        """Add one chunk (1-D, stored dtypes) of the pair."""
        n = a.numel()
        self.numel += n
        same = a.dtype == b.dtype
        wide = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
        if same and sparsity:
            neq = bits_view(a) != bits_view(b)
        f0 = a.to(wide)
        f1 = b.to(wide)
        if not same and sparsity:
            neq = bits_view(f0) != bits_view(f1)
        d = f1 - f0
        ad = d.abs_()
        s0 = float(torch.dot(f0, f0))
        sd = float(torch.dot(ad, ad))
        finite = math.isfinite(s0) and math.isfinite(sd)
        if not finite:  # rare: count non-finite entries and keep the sums over finite ones
            ok = torch.isfinite(f0) & torch.isfinite(f1)
            self.nonfinite += int(n - ok.sum())
            s0 = float(torch.dot(f0[ok], f0[ok]))
            sd = float(torch.dot(ad[ok], ad[ok]))
            mx = float(ad[ok].max()) if bool(ok.any()) else 0.0
        else:
            mx = float(ad.max()) if n else 0.0
        self.max_abs = max(self.max_abs, mx)
        self.sum_w02 += s0
        self.sum_d2 += sd
        if sparsity:
            self.changed += int(neq.sum())
            same_bits_nonfinite = 0
            if not finite:
                same_bits_nonfinite = int((~neq & ~ok).sum())
            bound = torch.maximum(f0.abs(), f1.abs()).mul_(self.eta)  # f0 may alias the input: no in-place
            self.rel_unchanged += int((ad <= bound).sum()) + same_bits_nonfinite
            for i, tol in enumerate(self.tols):
                self.abs_unchanged[i] += int((ad <= tol).sum()) + same_bits_nonfinite
        if self.visible:
            half = bf16_half_ulp(a.to(torch.float32))
            self.visible_count += int((ad >= half).sum())
            self.vanishing_count += int(((ad > 0) & (ad < half)).sum())

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
                      device: str = "cpu", chunk: int | None = None) -> dict:
    """Sparsity (SPEC §2) and size (SPEC §3) of one pair, streamed in chunks of the flat tensors."""
    chunk = chunk or (CUDA_CHUNK if device.startswith("cuda") else CPU_CHUNK)
    acc = SparsityAccumulator(tols, eta, visible)
    a_all, b_all = t0.reshape(-1), t1.reshape(-1)
    for start in range(0, a_all.numel(), chunk):
        a = a_all[start:start + chunk]
        b = b_all[start:start + chunk]
        if device != "cpu":
            a, b = a.to(device), b.to(device)
        acc.update(a, b, sparsity=sparsity, size=size)
    return acc.result(sparsity, size)
