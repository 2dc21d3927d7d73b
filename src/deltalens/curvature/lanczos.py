"""Top eigenpairs of a symmetric operator known only through products (SPEC §9).

ARPACK's implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh`` on a ``LinearOperator``):
full reorthogonalization of each new Lanczos vector against the whole basis (classical
Gram–Schmidt with the DGKS correction), restarts that keep the wanted Ritz vectors, and a stop
on the residual tolerance ‖A x − θ x‖ ≤ tol·|θ| of every wanted Ritz pair. The start vector is
drawn from ``numpy.random.default_rng(seed)``, so a seed gives the same run, product for product.

The returned residuals are recomputed with one more product per pair, ‖A v_i − λ_i v_i‖ (the
Ritz residual bound: some eigenvalue of A lies within it of λ_i, and the angle between v_i and
its eigenvector is at most residual/gap), and those products (A V) come back for reuse.

Lanczos is asked for r + 1 pairs (where the dimension allows), so the gap after the r-th,
|λ_r| − |λ_{r+1}|, is known; with the residual matrix R = A V − V Λ it bounds how far the
returned subspace can be from the true top-r eigenspace: sin θ ≤ ‖R‖_F / gap (Davis–Kahan's
sin θ theorem for an approximate invariant subspace), reported as ``subspace_error_bound_deg``
(90 when the gap is not positive). Principal angles between two such subspaces are resolved only
above the sum of their two bounds.
"""

from __future__ import annotations

import math

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from deltalens.errors import DeltalensError


@dataclass
class Eigenpairs:
    """Top-r eigenpairs, r largest |λ| first (signed), and how they were obtained.

    ``values`` (r,), ``vectors`` dim × r orthonormal columns (a tensor, or for directions too
    large to hold a :class:`deltalens.curvature.store.ColumnFile`), ``image`` = A·vectors,
    ``residuals`` ‖A v_i − λ_i v_i‖, ``products`` the operator applications Lanczos took
    (the r of the residual check not counted), all float64 on the CPU.
    """

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    image: torch.Tensor | None
    products: int
    tolerance: float
    next_value: float | None = None  # λ_{r+1} in the same order (None: the dimension has no (r+1)-th)

    @property
    def gap(self) -> float | None:
        """|λ_r| − |λ_{r+1}| (the separation of the top r from the rest), None without λ_{r+1}."""
        if self.next_value is None:
            return None
        return abs(float(self.values[-1])) - abs(self.next_value)

    @property
    def error_bound_deg(self) -> float:
        """Davis–Kahan bound on the largest angle between the returned subspace and the true
        top-r eigenspace (SPEC §9, with SPEC §4's gap): asin(min(1, ‖R‖_F / gap)) in degrees,
        R = A V − V Λ (90 without a positive gap)."""
        gap = self.gap
        if gap is None or gap <= 0:
            return 90.0
        return math.degrees(math.asin(min(1.0, float(torch.linalg.vector_norm(self.residuals)) / gap)))

    def summary(self) -> dict:
        return {"eigenvalues": self.values.tolist(), "residuals": self.residuals.tolist(),
                "products": self.products, "tolerance": self.tolerance, "next_eigenvalue": self.next_value,
                "gap": self.gap, "subspace_error_bound_deg": self.error_bound_deg}


def residuals_of(values: torch.Tensor, vectors: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """‖A v_i − λ_i v_i‖ for each column, from ``image`` = A V."""
    return torch.linalg.vector_norm(image - vectors * values, dim=0)


def top_eigenpairs(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    r: int,
    *,
    seed: int = 0,
    tol: float = 1e-6,
    which: str = "LM",
    max_products: int | None = None,
    what: str = "operator",
    check: bool = True,
) -> Eigenpairs:
    """The r eigenpairs of largest |λ| (``which="LM"``; ``"LA"`` for the largest algebraic) of
    the symmetric dim × dim operator ``matvec`` (flat float64 torch vector → same), by Lanczos.

    Stops when every wanted Ritz pair has ‖A x − θx‖ ≤ ``tol``·|θ|; raises
    :class:`DeltalensError` when r ≥ dim (Lanczos needs r < dim) or when ``max_products``
    (default 50·dim capped at 20 000) pass without convergence. ``check=False`` skips the r
    products of the residual check (``residuals`` and ``image`` are then None: the caller
    computes them, e.g. the function-space route of :mod:`deltalens.curvature.run`).
    """
    import scipy.sparse.linalg as sla

    if r < 1:
        raise DeltalensError(f"--top: must be ≥ 1, got {r}")
    if r >= dim:
        raise DeltalensError(f"--top {r}: the {what} acts on {dim} dimensions; ask for fewer than {dim} eigenpairs")
    count = [0]

    def apply(x: np.ndarray) -> np.ndarray:
        count[0] += 1
        y = matvec(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1)))
        return y.detach().to(device="cpu", dtype=torch.float64).numpy()

    operator = sla.LinearOperator((dim, dim), matvec=apply, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(dim)
    k = r + 1 if r + 1 < dim else r  # one more, for the gap after the r-th
    ncv = basis_bytes(dim, r) // (8 * dim)
    limit = max_products or min(20_000, 50 * dim)
    try:
        values, vectors = sla.eigsh(operator, k=k, which=which, v0=v0, tol=tol, ncv=ncv,
                                    maxiter=max(1, limit // max(1, ncv - k)))
    except sla.ArpackNoConvergence as exc:
        raise DeltalensError(f"{what}: Lanczos did not reach the tolerance {tol:g} for the top {r} in {count[0]} "
                             f"products ({len(exc.eigenvalues)} converged); raise the tolerance or lower --top") from None
    products = count[0]
    key = -np.abs(values) if which == "LM" else -values
    order = np.argsort(key, kind="stable")
    next_value = float(values[order[r]]) if k > r else None
    values = torch.from_numpy(values[order[:r]].copy())
    vectors = torch.from_numpy(vectors[:, order[:r]].copy())
    if not check:
        return Eigenpairs(values, vectors, None, None, products, tol, next_value)
    image = torch.stack([matvec(vectors[:, i].clone()).detach().cpu().double() for i in range(r)], dim=1)
    return Eigenpairs(values, vectors, residuals_of(values, vectors, image), image, products, tol, next_value)


def basis_bytes(dim: int, r: int) -> int:
    """Memory of :func:`top_eigenpairs`' Lanczos basis for the top r of a dim-dimensional operator:
    ncv float64 vectors of dim entries (ncv as chosen there)."""
    k = r + 1 if r + 1 < dim else r
    return min(dim, max(2 * k + 1, 20)) * dim * 8
