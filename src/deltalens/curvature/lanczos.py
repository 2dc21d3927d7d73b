"""Top eigenpairs of a symmetric operator known only through products (SPEC §9).

ARPACK's implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh`` on a ``LinearOperator``):
full reorthogonalization of each new Lanczos vector against the whole basis (classical
Gram–Schmidt with the DGKS correction), restarts that keep the wanted Ritz vectors, and a stop
on the residual tolerance ‖A x − θ x‖ ≤ tol·|θ| of every wanted Ritz pair. The start vector is
drawn from ``numpy.random.default_rng(seed)``, so a seed gives the same run, product for product.

The returned residuals are recomputed with one more product per pair, ‖A v_i − λ_i v_i‖ (the
Ritz residual bound: some eigenvalue of A lies within it of λ_i, and the angle between v_i and
its eigenvector is at most residual/gap), and those products (A V) come back for reuse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from deltalens.errors import DeltalensError


@dataclass
class Eigenpairs:
    """Top-r eigenpairs, r largest |λ| first (signed), and how they were obtained.

    ``values`` (r,), ``vectors`` dim × r orthonormal columns, ``image`` = A·vectors,
    ``residuals`` ‖A v_i − λ_i v_i‖, ``products`` the operator applications Lanczos took
    (the r of the residual check not counted), all float64 on the CPU.
    """

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    image: torch.Tensor | None
    products: int
    tolerance: float

    def summary(self) -> dict:
        return {"eigenvalues": self.values.tolist(), "residuals": self.residuals.tolist(),
                "products": self.products, "tolerance": self.tolerance}


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
) -> Eigenpairs:
    """The r eigenpairs of largest |λ| (``which="LM"``; ``"LA"`` for the largest algebraic) of
    the symmetric dim × dim operator ``matvec`` (flat float64 torch vector → same), by Lanczos.

    Stops when every wanted Ritz pair has ‖A x − θx‖ ≤ ``tol``·|θ|; raises
    :class:`DeltalensError` when r ≥ dim (Lanczos needs r < dim) or when ``max_products``
    (default 50·dim capped at 20 000) pass without convergence.
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
    ncv = min(dim, max(2 * r + 1, 20))
    limit = max_products or min(20_000, 50 * dim)
    try:
        values, vectors = sla.eigsh(operator, k=r, which=which, v0=v0, tol=tol, ncv=ncv,
                                    maxiter=max(1, limit // max(1, ncv - r)))
    except sla.ArpackNoConvergence as exc:
        raise DeltalensError(f"{what}: Lanczos did not reach the tolerance {tol:g} for the top {r} in {count[0]} "
                             f"products ({len(exc.eigenvalues)} converged); raise the tolerance or lower --top") from None
    products = count[0]
    order = np.argsort(-np.abs(values), kind="stable")
    values = torch.from_numpy(values[order].copy())
    vectors = torch.from_numpy(vectors[:, order].copy())
    image = torch.stack([matvec(vectors[:, i].clone()).detach().cpu().double() for i in range(r)], dim=1)
    return Eigenpairs(values, vectors, residuals_of(values, vectors, image), image, products, tol)
