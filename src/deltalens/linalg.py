"""Pure tensor math shared by every level (weights, kernels): no I/O, no globals.

Conventions: angles in radians unless a name says ``_deg``; singular values descending.
"""

from __future__ import annotations

import torch


def orthonormal_basis(a: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the column space of ``a`` (m×k) via reduced QR."""
    q, _ = torch.linalg.qr(a, mode="reduced")
    return q


def principal_angles(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    orthonormal: bool = False,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Principal angles θ_1 ≤ … ≤ θ_k (radians) between span(a) and span(b).  SPEC §4, §6.

    ``a`` is m×p and ``b`` is m×q; k = min(p, q). cos θ_i = σ_i(Q_aᵀ Q_b). Small angles are
    computed from sines, σ((I − Q_a Q_aᵀ) Q_b), as in Knyazev & Argentati (2002, SIAM J. Sci.
    Comput. 23(6)) and ``scipy.linalg.subspace_angles``; arccos of the cosines is used only for
    angles above 45°, where it is well conditioned. Set ``orthonormal=True`` when the columns
    are already orthonormal (e.g. singular vectors) to skip the QR.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"principal_angles needs m×p and m×q matrices, got {tuple(a.shape)} and {tuple(b.shape)}")
    qa = a.to(dtype)
    qb = b.to(dtype)
    if not orthonormal:
        qa, qb = orthonormal_basis(qa), orthonormal_basis(qb)
    if qa.shape[1] < qb.shape[1]:
        qa, qb = qb, qa  # project the smaller basis off the larger one
    cross = qa.T @ qb  # p×q with p ≥ q
    cosines = torch.linalg.svdvals(cross).clamp(0.0, 1.0)  # descending → angles ascending
    residual = qb - qa @ cross
    sines = torch.linalg.svdvals(residual).clamp(0.0, 1.0)  # descending
    small_from_sines = torch.arcsin(sines.flip(0))  # ascending
    from_cosines = torch.arccos(cosines)
    use_sines = cosines.square() >= 0.5  # angle ≤ 45°
    return torch.where(use_sines, small_from_sines, from_cosines)


def wedin_bound(delta_spectral: float, gap: float) -> float:
    """Wedin's sin θ bound: sin θ_max ≤ ‖Δ‖₂ / gap_k (SPEC §4); ``inf`` for a zero gap."""
    if gap <= 0.0:
        return float("inf")
    return float(delta_spectral) / float(gap)
