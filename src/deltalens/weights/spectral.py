"""Spectral diff of one weight matrix: does the update rotate the principal subspaces, how far
does the spectrum drift (SPEC §4), and how much of it re-weights the base's own singular
directions rather than mixing them (SPEC §5)?

Entry point: :func:`spectral_metrics` (tensors in, a JSON-ready dict out; no I/O). Three routes
(``method["route"]`` says which ran):

- fast, full frame (default when min(m, n) ≤ ``FULL_FRAME_MAX`` = 512): one float64 pass over row
  chunks builds G0 = W0ᵀW0, C = W0ᵀΔ and E = ΔᵀΔ on the smaller side n (W1ᵀW1 = G0 + C + Cᵀ + E);
  eigh of G0 gives the full frame of W0 (σ, V; U = W0 V / σ), eigh of W1ᵀW1 the full spectrum and
  top-k vectors of W1, Lanczos on E gives ‖Δ‖₂. Nothing randomized; NSS over the full spectrum.
- fast, randomized top-q (default above 512): subspace iteration with Rayleigh–Ritz on
  q + OVERSAMPLE columns (:func:`_frame_topq`); NSS and rescale_share cover the top q
  (``nss_scope``/``rescale_scope``), angles come with an error estimate. No SVD-equivalent cost.
- exact (``exact=True``): ``torch.linalg.svd`` of W0, W1 and Δ in float64 (the reference).

Every formula lives in one small function below, with its SPEC section.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from deltalens.errors import DeltalensError
from deltalens.weights.selection import abs_into, count_selected
from deltalens.weights.sparsity import bitwise_changed
from deltalens.linalg import (
    RitzTriplets,
    chunk_rows,
    chunked_matmul,
    chunked_normal_matmul,
    chunked_pair_normal_matmul,
    chunked_rmatmul,
    lapack_one_thread,
    eigh_descending,
    orthonormal_extension,
    rayleigh_ritz_pair,
    gram_products,
    largest_eigenvalue,
    principal_angles,
    ritz_subspace_iteration,
    row_chunks,
    singular_values_from_gram,
    spectral_gap,
    wedin_bound,
)

DEFAULT_OVERLAP_K = 64
DEFAULT_OVERLAP_ALPHA = 0.05
GROUPS = ("spectral", "frame")
FULL_FRAME_MAX = 1024  # fast mode: the full Gram frame when min(m, n) ≤ this, randomized top-q above
OVERSAMPLE = 16  # extra columns of the randomized subspace beyond q
MAX_ITER = 4  # float32 subspace iterations on W0 for the top-q route's starting subspace, fewer when converged
W1_ITER = 2  # ... and on W1, warm-started from W0's (the common subspace and its growth do the rest)
TOL_DEG = 0.01  # stop iterating once the estimated top-k subspace error is below this angle
MIN_PROGRESS = 0.1  # ... or once two iterations in a row improve on its best by < 10 % (0: never)
PAIR_DTYPE = torch.float32  # top-q: the products of the common-subspace pass (its small problems are float64)
CHANGE_SAFETY = 2.0  # top-q: a growth step's largest angle change, times this, estimates the remaining error
GROW_ROUNDS = 4  # top-q: at most this many growth steps of the common subspace (block Davidson)
GRAM_ESCALATE_MAX = 2048  # top-q: an unresolved, not gap-limited angle re-runs the full Gram frame when n ≤ this
DELTA_WIDTH, DELTA_ITER = 8, 2  # block power iteration on Δ for ‖Δ‖₂


# ----------------------------------------------------------------------------- choosing k


def default_k(m: int, n: int) -> int:
    """Default k = max(1, ⌈0.01·min(m, n)⌉).  SPEC §4 (ours)."""
    return max(1, math.ceil(0.01 * min(m, n)))


def resolve_k(spec: int | float, m: int, n: int) -> int:
    """Turn a k request into an integer for an m×n matrix.  SPEC §4.

    An integer ≥ 1 is used as is, capped at min(m, n); a float in (0, 1] is a fraction of
    min(m, n), rounded up (at least 1); an integral float above 1 (``4.0``) counts as an integer.
    """
    r = min(m, n)
    if isinstance(spec, bool) or not isinstance(spec, numbers.Real):
        raise DeltalensError(f"top-k must be an integer >= 1 or a fraction in (0, 1], got {spec!r}")
    if isinstance(spec, numbers.Integral) or (float(spec) > 1 and float(spec).is_integer()):
        k = int(spec)
        if k < 1:
            raise DeltalensError(f"top-k must be an integer >= 1 or a fraction in (0, 1], got {spec!r}")
        return min(k, r)
    f = float(spec)
    if not 0.0 < f <= 1.0:
        raise DeltalensError(f"top-k must be an integer >= 1 or a fraction in (0, 1], got {spec!r}")
    return min(r, max(1, math.ceil(f * r)))


# ----------------------------------------------------------------------------- formulas


def angle_summary_deg(angles_rad: torch.Tensor) -> dict:
    """Principal angles in degrees (ascending), their max and mean.  SPEC §4."""
    deg = torch.rad2deg(angles_rad.to(torch.float64)).cpu()
    return {"all": deg.tolist(), "max": float(deg.max()), "mean": float(deg.mean())}


def normalized_spectrum_shift(s0: torch.Tensor, s1: torch.Tensor) -> float:
    """NSS = ‖σ(W1) − σ(W0)‖₂ / ‖σ(W0)‖₂ over the singular values given.  SPEC §4."""
    s0 = s0.to(torch.float64)
    s1 = s1.to(torch.float64)
    denom = float(torch.linalg.vector_norm(s0))
    if denom == 0.0:
        return float("inf") if bool(torch.any(s1 != 0)) else 0.0
    return float(torch.linalg.vector_norm(s1 - s0)) / denom


def rescale_share(diag_d: torch.Tensor, delta_fro2: float) -> float | None:
    """rescale_share = ‖diag(UᵀΔV)‖² / ‖Δ‖_F² (W0 = U S Vᵀ full SVD); None when Δ = 0.  SPEC §5."""
    if delta_fro2 <= 0.0:
        return None
    return min(1.0, float(diag_d.to(torch.float64).square().sum()) / float(delta_fro2))


def rescale_baseline(m: int, n: int, q: int | None = None) -> float:
    """Random baseline of rescale_share: min(m, n)/(m·n); q/(m·n) when the share is summed over the
    first q diagonal entries only (fast mode's top-q scope; E[(UᵀΔV)_ii²] = ‖Δ‖²_F/(mn)).  SPEC §5."""
    return (min(m, n) if q is None else q) / (m * n)


def rescale_share_upper(diag_d: torch.Tensor, qq_energy: float, delta_fro2: float) -> float | None:
    """Upper bound on the full-frame rescale_share from its first q terms: (Σ_{i≤q} D_ii² + ‖QQ‖²)/‖Δ‖²_F.

    The remaining diagonal entries D_ii, i > q, lie in the QQ block (Q = beyond the top q on both
    sides), whose squared entries sum to ‖QQ‖² ≥ Σ_{i>q} D_ii².  SPEC §5 (ours).
    """
    if delta_fro2 <= 0.0:
        return None
    return min(1.0, (float(diag_d.to(torch.float64).square().sum()) + max(0.0, qq_energy)) / float(delta_fro2))


def block_shares(pp: float, p_left: float, p_right: float, total: float, k: int, m: int, n: int) -> dict:
    """Shares of ‖Δ‖_F² in the top-k frame of W0, with random baselines.  SPEC §5.

    P = span of the top-k singular vectors, Q = the rest, on each side (left first):
    PP = ‖U_kᵀΔV_k‖², PQ = ‖U_kᵀΔ‖² − PP, QP = ‖ΔV_k‖² − PP, QQ = ‖Δ‖_F² − PP − PQ − QP, each
    divided by ‖Δ‖_F²; baselines k²/mn, k(n−k)/mn, (m−k)k/mn, (m−k)(n−k)/mn. ``p_left`` =
    ‖U_kᵀΔ‖², ``p_right`` = ‖ΔV_k‖². Shares are None when Δ = 0.
    """
    mn = m * n
    base = {"PP": k * k / mn, "PQ": k * (n - k) / mn, "QP": (m - k) * k / mn, "QQ": (m - k) * (n - k) / mn}
    if total <= 0.0:
        return {key: {"share": None, "baseline": b} for key, b in base.items()}
    energy = {"PP": pp, "PQ": p_left - pp, "QP": p_right - pp, "QQ": total - p_left - p_right + pp}
    return {key: {"share": max(0.0, energy[key] / total), "baseline": base[key]} for key in base}


def mask_overlap(hits: int, mask_size: int) -> float | None:
    """overlap(M•) = |M• ∩ M| / |M| (random baseline α); None for an empty update mask.  SPEC §5."""
    return None if mask_size == 0 else hits / mask_size


# ----------------------------------------------------------------------------- the frame


@dataclass
class _Frame:
    """Everything §4–§5 needs, for a tall matrix (m ≥ n); u is the m side, v the n side."""

    s0: torch.Tensor  # all n singular values of W0, float64, descending
    s1: torch.Tensor  # all n singular values of W1
    u0: torch.Tensor  # m×K top left singular vectors of W0
    v0: torch.Tensor  # n×K' top right singular vectors of W0 (K' ≥ K covers the overlap rank)
    u1: torch.Tensor  # m×K of W1
    v1: torch.Tensor  # n×K of W1
    delta_fro2: float
    delta_spectral: float
    diag_d: torch.Tensor | None  # diag(UᵀΔV), n entries
    row_energy: torch.Tensor | None  # ‖u_iᵀΔ‖², i ≤ K
    col_energy: torch.Tensor | None  # ‖Δ v_j‖², j ≤ K
    cross: torch.Tensor | None  # U_KᵀΔV_K
    method: dict
    scope: int | None = None  # None: s0, s1, diag_d cover the full spectrum; else only the top `scope`
    ritz: tuple | None = None  # (RitzTriplets of W0, of W1) in the top-q route
    nss_pair: tuple | None = None  # top-q route: (σ(W0), σ(W1)) top q, from one common subspace
    angle_errors: dict | None = None  # top-q route: {k: estimated error of the top-k angles, degrees}


def _frame_exact(a0: torch.Tensor, a1: torch.Tensor, k_max: int, k_v0: int, frame: bool, dev) -> _Frame:
    """Full float64 SVDs of W0, W1 and Δ (reference mode)."""
    x0 = a0.to(device=dev, dtype=torch.float64)
    x1 = a1.to(device=dev, dtype=torch.float64)
    d = x1 - x0
    u0, s0, v0h = torch.linalg.svd(x0, full_matrices=False)
    u1, s1, v1h = torch.linalg.svd(x1, full_matrices=False)
    v0, v1 = v0h.T, v1h.T
    delta_spec = float(torch.linalg.svdvals(d)[0]) if d.numel() else 0.0
    out = dict(diag_d=None, row_energy=None, col_energy=None, cross=None)
    if frame:
        dv = d @ v0
        out["diag_d"] = (u0 * dv).sum(0)
        ud = u0[:, :k_max].T @ d
        out["row_energy"] = ud.square().sum(1)
        out["col_energy"] = dv[:, :k_max].square().sum(0)
        out["cross"] = ud @ v0[:, :k_max]
    method = {
        "mode": "exact",
        "frame": "torch.linalg.svd float64 of W0 (full frame)",
        "angles": "torch.linalg.svd float64 of W0 and W1; sine-based principal angles (Knyazev & Argentati 2002)",
        "nss": "full spectrum, torch.linalg.svd float64",
        "delta_spectral": "torch.linalg.svdvals float64 of Δ",
    }
    return _Frame(
        s0=s0.cpu(), s1=s1.cpu(), u0=u0[:, :k_max], v0=v0[:, :k_v0], u1=u1[:, :k_max], v1=v1[:, :k_max],
        delta_fro2=float(d.square().sum()), delta_spectral=delta_spec, method=method, **out,
    )


def _frame_fast(a0: torch.Tensor, a1: torch.Tensor, k_max: int, k_v0: int, frame: bool, dev) -> _Frame:
    """Gram + eigh on the smaller side in float64 (default mode)."""
    m, n = a0.shape
    g0, c, e = gram_products(a0, a1, device=dev)
    lam0, vec0 = eigh_descending(g0)
    lam1, vec1 = eigh_descending(g0 + c + c.T + e)
    s0 = singular_values_from_gram(lam0)
    s1 = singular_values_from_gram(lam1)
    tiny = torch.finfo(torch.float64).tiny
    delta_fro2 = float(torch.diagonal(e).sum())
    out = dict(diag_d=None, row_energy=None, col_energy=None, cross=None)
    n_null = 0
    if frame:
        # D_ii = u_iᵀΔv_i = v_iᵀ W0ᵀΔ v_i / σ_i; undefined (set 0) where σ_i is numerically zero.
        floor = float(s0[0]) * max(m, n) * torch.finfo(torch.float64).eps if n else 0.0
        keep = s0 > floor
        n_null = int((~keep).sum())
        diag = (vec0 * (c @ vec0)).sum(0) / s0.clamp_min(tiny)
        out["diag_d"] = torch.where(keep, diag, torch.zeros_like(diag))
        vk = vec0[:, :k_max]
        ud = (vk.T @ c) / s0[:k_max, None].clamp_min(tiny)  # rows u_iᵀΔ
        out["row_energy"] = ud.square().sum(1)
        out["col_energy"] = (vk * (e @ vk)).sum(0)
        out["cross"] = ud @ vk
    u0 = chunked_matmul(a0, vec0[:, :k_max], device=dev) / s0[:k_max].clamp_min(tiny)
    u1 = chunked_matmul(a1, vec1[:, :k_max], device=dev) / s1[:k_max].clamp_min(tiny)
    eig = f"torch.linalg.eigh on {g0.device.type}"
    method = {
        "mode": "fast",
        "frame": f"Gram + eigh float64 on the smaller side (n={n}, {eig}); U = W0 V / σ"
        + (f"; {n_null} numerically zero σ left out of diag(UᵀΔV)" if n_null else ""),
        "angles": "top-k vectors from eigh of W0ᵀW0 and W1ᵀW1 float64; sine-based principal angles (Knyazev & Argentati 2002)",
        "nss": "full spectrum, from eigh of W1ᵀW1 = G0 + C + Cᵀ + E float64",
        "delta_spectral": "Lanczos (ARPACK) on ΔᵀΔ float64" if g0.device.type == "cpu" else "eigvalsh of ΔᵀΔ float64",
    }
    return _Frame(
        s0=s0.cpu(), s1=s1.cpu(), u0=u0, v0=vec0[:, :k_v0], u1=u1, v1=vec1[:, :k_max],
        delta_fro2=delta_fro2, delta_spectral=math.sqrt(largest_eigenvalue(e)), method=method, **out,
    )


def _operator(w: torch.Tensor, minus: torch.Tensor | None, dev, transpose: bool = False) -> dict:
    """:func:`ritz_subspace_iteration`'s operator arguments for A = w (or w − minus), or its
    transpose, by row chunks (no copy of w): ``matmul`` (A X), ``rmatmul`` (Aᵀ Y) and, for A = w
    or w − minus, ``normal`` ((A X, AᵀA X) in one pass, each chunk cast once)."""
    mul = lambda x: chunked_matmul(w, x, device=dev, minus=minus)  # noqa: E731
    rmul = lambda y: chunked_rmatmul(w, y, device=dev, minus=minus)  # noqa: E731
    if transpose:  # (Aᵀ)ᵀAᵀ = A Aᵀ needs all of Aᵀ Y before A(·): no one-pass form over row chunks
        return dict(matmul=rmul, rmatmul=mul)
    return dict(matmul=mul, rmatmul=rmul, normal=lambda x: chunked_normal_matmul(w, x, device=dev, minus=minus))


def delta_top_singular_values(
    w0: torch.Tensor, w1: torch.Tensor, *, device: str | torch.device = "cpu", delta: torch.Tensor | None = None
) -> RitzTriplets:
    """Top Ritz triplets of Δ = W1 − W0 by block power iteration (``DELTA_WIDTH`` columns, at most
    ``DELTA_ITER`` iterations, seeded start). Δ is formed chunk by chunk, never copied whole,
    unless the caller passes it as ``delta`` (then each pass is one product).

    ``s[0]`` is a Ritz value, hence a lower bound on ‖Δ‖₂ = σ1(Δ) (SPEC §3, §4); ``residual[0]``
    says how far the pair is from a singular pair. Wide inputs are handled as Δᵀ (same σ).
    """
    dev = torch.device(device)
    m, n = w0.shape
    transpose = m < n
    side = min(m, n)
    width = min(DELTA_WIDTH, side)
    start = torch.randn(side, width, generator=torch.Generator().manual_seed(1)).to(dev)
    op = _operator(w1, w0, dev, transpose) if delta is None else _operator(delta, None, dev, transpose)
    return ritz_subspace_iteration(start=start, max_iter=DELTA_ITER, k=1, tol=1e-3, final_dtype=torch.float32, **op)


def _delta_transpose_products(a0, a1, u: torch.Tensor, dev, delta: torch.Tensor | None = None) -> torch.Tensor:
    """ΔᵀU (n×q, float64) in one float32 pass over row chunks of Δ (read from ``delta`` when the
    caller has it, else formed chunk by chunk as a1 − a0)."""
    uf = u.to(device=dev, dtype=torch.float32)
    dtu = torch.zeros(a0.shape[1], u.shape[1], dtype=torch.float32, device=dev)
    w, minus = (a1, a0) if delta is None else (delta, None)
    for start, d in row_chunks(w, minus, dev, torch.float32):
        dtu.addmm_(d.T, uf[start : start + d.shape[0]])
    return dtu.double()


def _common_ritz(a0, a1, basis: torch.Tensor, ks: Sequence[int], dev, *, rounds: int, delta_spectral: float,
                 width: int, delta: torch.Tensor | None = None) -> tuple:
    """Ritz triplets of W0 and of W1 from one common subspace, grown until every top-k rotation
    in ``ks`` is resolved to ``TOL_DEG`` or ``rounds`` growth steps are spent.  SPEC §4.

    Both matrices are projected on the same orthonormal float64 basis X (W1X = W0X + ΔX from one
    pass, :func:`deltalens.linalg.chunked_pair_normal_matmul`), so identical inputs give identical
    triplets (angles exactly 0) and the rounding of W0X is shared by both sides of every
    difference. Each step adds the residual directions WᵀWv_i/σ_i − σ_i v_i of the top
    k_max + 1 Ritz pairs of both matrices (a block Davidson/Krylov step: it captures the
    rotation's components outside X, which plain subspace iteration leaves out), one more pass
    over the new columns only. The error estimate of the top-k angles is the smaller of the
    Davis–Kahan/Wedin bound from both Ritz residuals (:func:`ritz_angle_error_deg`) and
    ``CHANGE_SAFETY`` × the largest change of any top-k angle (left or right) in the last step;
    growth stops once every estimate is ≤ ``TOL_DEG`` (gap-limited k aside: Wedin bound
    ``delta_spectral``/gap_k > 1 with W0's Ritz gap), after ``rounds`` steps, or when X spans
    everything. Returns (triplets of W0, of W1, {k: estimated angle error, degrees},
    steps taken, the basis X, ΔX, ‖Δ‖²_F)."""
    k_need = min(max(ks) + 1, basis.shape[0])
    pair = lambda x: chunked_pair_normal_matmul(a0, a1, x.to(PAIR_DTYPE), device=dev, delta=delta)  # noqa: E731
    wx0, dx, gx0, gx1, fro2 = pair(basis)
    step = 0
    previous = None
    while True:
        t0, t1 = rayleigh_ritz_pair(basis, wx0, dx, gx0, gx1, width=width)
        angles = {k: _pair_angles_deg(t0, t1, k) for k in ks}
        errors = {k: ritz_angle_error_deg(t0, t1, k) for k in ks}
        if previous is not None:  # the change since the last step estimates what further steps would change
            errors = {k: min(errors[k], CHANGE_SAFETY * float((angles[k] - previous[k]).abs().max())) for k in ks}
        previous = angles
        # a gap-limited k (Wedin bound > 1 with W0's Ritz gap) has no well-posed answer to resolve
        open_ks = [k for k in ks if errors[k] > TOL_DEG and wedin_bound(delta_spectral, spectral_gap(t0.s, k)) <= 1.0]
        if not open_ks or step >= rounds or basis.shape[1] >= basis.shape[0]:
            return t0, t1, errors, step, basis, dx, fro2
        resid = []
        for t, gx in ((t0, gx0), (t1, gx1)):
            sig = t.s[:k_need].to(basis)
            y_v = t.v[:, :k_need]
            resid.append(((gx.to(basis) @ (basis.T @ y_v)) / sig.clamp_min(torch.finfo(sig.dtype).tiny)) - y_v * sig)
        new = orthonormal_extension(basis, torch.cat(resid, 1))
        if new.shape[1] == 0:
            return t0, t1, errors, step, basis, dx, fro2
        w, d, g0, g1, _ = pair(new)
        basis, wx0, dx = torch.cat([basis, new], 1), torch.cat([wx0, w], 1), torch.cat([dx, d], 1)
        gx0, gx1 = torch.cat([gx0, g0], 1), torch.cat([gx1, g1], 1)
        step += 1


def _pair_angles_deg(t0: RitzTriplets, t1: RitzTriplets, k: int) -> torch.Tensor:
    """Top-k principal angles (degrees) of the left and of the right Ritz subspaces, concatenated."""
    with lapack_one_thread(t0.v):
        return torch.rad2deg(torch.cat([principal_angles(t0.u[:, :k], t1.u[:, :k], orthonormal=True),
                                        principal_angles(t0.v[:, :k], t1.v[:, :k], orthonormal=True)])).cpu()


def _frame_topq(a0, a1, ks: Sequence[int], q: int, frame: bool, dev, *, max_iter: int,
                delta_spectral: float | None, delta: torch.Tensor | None = None) -> _Frame:
    """Randomized top-q frame (default fast mode for min(m, n) > FULL_FRAME_MAX).

    A starting subspace from p = q + OVERSAMPLE columns for each matrix: subspace iteration with
    Rayleigh–Ritz (:func:`deltalens.linalg.ritz_subspace_iteration`, float32 passes), W0 from a
    seeded Gaussian start, W1 warm-started from W0's result. Then W0 and W1 are both Rayleigh–Ritz-projected on one common float64 subspace that
    grows by their residual directions until each top-k rotation's error estimate is below
    ``TOL_DEG`` (:func:`_common_ritz`); ``by_k[k]["unresolved"]`` says where it is not. The same
    subspace gives the top-q Ritz values of both (NSS, ``nss_scope``) and W0's frame; ΔV comes
    from the common pass, ΔᵀU_q from one float32 pass over Δ; a block power iteration gives
    ‖Δ‖₂ (unless given). Only the top q of UᵀΔV's diagonal exist here, so rescale_share is a
    top-q quantity.
    """
    m, n = a0.shape
    k_max = max(ks)
    p = min(n, q + OVERSAMPLE)
    tol = math.sin(math.radians(TOL_DEG))
    start = torch.randn(n, p, generator=torch.Generator().manual_seed(0)).to(dev)
    stop = dict(max_iter=max_iter, k=k_max, tol=tol, min_progress=MIN_PROGRESS, final_dtype=torch.float32)
    r0 = ritz_subspace_iteration(start=start, **_operator(a0, None, dev), **stop)
    r1 = ritz_subspace_iteration(start=r0.v.to(torch.float32), **_operator(a1, None, dev), **(stop | {"max_iter": min(max_iter, W1_ITER)}))
    with lapack_one_thread(r0.v):  # both matrices' subspaces: W1's top-q may have moved far from W0's
        basis = _orthonormal_columns(torch.cat([r0.v, r1.v], 1).to(device=dev, dtype=torch.float64))
    if delta_spectral is None:
        rd = delta_top_singular_values(a0, a1, device=dev, delta=delta)
        delta_spectral = float(rd.s[0])
        spec_how = (f"block power iteration on Δ ({rd.s.numel()} columns, {rd.iterations} iterations; Ritz value, a lower "
                    f"bound on ‖Δ‖₂, residual {float(rd.residual[0]):.2g})")
    else:
        spec_how = "given by the caller (the rank group's power iteration on Δ)"
    t0, t1, errors, steps, basis, dx, delta_fro2 = _common_ritz(a0, a1, basis, ks, dev, rounds=GROW_ROUNDS,
                                                                delta_spectral=delta_spectral, width=q, delta=delta)
    width = basis.shape[1]
    u0, v0 = t0.u[:, :q], t0.v[:, :q]
    out = dict(diag_d=None, row_energy=None, col_energy=None, cross=None)
    dv = chunked_matmul(dx, basis.T @ v0, device=dev)  # ΔV_q = (ΔX)(Xᵀ V_q) in float64: V_q lies in span(X)
    if frame:
        dtu = _delta_transpose_products(a0, a1, u0, dev, delta)
        cross = u0.T @ dv
        out.update(diag_d=torch.diagonal(cross).cpu(), row_energy=dtu.square().sum(0).cpu(),
                   col_energy=dv.square().sum(0).cpu(), cross=cross.cpu())
    method = {
        "mode": "fast",
        "route": f"top-{q}",
        "frame": f"starting subspace: randomized subspace iteration with Rayleigh–Ritz (Halko et al. 2011) on p={p} "
                 f"columns of the smaller side (n={n}) per matrix, float32: W0 from a seeded Gaussian start "
                 f"({r0.iterations} iterations), W1 warm-started from W0's ({r1.iterations}); then W0 and W1 Rayleigh–Ritz-projected in float64 on one common subspace, grown "
                 f"{steps} time(s) by both matrices' top-{k_max + 1} residual directions (block Davidson) to "
                 f"{width} columns, until each top-k angle's error estimate < {TOL_DEG}° (at most {GROW_ROUNDS} steps)",
        "angles": "top-k Ritz vectors of W0 and W1 from the common subspace; sine-based principal angles (Knyazev & "
                  "Argentati 2002); angle_error_deg bounds the error from both Ritz residuals (Davis–Kahan with "
                  f"Ritz gaps); unresolved when it exceeds {TOL_DEG}°",
        "gap": "Ritz values σ_k − σ_{k+1} of W0",
        "nss": f"top-{q} Ritz values of W0 and W1 (nss_scope) from the common subspace",
        "delta_spectral": spec_how,
    }
    if frame:
        method["rescale"] = (f"first {q} diagonal entries of UᵀΔV (rescale_scope) against baseline q/(mn); "
                             f"rescale_share_upper adds the QQ-block energy at k={q}: a bound on the full-frame value")
    return _Frame(
        s0=t0.s, s1=t1.s, u0=u0, v0=v0, u1=t1.u[:, :q], v1=t1.v[:, :q], delta_fro2=delta_fro2,
        delta_spectral=delta_spectral, method=method, scope=q, ritz=(t0, t1),
        nss_pair=(t0.s[:q], t1.s[:q]), angle_errors=errors, **out,
    )


def _orthonormal_columns(x: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of span(x) in x's dtype (an empty basis extended by x's columns)."""
    return orthonormal_extension(x[:, :0], x)


# ----------------------------------------------------------------------------- overlap (§5)


def _overlaps(a0: torch.Tensor, mask: torch.Tensor, left: torch.Tensor, v_k: torch.Tensor, alpha: float, dev) -> tuple:
    """(principal hits, low hits, |M|) for M_princ = top-α of |left v_kᵀ| (the rank-k
    reconstruction of W0 = ``a0``, as two factors in a0's orientation), M_low = bottom-α of |W0|,
    each by :func:`deltalens.weights.selection.count_selected` (one pass over row chunks; memory one chunk plus the
    candidates)."""
    m, n = a0.shape
    count = math.ceil(alpha * m * n)
    vk_t = v_k.to(device=dev, dtype=torch.float32).T
    lk = left.to(device=dev, dtype=torch.float32)
    mask = mask.to(dev)
    mask_size = int(torch.count_nonzero(mask))  # bool .sum() would make an int64 copy of the mask
    hits_p = count_selected(lambda i, out: abs_into(torch.mm(lk[i], vk_t, out=out), out), mask, count, largest=True)
    hits_l = count_selected(lambda i, out: abs_into(a0[i], out), mask, count, largest=False)
    return hits_p, hits_l, mask_size


# ----------------------------------------------------------------------------- entry point


def _check_inputs(w0: torch.Tensor, w1: torch.Tensor, changed: torch.Tensor | None, groups: Sequence[str]) -> None:
    if not isinstance(w0, torch.Tensor) or not isinstance(w1, torch.Tensor):
        raise DeltalensError("spectral metrics need two torch tensors (base, tuned)")
    if w0.ndim != 2 or w1.ndim != 2:
        raise DeltalensError(f"spectral metrics need 2-D tensors, got shapes {tuple(w0.shape)} and {tuple(w1.shape)}")
    if w0.shape != w1.shape:
        raise DeltalensError(f"base and tuned shapes differ: {tuple(w0.shape)} vs {tuple(w1.shape)}")
    if not (w0.is_floating_point() and w1.is_floating_point()):
        raise DeltalensError(f"spectral metrics need floating-point tensors, got {w0.dtype} and {w1.dtype}")
    if 0 in w0.shape:
        raise DeltalensError(f"spectral metrics need a non-empty matrix, got shape {tuple(w0.shape)}")
    step = chunk_rows(w0.shape[1])  # chunked: isfinite of a whole embedding costs GBs of temporaries
    for w in (w0, w1):
        for start in range(0, w.shape[0], step):
            chunk = w[start : start + step]
            # a chunk's sum is finite unless it holds NaN/Inf (or overflows: then check elementwise)
            if not math.isfinite(float(chunk.sum())) and not bool(torch.isfinite(chunk).all()):
                raise DeltalensError("spectral metrics need finite values; the tensor pair contains NaN or Inf")
    if changed is not None and (changed.shape != w0.shape or changed.dtype != torch.bool):
        raise DeltalensError(f"changed mask must be a bool tensor of shape {tuple(w0.shape)}, got {changed.dtype} {tuple(changed.shape)}")
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise DeltalensError(f"unknown spectral metric group(s) {sorted(unknown)}; expected some of {list(GROUPS)}")


def spectral_metrics(
    w0: torch.Tensor,
    w1: torch.Tensor,
    *,
    top_k: Iterable[int | float] = (),
    exact: bool = False,
    device: str = "cpu",
    changed: torch.Tensor | None = None,
    groups: Sequence[str] = GROUPS,
    overlap_k: int = DEFAULT_OVERLAP_K,
    overlap_alpha: float = DEFAULT_OVERLAP_ALPHA,
    full_max: int | None = None,
    max_iter: int | None = None,
    delta_spectral: float | None = None,
    delta: torch.Tensor | None = None,
) -> dict:
    """SPEC §4 (group ``spectral``) and §5 (group ``frame``) for one m×n weight pair.

    ``w0``/``w1``: base and tuned tensors (float; any float dtype, cast chunk by chunk). ``top_k``:
    integers or fractions of min(m, n) (default :func:`default_k`). ``changed``: the bitwise update
    mask in the stored dtype (for the principal/low overlaps); when None, the bitwise mask of the
    given tensors is used and ``method`` says so.

    Routes: ``exact=True``: float64 SVDs (full spectra, full frame). Fast mode with
    min(m, n) ≤ ``full_max`` (default ``FULL_FRAME_MAX``, read at call time): float64 Gram + eigh (full spectra, full frame). Fast mode above it:
    randomized top-q (q = max(k, overlap_k)) with at most ``max_iter`` power iterations; then
    ``nss`` and ``rescale_share`` cover the top q only (``nss_scope``/``rescale_scope`` say
    ``top-q``, ``rescale_baseline`` is q/(mn), ``rescale_share_upper`` bounds the full-frame value)
    and each ``by_k`` entry has ``angle_error_deg``, the estimated error of its angles.
    ``delta_spectral``: a known ‖Δ‖₂ (saves the power iteration on Δ in the top-q route).
    ``delta``: Δ = w1 − w0 in at least float32, when the caller has it (the top-q route then reads
    it instead of subtracting chunk by chunk).

    Returns ``by_k`` {str(k): angles (left = row side, right = column side, degrees), gap_k,
    wedin_bound, gap_limited, block_shares}, ``nss``, ``nss_scope``, ``rescale_share``,
    ``rescale_share_upper``, ``rescale_scope``, ``rescale_baseline``, ``rescale_ratio``,
    ``principal_overlap``, ``low_overlap``, ``overlap_baseline`` and ``method``.
    """
    groups = tuple(groups)
    _check_inputs(w0, w1, changed, groups)
    max_iter, dev = _check_options(w0, delta, overlap_k, overlap_alpha, max_iter, device)
    m_orig, n_orig = w0.shape
    transposed = m_orig < n_orig
    if dev.type != "cpu":  # one host-to-device copy instead of one per pass over the chunks
        w0, w1 = w0.to(dev), w1.to(dev)
        changed = None if changed is None else changed.to(dev)
    # the transpose of a wide matrix: a view when products read it whole (BLAS takes it transposed),
    # a row-major copy when passes cast it chunk by chunk (row chunks of a view would be strided)
    whole = w0.dtype in (torch.float32, torch.float64) and w1.dtype == w0.dtype
    a0, a1 = ((w0.T, w1.T) if whole else (w0.T.contiguous(), w1.T.contiguous())) if transposed else (w0, w1)
    m, n = a0.shape
    ks = sorted({resolve_k(s, m_orig, n_orig) for s in top_k}) or [default_k(m_orig, n_orig)]
    want_frame = "frame" in groups
    k_ov = min(overlap_k, n)
    k_max = max(ks)
    k_v0 = max(k_max, k_ov if want_frame else 0)
    fr = _choose_frame(a0, a1, ks, k_ov, k_v0, want_frame, dev, exact=exact, full_max=full_max, max_iter=max_iter,
                       delta_spectral=delta_spectral,
                       delta=None if delta is None else (delta.T if transposed else delta))
    by_k: dict[str, dict] = {str(k): {} for k in ks}
    out: dict = {"by_k": by_k}
    method = dict(fr.method)
    method.setdefault("route", "full")
    method["orientation"] = "left = row side (m), right = column side (n)" + (
        "; computed on the transpose (m < n)" if transposed else ""
    )
    if "spectral" in groups:
        out.update(_spectral_fields(fr, ks, transposed, by_k, method))
    if want_frame:
        out.update(_frame_fields(fr, ks, transposed, by_k, method, w0, w1, a0, changed, (m_orig, n_orig), k_ov,
                                 overlap_alpha, dev))
    out["method"] = method
    return out


def _check_options(w0, delta, overlap_k, overlap_alpha, max_iter, device) -> tuple[int, torch.device]:
    """:func:`spectral_metrics`' options checked: (max_iter, device)."""
    if delta is not None and tuple(delta.shape) != tuple(w0.shape):
        raise DeltalensError(f"delta must have the pair's shape {tuple(w0.shape)}, got {tuple(delta.shape)}")
    if not 0.0 < overlap_alpha < 1.0 or overlap_k < 1:
        raise DeltalensError(f"overlap needs k >= 1 and 0 < alpha < 1, got k={overlap_k}, alpha={overlap_alpha}")
    max_iter = MAX_ITER if max_iter is None else max_iter
    if max_iter < 1:
        raise DeltalensError(f"max_iter must be >= 1, got {max_iter}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeltalensError("device 'cuda' was asked for but torch sees no CUDA device")
    return max_iter, dev


def _choose_frame(a0, a1, ks, k_ov, k_v0, want_frame, dev, *, exact, full_max, max_iter, delta_spectral,
                  delta) -> _Frame:
    """The route: exact SVDs; the float64 Gram frame up to ``full_max``; else the top-q route,
    escalated to the Gram frame when a well-posed k stays unresolved and n ≤ GRAM_ESCALATE_MAX."""
    n = a0.shape[1]
    k_max = max(ks)
    if exact:
        return _frame_exact(a0, a1, k_max, k_v0, want_frame, dev)
    if n <= (FULL_FRAME_MAX if full_max is None else full_max):
        return _frame_fast(a0, a1, k_max, k_v0, want_frame, dev)
    fr = _frame_topq(a0, a1, ks, max(k_max, k_ov), want_frame, dev, max_iter=max_iter,
                     delta_spectral=delta_spectral, delta=delta)
    need = [k for k, e in fr.angle_errors.items() if e > TOL_DEG and not _gap_limited(fr, k)]
    if need and n <= GRAM_ESCALATE_MAX:  # a subspace that is defined but not resolved: the exact Gram frame
        why = (f"escalated from top-{max(k_max, k_ov)}: estimated angle error "
               + ", ".join(f"{fr.angle_errors[k]:.2g}° at k={k}" for k in need) + f" > {TOL_DEG}°")
        fr = _frame_fast(a0, a1, k_max, k_v0, want_frame, dev)
        fr.method["route"] = f"full ({why})"
    return fr


def _spectral_fields(fr: _Frame, ks, transposed: bool, by_k: dict, method: dict) -> dict:
    """SPEC §4 from a frame: per k the principal angles, gap, Wedin bound, flags (into ``by_k``); NSS."""
    ortho = fr.ritz is not None  # Ritz vectors are orthonormal to float64 rounding: skip the QR
    for k in ks:
        with lapack_one_thread(fr.u0):
            rows = angle_summary_deg(principal_angles(fr.u0[:, :k], fr.u1[:, :k], orthonormal=ortho))
            cols = angle_summary_deg(principal_angles(fr.v0[:, :k], fr.v1[:, :k], orthonormal=ortho))
        left, right = (cols, rows) if transposed else (rows, cols)
        gap = spectral_gap(fr.s0, k)
        bound = wedin_bound(fr.delta_spectral, gap)
        by_k[str(k)].update(
            angles_left_deg=left["all"], angles_right_deg=right["all"],
            angle_max_left_deg=left["max"], angle_max_right_deg=right["max"],
            angle_mean_left_deg=left["mean"], angle_mean_right_deg=right["mean"],
            gap_k=gap, wedin_bound=bound if math.isfinite(bound) else None, gap_limited=bool(bound > 1.0),
        )
        if fr.angle_errors is not None:
            err = fr.angle_errors[k]
            by_k[str(k)]["angle_error_deg"] = err
            by_k[str(k)]["unresolved"] = bool(err > TOL_DEG)
        else:
            by_k[str(k)]["unresolved"] = False
    s0, s1 = (fr.s0, fr.s1) if fr.nss_pair is None else fr.nss_pair
    method["gap_limited"] = "Wedin bound ‖Δ‖₂/gap_k > 1 (None bound = zero gap)"
    method["unresolved"] = (f"top-q route only: the angles' estimated error exceeds {TOL_DEG}° (left out of "
                            "aggregates, plots and claims, and counted)")
    return {"nss": normalized_spectrum_shift(s0, s1), "nss_scope": _scope(fr)}


def _scope(fr: _Frame) -> str:
    return "full" if fr.scope is None else f"top-{fr.scope}"


def _frame_fields(fr: _Frame, ks, transposed: bool, by_k: dict, method: dict, w0, w1, a0, changed, shape, k_ov: int,
                  overlap_alpha: float, dev) -> dict:
    """SPEC §5 from a frame: block shares per k (into ``by_k``), rescale share and its bounds, and the
    principal/low overlaps of the update mask."""
    m_orig, n_orig = shape
    energies = {}
    for k in sorted(set(ks) | ({fr.scope} if fr.scope else set())):
        pp = float(fr.cross[:k, :k].square().sum())
        p_rows = float(fr.row_energy[:k].sum())
        p_cols = float(fr.col_energy[:k].sum())
        energies[k] = (pp, p_rows, p_cols)
        if str(k) in by_k:
            p_left, p_right = (p_cols, p_rows) if transposed else (p_rows, p_cols)
            by_k[str(k)]["block_shares"] = block_shares(pp, p_left, p_right, fr.delta_fro2, k, m_orig, n_orig)
    share = rescale_share(fr.diag_d, fr.delta_fro2)
    base = rescale_baseline(m_orig, n_orig, fr.scope)
    if fr.scope is None:
        upper = share
    else:
        pp, p_rows, p_cols = energies[fr.scope]
        upper = rescale_share_upper(fr.diag_d, fr.delta_fro2 - p_rows - p_cols + pp, fr.delta_fro2)
    out = dict(rescale_share=share, rescale_share_upper=upper, rescale_scope=_scope(fr), rescale_baseline=base,
               rescale_ratio=None if share is None else share / base)
    if changed is None:
        mask = bitwise_changed(w0, w1)
        method["mask"] = f"bitwise w0 != w1 in the given dtype ({w0.dtype})"
    else:
        mask = changed
        method["mask"] = "bitwise update mask given by the caller (stored dtype)"
    v_ov = fr.v0[:, :k_ov]
    if fr.scope is None:
        left_ov = chunked_matmul(a0, v_ov.to(torch.float32), device=dev)
    else:
        left_ov = fr.u0[:, :k_ov] * fr.s0[:k_ov].to(fr.u0.device)
    # in the stored orientation (row chunks of the tensor as given; ties in its flat order):
    # the reconstruction of W0 = (left V_kᵀ)ᵀ = V_k leftᵀ when the frame is of the transpose
    factors = (v_ov, left_ov) if transposed else (left_ov, v_ov)
    hits_p, hits_l, size = _overlaps(w0, mask, *factors, overlap_alpha, dev)
    out.update(principal_overlap=mask_overlap(hits_p, size), low_overlap=mask_overlap(hits_l, size),
               overlap_baseline=overlap_alpha)
    method["overlap"] = (
        f"top/bottom alpha={overlap_alpha} (ceil(alpha·mn) entries, exact selection) of |rank-{k_ov} "
        f"reconstruction of W0| (float32) and of |W0|"
    )
    return out


def _gap_limited(fr: _Frame, k: int) -> bool:
    """Whether the Wedin bound ‖Δ‖₂/gap_k of the frame's W0 exceeds 1 (top-k subspace ill-posed).  SPEC §4."""
    return wedin_bound(fr.delta_spectral, spectral_gap(fr.s0, k)) > 1.0


def ritz_angle_error_deg(r0: RitzTriplets, r1: RitzTriplets, k: int) -> float:
    """Estimated error (degrees) of the top-k principal angles between two computed subspaces:
    the sum of each computed subspace's estimated angle to its true one (angles obey the triangle
    inequality), from the Ritz residuals (:meth:`RitzTriplets.subspace_error`).  SPEC §4."""
    return sum(math.degrees(math.asin(r.subspace_error(k))) for r in (r0, r1))
