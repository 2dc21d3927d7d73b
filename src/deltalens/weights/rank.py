"""Rank of the update from its singular values (SPEC §3).

Three ways to get σ(Δ), recorded in each row as ``rank_method``:

- ``gram-eigvalsh-float64`` (default): G = ΔᵀΔ (or ΔΔᵀ, the smaller side) accumulated in
  float64 over row/column blocks, σ_i = √λ_i(G). Squaring costs half the digits, but float64
  keeps σ_i accurate down to ~1e-8·‖Δ‖_F, far below the numerical-rank threshold
  σ1·max(m, n)·eps(float32). About 10× faster than an SVD for LLM shapes.
- ``power-top-float32`` (fast mode when min(m, n) > ``spectral.FULL_FRAME_MAX``): σ1 only, a
  Ritz value from a block power iteration on Δ (shared with the spectral group's Wedin bound);
  stable rank and rank-1 share use the exact ‖Δ‖_F²; numerical, effective and energy ranks need
  every σ_i and are None (one SVD-equivalent per matrix: ask for them with ``--exact``).
- ``svdvals-float32`` (``exact=True``): ``torch.linalg.svdvals`` on Δ in float32, the values
  ``torch.linalg.matrix_rank(Δ.float())`` thresholds.
"""

from __future__ import annotations


import torch

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)
GRAM_BLOCK = 1 << 22  # elements of Δ converted to float64 at a time


def singular_values_gram(delta: torch.Tensor, *, block: int = GRAM_BLOCK) -> torch.Tensor:
    """σ(Δ) descending, float64, from the eigenvalues of the float64 Gram matrix on Δ's smaller side."""
    m, n = delta.shape
    tall = m >= n
    side = n if tall else m
    gram = torch.zeros(side, side, dtype=torch.float64, device=delta.device)
    step = max(1, block // max(side, 1))
    length = m if tall else n
    for s in range(0, length, step):
        part = (delta[s:s + step] if tall else delta[:, s:s + step]).to(torch.float64)
        gram += part.T @ part if tall else part @ part.T
    if gram.device.type == "cpu":  # LAPACK's threaded eigensolver stalls on a loaded machine (6x here)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            eig = torch.linalg.eigvalsh(gram)
        finally:
            torch.set_num_threads(threads)
    else:
        eig = torch.linalg.eigvalsh(gram)
    return eig.clamp_min(0.0).flip(0).sqrt()


def singular_values_exact(delta: torch.Tensor) -> torch.Tensor:
    """σ(Δ) descending via ``torch.linalg.svdvals`` in float32, returned as float64."""
    return torch.linalg.svdvals(delta.to(torch.float32)).to(torch.float64)


def numerical_rank(sigma: torch.Tensor, shape: tuple[int, int]) -> int:
    """SPEC §3: #{σ_i > σ1·max(m, n)·eps(float32)}, torch.linalg.matrix_rank's default."""
    if sigma.numel() == 0 or float(sigma[0]) == 0.0:
        return 0
    tol = float(sigma[0]) * max(shape) * FLOAT32_EPS
    return int((sigma > tol).sum())


def effective_rank(sigma: torch.Tensor) -> float | None:
    """SPEC §3 (Roy & Vetterli 2007): exp(−Σ p_i log p_i), p_i = σ_i/Σσ_j; None for Δ = 0
    (p is undefined: 0/0)."""
    total = float(sigma.sum())
    if total == 0.0:
        return None
    p = sigma[sigma > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(sigma: torch.Tensor) -> float | None:
    """SPEC §3: ‖Δ‖_F²/σ1² = Σσ_i²/σ1²; None for Δ = 0 (0/0)."""
    if sigma.numel() == 0:
        return None
    return stable_rank_from(float(sigma[0]), float((sigma.double() ** 2).sum()))


def stable_rank_from(sigma1: float, fro2: float) -> float | None:
    """SPEC §3: stable rank ‖Δ‖_F²/σ1² from σ1 and ‖Δ‖_F²; None for Δ = 0 (0/0, like the rank-1 share)."""
    return None if sigma1 == 0.0 else fro2 / sigma1**2


def energy_rank(sigma: torch.Tensor, level: float) -> int:
    """SPEC §3: smallest r with Σ_{i≤r} σ_i² ≥ level·Σσ_i²; 0 for Δ = 0 (r = 0 meets 0 ≥ 0: defined,
    like the numerical rank 0 of a zero matrix; the ratios stable, effective rank and rank-1 share are 0/0 there)."""
    energy = sigma.double() ** 2
    total = float(energy.sum())
    if total == 0.0:
        return 0
    cumulative = torch.cumsum(energy, 0)
    # tiny slack so that an exact planted level (e.g. 0.9 of the energy) is not lost to rounding
    return int((cumulative < level * total * (1 - 1e-12)).sum()) + 1


def rank1_share(sigma: torch.Tensor) -> float | None:
    """SPEC §3: σ1²/Σσ_i² (AlphaRL 2025); None for Δ = 0."""
    return rank1_share_from(float(sigma[0]), float((sigma.double() ** 2).sum()))


def rank1_share_from(sigma1: float, fro2: float) -> float | None:
    """SPEC §3: rank-1 share σ1²/‖Δ‖_F² from σ1 and ‖Δ‖_F²; None for Δ = 0."""
    return min(1.0, sigma1**2 / fro2) if fro2 > 0 else None


def rank_measures_top(sigma1: float, fro2: float) -> dict:
    """The SPEC §3 fields that need only σ1 and ‖Δ‖_F² (fast mode on large matrices); the
    full-spectrum ones (numerical, effective, energy ranks) are None: they need every σ_i."""
    return {
        "delta_spectral": sigma1,
        "numerical_rank": None,
        "effective_rank": None,
        "stable_rank": stable_rank_from(sigma1, fro2),
        "energy_rank_90": None,
        "energy_rank_99": None,
        "rank1_share": rank1_share_from(sigma1, fro2),
    }


def rank_measures(sigma: torch.Tensor, shape: tuple[int, int]) -> dict:
    """All SPEC §3 rank fields (plus ‖Δ‖₂ = σ1) from σ(Δ) in descending order."""
    return {
        "delta_spectral": float(sigma[0]) if sigma.numel() else 0.0,
        "numerical_rank": numerical_rank(sigma, shape),
        "effective_rank": effective_rank(sigma),
        "stable_rank": stable_rank(sigma),
        "energy_rank_90": energy_rank(sigma, 0.90),
        "energy_rank_99": energy_rank(sigma, 0.99),
        "rank1_share": rank1_share(sigma),
    }


