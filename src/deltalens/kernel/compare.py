"""Comparing two kernels K0 (base) and K1 (tuned): rescale or rotation? (SPEC §6 with §4 rules)

Every function takes symmetric n×n matrices (any float dtype; arithmetic in float64) and
returns numbers or plain dicts. Eigenvalues are descending throughout.
"""

from __future__ import annotations

import math

import torch

from deltalens.errors import DeltalensError
from deltalens.linalg import principal_angles, wedin_bound

UNCHANGED_RTOL = 1e-12


def kernel_spectrum(kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns, same order) of a symmetric K, float64."""
    k = kernel.double()
    values, vectors = torch.linalg.eigh((k + k.T) / 2)
    return values.flip(0), vectors.flip(1)


def eigenvalue_log_ratios(values0: torch.Tensor, values1: torch.Tensor, r: int) -> list[float | None]:
    """log(λ_i(K1)/λ_i(K0)) for i = 1..r (SPEC §6); ``None`` where either eigenvalue is ≤ 0."""
    out: list[float | None] = []
    for a, b in zip(values0[:r].tolist(), values1[:r].tolist()):
        out.append(math.log(b / a) if a > 0 and b > 0 else None)
    return out


def kernel_alignment(k0: torch.Tensor, k1: torch.Tensor) -> float:
    """A(K0, K1) = ⟨K0, K1⟩_F / (‖K0‖_F ‖K1‖_F) (SPEC §6); ``nan`` if either kernel is zero."""
    a, b = k0.double(), k1.double()
    denom = float(torch.linalg.norm(a) * torch.linalg.norm(b))
    return float((a * b).sum()) / denom if denom > 0 else float("nan")


def kernel_rescale_share(k0: torch.Tensor, k1: torch.Tensor, vectors0: torch.Tensor | None = None) -> tuple[float | None, str | None]:
    """Propensity share of the kernel change: ‖diag E‖²/‖E‖_F², E = U0ᵀ(K1 − K0)U0 (SPEC §6, §5).

    U0 are all n eigenvectors of K0. E_ii = δλ_i moves eigenvalues along fixed eigenvectors
    (rescale); off-diagonal E_ij rotate them. Returns ``(share, None)``, or ``(None, reason)``
    when K1 = K0 to within ``UNCHANGED_RTOL``·‖K0‖_F (the split of a zero change is undefined).
    Random baseline for a symmetric E: 2/(n+1) (:func:`kernel_rescale_baseline`). Not
    :func:`deltalens.weights.spectral.rescale_share`, the same split of a weight update (SPEC §5).
    """
    a, b = k0.double(), k1.double()
    if vectors0 is None:
        _, vectors0 = kernel_spectrum(a)
    change = b - a
    scale = max(float(torch.linalg.norm(a)), float(torch.linalg.norm(b)))
    change_norm = float(torch.linalg.norm(change))
    if change_norm <= UNCHANGED_RTOL * scale:
        return None, f"kernel unchanged: ‖K1−K0‖_F = {change_norm:.3g} ≤ {UNCHANGED_RTOL:g}·‖K‖_F, so the rescale/rotation split is undefined"
    e = vectors0.T @ change @ vectors0
    return float(torch.diagonal(e).square().sum() / e.square().sum()), None


def kernel_rescale_baseline(n: int) -> float:
    """Random baseline of :func:`kernel_rescale_share` for a symmetric n×n E: n/(n(n+1)/2) = 2/(n+1)."""
    return 2.0 / (n + 1)


def default_top_r(n: int, requested: int | None = None) -> int:
    """r = requested (default 10), capped at n − 1 so the gap λ_r − λ_{r+1} exists; at least 1."""
    r = 10 if requested is None else int(requested)
    if r < 1:
        raise DeltalensError(f"--top-r: must be ≥ 1, got {r}")
    return max(1, min(r, n - 1)) if n > 1 else 1


def compare_kernels(k0: torch.Tensor, k1: torch.Tensor, top_r: int | None = None) -> dict:
    """All SPEC §6 comparisons of K1 against K0 as one JSON-ready dict.

    - ``eigenvalue_log_ratios``: log(λ_i(K1)/λ_i(K0)), i ≤ r;
    - ``angles_deg``: principal angles between the top-r eigenspaces (ascending, degrees;
      sine-based, ``deltalens.linalg.principal_angles``);
    - ``gap`` = λ_r(K0) − λ_{r+1}(K0) (λ_{n+1} = 0); ``wedin_bound`` = ‖K1 − K0‖₂ / gap
      (Davis–Kahan/Wedin bound on sin θ_max); ``gap_limited`` when that bound exceeds 1;
    - ``alignment``, ``rescale_share`` (+ ``rescale_undefined_reason``), ``rescale_baseline``.
    """
    if k0.shape != k1.shape or k0.ndim != 2 or k0.shape[0] != k0.shape[1]:
        raise DeltalensError(f"kernels: expected two n×n matrices of one size, got {tuple(k0.shape)} and {tuple(k1.shape)}")
    n = k0.shape[0]
    r = default_top_r(n, top_r)
    values0, vectors0 = kernel_spectrum(k0)
    values1, vectors1 = kernel_spectrum(k1)
    angles = torch.rad2deg(principal_angles(vectors0[:, :r], vectors1[:, :r], orthonormal=True)).tolist()
    next_value = float(values0[r]) if r < n else 0.0
    gap = float(values0[r - 1]) - next_value
    spectral_change = float(torch.linalg.matrix_norm(k1.double() - k0.double(), ord=2))
    bound = wedin_bound(spectral_change, gap)
    share, reason = kernel_rescale_share(k0, k1, vectors0)
    return {
        "top_r": r,
        "eigenvalue_log_ratios": eigenvalue_log_ratios(values0, values1, r),
        "angles_deg": angles,
        "angle_max_deg": max(angles),
        "angle_mean_deg": sum(angles) / len(angles),
        "gap": gap,
        "wedin_bound": bound,
        "gap_limited": bool(bound > 1.0),
        "alignment": kernel_alignment(k0, k1),
        "rescale_share": share,
        "rescale_undefined_reason": reason,
        "rescale_baseline": kernel_rescale_baseline(n),
    }
