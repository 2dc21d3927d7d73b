"""Comparing curvature subspaces (SPEC §9 with the §4 and §5 rules), each against a random baseline.

Pure functions of tensors: principal angles between top-r subspaces and the angles two random
r-dimensional subspaces of R^P make, the §5 PP share of a direction's blocks in the weights'
top-k singular subspaces, the size of H − G along given directions, and the base → tuned
comparison of a pair (rotation, eigenvalue drift, rescale share of the curvature change).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from deltalens.curvature.store import ColumnFile, column_map, streamed_angles_deg
from deltalens.linalg import principal_angles, top_k_svd
from deltalens.weights.spectral import block_shares, default_k


def random_subspace_angles_deg(dim: int, r: int, *, seed: int = 0, draws: int = 64) -> list[float]:
    """Mean (over ``draws`` seeded draws) of the ascending principal angles between a fixed and a
    uniformly random r-dimensional subspace of R^dim, in degrees: the random-subspace baseline.

    Exact sampling in O(r³) whatever dim is: with the fixed subspace the first r coordinates and
    the random one spanned by a dim × r Gaussian G = [G₁; G₂], the cosines are the singular values
    of G₁ (G₁ᵀG₁ + W)^{-1/2} with W = G₂ᵀG₂ ~ Wishart(dim − r, I_r), drawn by Bartlett's
    decomposition. E[Σ cos²θ_i] = r²/dim.
    """
    if r >= dim:
        return [0.0] * r
    rng = np.random.default_rng(seed)
    total = np.zeros(r)
    for _ in range(draws):
        g1 = rng.standard_normal((r, r))
        a = np.tril(rng.standard_normal((r, r)), -1)
        a[np.diag_indices(r)] = np.sqrt(rng.chisquare(dim - r - np.arange(r)))
        gram = g1.T @ g1 + a @ a.T
        w, v = np.linalg.eigh(gram)
        m = g1 @ (v / np.sqrt(w)) @ v.T
        cos = np.clip(np.linalg.svd(m, compute_uv=False), 0.0, 1.0)  # descending → angles ascending
        total += np.degrees(np.arccos(cos))
    return (total / draws).tolist()


def angles_deg(a, b) -> list[float]:
    """Principal angles (ascending, degrees) between span(a) and span(b) (SPEC §4, sine-based);
    either may be a :class:`~deltalens.curvature.store.ColumnFile` (then read in row blocks)."""
    if isinstance(a, ColumnFile) or isinstance(b, ColumnFile):
        return streamed_angles_deg(a, b)
    return torch.rad2deg(principal_angles(a.double(), b.double())).tolist()


def residual_term(vectors: torch.Tensor, h_image: torch.Tensor, g_image: torch.Tensor) -> dict:
    """Size of the residual term R = H − G along unit directions v_i (columns): ‖R v_i‖/‖H v_i‖
    and the Rayleigh quotients v_iᵀ H v_i, v_iᵀ G v_i, v_iᵀ R v_i (SPEC §9)."""
    diff = h_image - g_image
    norm_h = torch.linalg.vector_norm(h_image, dim=0)
    return {
        "relative": (torch.linalg.vector_norm(diff, dim=0) / norm_h.clamp_min(1e-300)).tolist(),
        "rayleigh_hessian": (vectors * h_image).sum(0).tolist(),
        "rayleigh_gauss_newton": (vectors * g_image).sum(0).tolist(),
        "rayleigh_residual": (vectors * diff).sum(0).tolist(),
    }


def matrix_blocks(vectors: torch.Tensor, shapes: Sequence[tuple[str, torch.Size]]) -> dict[str, torch.Tensor]:
    """The 2-D parameter blocks of each direction: {name: r × m × n}, from flat P × r vectors laid
    out in ``shapes`` order (tensors flattened row-major)."""
    out, start = {}, 0
    for name, shape in shapes:
        size = math.prod(shape)
        if len(shape) == 2:
            out[name] = vectors[start:start + size].T.reshape(-1, *shape)
        start += size
    return out


def weight_frames(weights: dict[str, torch.Tensor], k: int | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(U_k, V_k) of every 2-D weight, k = SPEC §4's default max(1, ⌈0.01·min(m, n)⌉) unless given."""
    frames = {}
    for name, w in weights.items():
        m, n = w.shape
        kk = min(k, m, n) if k else default_k(m, n)
        u, _, v = top_k_svd(w.detach().double().cpu(), kk, method="gram")
        frames[name] = (u, v)
    return frames


def pp_shares(vectors: torch.Tensor, shapes: Sequence[tuple[str, torch.Size]],
              frames: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Per 2-D matrix W and per direction v_i: the §5 PP share of v_i's W-block X,
    ‖U_kᵀ X V_k‖²/‖X‖², with its random baseline k²/mn; and pooled over the matrices,
    Σ_W ‖U_kᵀX V_k‖²/Σ_W ‖X‖² against Σ_W ‖X‖² k²/mn / Σ_W ‖X‖² (energy-weighted)."""
    blocks = matrix_blocks(vectors.double(), shapes)
    per_matrix, pp_total, energy_total, base_total = {}, 0.0, 0.0, 0.0
    for name, x in blocks.items():
        u, v = frames[name]
        m, n = x.shape[1:]
        k = u.shape[1]
        pp = (u.T @ x @ v).square().sum((1, 2))
        left = (u.T @ x).square().sum((1, 2))
        right = (x @ v).square().sum((1, 2))
        total = x.square().sum((1, 2))
        shares = [block_shares(float(a), float(b), float(c), float(t), k, m, n)["PP"]["share"]
                  for a, b, c, t in zip(pp, left, right, total)]
        per_matrix[name] = {"k": k, "baseline": k * k / (m * n), "pp_share": shares, "energy": total.tolist()}
        pp_total = pp_total + pp
        energy_total = energy_total + total
        base_total = base_total + total * (k * k / (m * n))
    if not per_matrix:
        return {"matrices": {}, "pooled": None, "pooled_baseline": None}
    return {
        "matrices": per_matrix,
        "pooled": (pp_total / energy_total.clamp_min(1e-300)).tolist(),
        "pooled_baseline": (base_total / energy_total.clamp_min(1e-300)).tolist(),
    }


def pp_shares_of(directions, shapes: Sequence[tuple[str, torch.Size]],
                 frames: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """:func:`pp_shares` of a P × r tensor, or of a :class:`ColumnFile` one column at a time (the
    numbers of each direction do not depend on the others, so the lists are concatenated)."""
    if not isinstance(directions, ColumnFile):
        return pp_shares(directions, shapes, frames)
    parts = column_map(directions, lambda v: pp_shares(v[:, None], shapes, frames))
    if parts[0]["pooled"] is None:
        return parts[0]
    matrices = {name: {"k": row["k"], "baseline": row["baseline"],
                       "pp_share": [x for part in parts for x in part["matrices"][name]["pp_share"]],
                       "energy": [x for part in parts for x in part["matrices"][name]["energy"]]}
                for name, row in parts[0]["matrices"].items()}
    return {"matrices": matrices, "pooled": [x for part in parts for x in part["pooled"]],
            "pooled_baseline": [x for part in parts for x in part["pooled_baseline"]]}


def curvature_rescale_share(vectors0: torch.Tensor, image0: torch.Tensor, image1: torch.Tensor) -> dict:
    """Propensity share of a curvature change along the base's top directions (SPEC §9 with §5/§6):
    with E = V0ᵀ (A1 − A0) (r × P), Σ_i E_ii² / ‖E‖_F² = Σ_i (v_iᵀ ΔA v_i)² / Σ_i ‖ΔA v_i‖².
    E_ii re-weights the fixed eigenvector v_i, the rest of ΔA v_i rotates it. Random baseline for
    a symmetric ΔA of size P: 2/(P+1)."""
    change = image1 - image0
    diag = (vectors0 * change).sum(0)
    total = float(change.square().sum())
    dim = vectors0.shape[0]
    share = None if total == 0.0 else float(diag.square().sum()) / total
    return {"rescale_share": share, "baseline": 2.0 / (dim + 1)}


def eigenvalue_drift(values0: torch.Tensor, values1: torch.Tensor) -> dict:
    """log(|λ_i(tuned)|/|λ_i(base)|) (None where either is 0) and where the sign flipped."""
    logs = [math.log(abs(b) / abs(a)) if a != 0 and b != 0 else None
            for a, b in zip(values0.tolist(), values1.tolist())]
    flips = [bool(a * b < 0) for a, b in zip(values0.tolist(), values1.tolist())]
    return {"log_ratio": logs, "sign_flip": flips}


def update_share(vectors, delta: torch.Tensor) -> dict:
    """Share of the parameter update Δθ on the top-r directions, ‖Vᵀ Δθ‖²/‖Δθ‖², against r/P
    (``vectors``: a P × r tensor or :class:`ColumnFile`)."""
    norm = float(delta.square().sum())
    delta = delta.double()
    share = None if norm == 0.0 else sum(column_map(vectors, lambda v: float(v @ delta) ** 2)) / norm
    return {"share": share, "baseline": vectors.shape[1] / vectors.shape[0]}


def rotation_bound_deg(vectors0: torch.Tensor, values0: torch.Tensor, image1: torch.Tensor,
                       next_value1: float | None) -> float:
    """Davis–Kahan bound on how far the tuned operator's true top-r eigenspace can lie from the
    base's computed one (SPEC §9 with §4's gap rule): with R = A1 V0 − V0 Λ0 (the base's
    directions and eigenvalues under the tuned operator: the curvature change plus the base's own
    Ritz residual) and the separation δ = |λ_r(A0)| − |λ_{r+1}(A1)|,
    sin θ_max ≤ ‖R‖_F / δ; 90° without a positive δ. A measured base → tuned rotation near this
    bound is what the change and the gap allow; one far above it (beyond the tuned run's own error
    bound) would be a numerical failure."""
    if next_value1 is None:
        return 90.0
    gap = abs(float(values0[-1])) - abs(float(next_value1))
    if gap <= 0:
        return 90.0
    residual = float(torch.linalg.vector_norm(image1 - vectors0 * values0))
    return math.degrees(math.asin(min(1.0, residual / gap)))
