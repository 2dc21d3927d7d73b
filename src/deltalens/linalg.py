"""Pure tensor math shared by every level (weights, kernels): no I/O, no globals.

Conventions: angles in radians unless a name says ``_deg``; singular values descending.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

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
    return angles_from(cosines, torch.linalg.svdvals(residual))


def angles_from(cosines: torch.Tensor, sines: torch.Tensor) -> torch.Tensor:
    """Ascending principal angles (radians) from the descending singular values of Q_aᵀQ_b
    (cosines) and of (I − Q_aQ_aᵀ)Q_b (sines): arcsin for angles ≤ 45°, arccos above (each where
    it is well conditioned; Knyazev & Argentati 2002)."""
    cosines = cosines.clamp(0.0, 1.0)
    small_from_sines = torch.arcsin(sines.clamp(0.0, 1.0).flip(0))  # ascending
    from_cosines = torch.arccos(cosines)
    use_sines = cosines.square() >= 0.5  # angle ≤ 45°
    return torch.where(use_sines, small_from_sines, from_cosines)


def wedin_bound(delta_spectral: float, gap: float) -> float:
    """Wedin's sin θ bound: sin θ_max ≤ ‖Δ‖₂ / gap_k (SPEC §4); ``inf`` for a zero gap."""
    if gap <= 0.0:
        return float("inf")
    return float(delta_spectral) / float(gap)


# ---------------------------------------------------------------------------------------------
# Singular value decompositions: exact, Gram + eigh, randomized.  SPEC §3–§5.
# ---------------------------------------------------------------------------------------------

_CHUNK_ELEMENTS = 1 << 22  # rows per chunk are chosen so a float64 chunk stays near 32 MiB


def chunk_rows(n_cols: int, elements: int | None = None) -> int:
    """Rows per chunk so that one chunk of an (·×n_cols) matrix holds about ``elements`` values
    (default: the module's ``_CHUNK_ELEMENTS``, read at call time so tests can shrink it)."""
    return max(1, (_CHUNK_ELEMENTS if elements is None else elements) // max(1, n_cols))


def gram_products(
    w0: torch.Tensor,
    w1: torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """G0 = W0ᵀW0, C = W0ᵀΔ, E = ΔᵀΔ with Δ = W1 − W0, all n×n, in ``dtype`` on ``device``.

    One pass over row chunks of the m×n inputs (use the orientation with n ≤ m): each chunk is
    cast to ``dtype`` before the subtraction, so Δ is exact for float32 inputs and the products
    accumulate in float64. W1ᵀW1 = G0 + C + Cᵀ + E without a fourth product.  SPEC §4, §5.
    """
    n = w0.shape[1]
    dev = torch.device(device)
    g0 = torch.zeros(n, n, dtype=dtype, device=dev)
    c = torch.zeros_like(g0)
    e = torch.zeros_like(g0)
    step = chunk_rows(n)
    for start in range(0, w0.shape[0], step):
        a = w0[start : start + step].to(device=dev, dtype=dtype)
        d = w1[start : start + step].to(device=dev, dtype=dtype) - a
        g0.addmm_(a.T, a)
        c.addmm_(a.T, d)
        e.addmm_(d.T, d)
    return g0, c, e


def chunked_matmul(
    w: torch.Tensor,
    x: torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    minus: torch.Tensor | None = None,
) -> torch.Tensor:
    """W @ X for a large m×n ``w`` and a small n×k ``x``, casting ``w`` chunk by chunk to x's dtype
    and device (so a float64 product never needs a float64 copy of ``w``). With ``minus``, W is
    the difference ``w − minus``, formed chunk by chunk in x's dtype (Δ = W1 − W0 without a copy)."""
    dev = torch.device(device)
    x = x.to(dev)
    if _as_stored(w, minus, x.dtype, dev):
        return w @ x
    out = torch.empty(w.shape[0], x.shape[1], dtype=x.dtype, device=dev)
    for start, chunk in row_chunks(w, minus, dev, x.dtype):
        out[start : start + chunk.shape[0]] = chunk @ x
    return out


def chunked_rmatmul(
    w: torch.Tensor,
    y: torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    minus: torch.Tensor | None = None,
) -> torch.Tensor:
    """Wᵀ @ Y for a large m×n ``w`` and a small m×k ``y``, chunk by chunk in y's dtype; with
    ``minus`` W is ``w − minus`` (see :func:`chunked_matmul`)."""
    dev = torch.device(device)
    y = y.to(dev)
    if _as_stored(w, minus, y.dtype, dev):
        return w.T @ y
    out = torch.zeros(w.shape[1], y.shape[1], dtype=y.dtype, device=dev)
    for start, chunk in row_chunks(w, minus, dev, y.dtype):
        out.addmm_(chunk.T, y[start : start + chunk.shape[0]])
    return out


def chunked_normal_matmul(
    w: torch.Tensor,
    x: torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    minus: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W X, Wᵀ W X) in one pass over row chunks of ``w`` (each chunk cast once, not once per
    product), in x's dtype; with ``minus`` W is ``w − minus`` (see :func:`chunked_matmul`)."""
    dev = torch.device(device)
    x = x.to(dev)
    if _as_stored(w, minus, x.dtype, dev):
        y = w @ x
        return y, w.T @ y
    y = torch.empty(w.shape[0], x.shape[1], dtype=x.dtype, device=dev)
    out = torch.zeros(w.shape[1], x.shape[1], dtype=x.dtype, device=dev)
    for start, chunk in row_chunks(w, minus, dev, x.dtype):
        part = y[start : start + chunk.shape[0]]
        torch.mm(chunk, x, out=part)
        out.addmm_(chunk.T, part)
    return y, out


def chunked_pair_normal_matmul(
    w0: torch.Tensor,
    w1: torch.Tensor,
    x: torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    delta: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(W0 X, Δ X, W0ᵀW0 X, W1ᵀW1 X, ‖Δ‖²_F) with Δ = W1 − W0, in one pass over row chunks of both
    (each chunk cast once to x's dtype, Δ formed there), for the common-subspace Rayleigh–Ritz of
    a weight pair (SPEC §4). W1 X is computed as W0 X + Δ X and W1's chunk as W0's + Δ's, so
    identical inputs give bitwise identical products for both sides (Δ = 0 exactly). With
    ``delta`` (Δ = w1 − w0 formed by the caller) and every operand already in x's dtype and
    device, four whole-matrix products replace the chunk loop (W1ᵀ(W0X + ΔX): for W1 = W0 the
    same bits as W0ᵀW0X)."""
    dev = torch.device(device)
    x = x.to(dev)
    m, n = w0.shape
    if delta is not None and all(_as_stored(t, None, x.dtype, dev) for t in (w0, w1, delta)):
        y0, yd = w0 @ x, delta @ x  # Δ given in x's dtype: whole-matrix products, no chunk loop
        return y0, yd, w0.T @ y0, w1.T @ (y0 + yd), float(torch.linalg.vector_norm(delta)) ** 2
    y0 = torch.empty(m, x.shape[1], dtype=x.dtype, device=dev)
    yd = torch.empty_like(y0)
    g0 = torch.zeros(n, x.shape[1], dtype=x.dtype, device=dev)
    g1 = torch.zeros_like(g0)
    fro2 = 0.0
    for (start, a), (_, d) in zip(row_chunks(w0, None, dev, x.dtype), row_chunks(w1, w0, dev, x.dtype)):
        rows = slice(start, start + a.shape[0])
        torch.mm(a, x, out=y0[rows])
        torch.mm(d, x, out=yd[rows])
        g0.addmm_(a.T, y0[rows])
        g1.addmm_((a + d).T, y0[rows] + yd[rows])
        fro2 += float(torch.linalg.vector_norm(d)) ** 2  # per-chunk norm in x's dtype, summed in float64
    return y0, yd, g0, g1, fro2


def rayleigh_ritz_pair(x: torch.Tensor, b0: torch.Tensor, d: torch.Tensor, g0x: torch.Tensor, g1x: torch.Tensor,
                       *, width: int | None = None) -> tuple["RitzTriplets", "RitzTriplets"]:
    """Ritz triplets of W0 and of W1 = W0 + Δ from one orthonormal n×s basis ``x``, given B0 = W0X
    and D = ΔX (m×s, any float dtype) and WᵀWX of each (n×s).  SPEC §4; Halko, Martinsson & Tropp 2011 §5.

    In float64, over row chunks of B0 and D (no m×s float64 copy): B0ᵀB0, B0ᵀD and DᵀD; then
    BᵀB = Y diag(σ²) Yᵀ for B0 and for B1 = B0 + D (B1ᵀB1 = B0ᵀB0 + B0ᵀD + DᵀB0 + DᵀD, so the
    rounding of B0 is common to both and Δ = 0 gives bitwise identical triplets); v_i = X y_i;
    u_i = B y_i / σ_i for the first ``width`` pairs (default all); residuals
    ‖Wᵀu_i − σ_i v_i‖ = ‖WᵀWX y_i / σ_i − σ_i X y_i‖ for every pair, at no pass over W."""
    f64 = torch.float64
    s_dim = x.shape[1]
    width = s_dim if width is None else min(width, s_dim)
    g00 = torch.zeros(s_dim, s_dim, dtype=f64, device=x.device)
    g0d, gdd = torch.zeros_like(g00), torch.zeros_like(g00)
    step = chunk_rows(2 * s_dim)
    for start in range(0, b0.shape[0], step):
        bc, dc = b0[start : start + step].to(f64), d[start : start + step].to(f64)
        g00.addmm_(bc.T, bc)
        g0d.addmm_(bc.T, dc)
        gdd.addmm_(dc.T, dc)
    out = []
    with lapack_one_thread(x):
        for gram, gx, diff in ((g00, g0x, False), (g00 + g0d + g0d.T + gdd, g1x, True)):
            lam, y = torch.linalg.eigh(gram)
            sigma, y = lam.flip(0).clamp_min(0.0).sqrt(), y.flip(1)
            scale = sigma.clamp_min(torch.finfo(f64).tiny)
            v = x.to(f64) @ y
            residual = torch.linalg.vector_norm((gx.to(f64) @ y) / scale - v * sigma, dim=0)
            yw = y[:, :width] / scale[:width]
            u = torch.empty(b0.shape[0], width, dtype=f64, device=x.device)
            for start in range(0, b0.shape[0], step):
                rows = slice(start, start + step)
                u[rows] = b0[rows].to(f64) @ yw
                if diff:
                    u[rows] += d[rows].to(f64) @ yw
            out.append(RitzTriplets(u=u, s=sigma.cpu(), v=v, residual=residual.cpu(), iterations=0))
    return out[0], out[1]


def orthonormal_extension(basis: torch.Tensor, new: torch.Tensor, *, drop: float = 1e-8) -> torch.Tensor:
    """An orthonormal basis of the part of span(``new``) orthogonal to the orthonormal ``basis``
    (n×s): ``new`` scaled so its longest column is 1, projected off ``basis`` twice (classical
    Gram–Schmidt twice, Giraud et al. 2005), then orthonormalized by the eigenvectors of its Gram
    matrix; directions whose norm after projection is below ``drop`` are left out (inside
    span(basis), or rounding noise), and at most n − s are kept; a last
    projection and CholeskyQR2 restore orthogonality to rounding. n×t, t ≥ 0."""
    room = basis.shape[0] - basis.shape[1]
    top = float(torch.linalg.vector_norm(new, dim=0).max()) if new.numel() else 0.0
    if room <= 0 or top == 0.0:
        return new[:, :0]
    z = new / top  # one scale for all: a column of rounding noise stays small and is dropped below
    for _ in range(2):
        z = z - basis @ (basis.T @ z)
    with lapack_one_thread(z):
        lam, e = torch.linalg.eigh(z.T @ z)
        good = (lam > drop * drop) & (torch.arange(len(lam), device=lam.device) >= len(lam) - room)
        q = (z @ e[:, good]) / lam[good].sqrt()
        if q.shape[1] == 0:
            return q
        q = q - basis @ (basis.T @ q)  # the division by small √λ amplified what remained of span(basis)
        return _cholesky_qr(q)


def _as_stored(w: torch.Tensor, minus: torch.Tensor | None, dtype: torch.dtype, dev: torch.device) -> bool:
    """Whether ``w`` can go to BLAS whole (nothing to subtract or cast: one call, no chunks)."""
    return minus is None and w.dtype == dtype and w.device == dev


def row_chunks(w: torch.Tensor, minus: torch.Tensor | None, dev: str | torch.device, dtype: torch.dtype):
    """(first row, chunk of w − minus or of w in ``dtype`` on ``dev``) over row chunks of ~32 MiB:
    the one place a large stored matrix (or Δ = w − minus, never copied whole) is cast."""
    step = chunk_rows(w.shape[1])
    for start in range(0, w.shape[0], step):
        chunk = w[start : start + step].to(device=dev, dtype=dtype)
        if minus is not None:
            chunk = chunk - minus[start : start + step].to(device=dev, dtype=dtype)
        yield start, chunk


def eigh_descending(g: torch.Tensor, *, vectors: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eigen-decomposition of a symmetric matrix with eigenvalues in descending order.

    ``torch.linalg.eigh``/``eigvalsh``; on CPU in one thread (:func:`lapack_one_thread`): on the
    shared 2-core machine the threaded LAPACK took 255 ms for a 256×256 matrix that one thread
    decomposes in 8 ms. Returns (values, vectors or None) in g's dtype and device.
    """
    with lapack_one_thread(g):
        if vectors:
            w, v = torch.linalg.eigh(g)
            return w.flip(0), v.flip(1)
        return torch.linalg.eigvalsh(g).flip(0), None


def largest_eigenvalue(g: torch.Tensor) -> float:
    """λ_max of a symmetric positive semi-definite matrix (‖Δ‖₂² from E = ΔᵀΔ, SPEC §3, §4).

    Lanczos (ARPACK ``eigsh``, relative tolerance 1e-8) on CPU; ``eigvalsh`` on other devices.
    """
    if g.shape[0] <= 2 or g.device.type != "cpu":
        return float(torch.linalg.eigvalsh(g)[-1].clamp_min(0.0))
    import scipy.sparse.linalg

    if not torch.any(g != 0):
        return 0.0
    v0 = torch.ones(g.shape[0], dtype=torch.float64).numpy()
    val = scipy.sparse.linalg.eigsh(g.numpy(), k=1, which="LA", tol=1e-8, v0=v0, return_eigenvectors=False)
    return max(0.0, float(val[0]))


def singular_values_from_gram(eigenvalues: torch.Tensor) -> torch.Tensor:
    """σ_i = sqrt(max(λ_i(AᵀA), 0)), descending (σ of A from the eigenvalues of its Gram matrix)."""
    return eigenvalues.clamp_min(0.0).sqrt()


def top_k_svd(
    a: torch.Tensor,
    k: int,
    *,
    method: str = "gram",
    oversample: int = 10,
    niter: int = 6,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets (U_k m×k, σ_k, V_k n×k) of an m×n matrix, in float64.  SPEC §4.

    ``method``:
    - ``"exact"``: ``torch.linalg.svd`` in float64 (reference).
    - ``"gram"``: eigh of the float64 Gram matrix on the smaller side; the other side's vectors
      are A v_i / σ_i. Accurate for the top of the spectrum (relative error ≈ eps64·σ1²/σ_k²).
    - ``"randomized"``: ``torch.svd_lowrank`` (Halko et al. 2011) with ``k + oversample`` columns
      and ``niter`` power iterations, in float64; accuracy depends on the decay σ_{q+1}/σ_k.
    """
    m, n = a.shape
    if not 1 <= k <= min(m, n):
        raise ValueError(f"top_k_svd needs 1 <= k <= min(m, n) = {min(m, n)}, got k={k}")
    dev = torch.device(device)
    if method == "exact":
        u, s, vh = torch.linalg.svd(a.to(device=dev, dtype=torch.float64), full_matrices=False)
        return u[:, :k], s[:k], vh[:k].T
    if method == "randomized":
        q = min(k + oversample, min(m, n))
        u, s, v = torch.svd_lowrank(a.to(device=dev, dtype=torch.float64), q=q, niter=niter)
        return u[:, :k], s[:k], v[:, :k]
    if method != "gram":
        raise ValueError(f"top_k_svd method must be 'exact', 'gram' or 'randomized', got {method!r}")
    if m < n:
        v, s, u = top_k_svd(a.T, k, method="gram", device=device)
        return u, s, v
    g = torch.zeros(n, n, dtype=torch.float64, device=dev)
    step = chunk_rows(n)
    for start in range(0, m, step):
        chunk = a[start : start + step].to(device=dev, dtype=torch.float64)
        g.addmm_(chunk.T, chunk)
    lam, vecs = eigh_descending(g)
    s = singular_values_from_gram(lam[:k])
    v = vecs[:, :k].to(dev)
    u = chunked_matmul(a, v, device=dev) / s.clamp_min(torch.finfo(torch.float64).tiny)
    return u, s, v


def spectral_gap(s: torch.Tensor, k: int) -> float:
    """gap_k = σ_k − σ_{k+1} (1-based, σ descending; σ_{k+1} = 0 when k is the full rank).  SPEC §4."""
    if not 1 <= k <= s.numel():
        raise ValueError(f"spectral_gap needs 1 <= k <= {s.numel()}, got {k}")
    nxt = float(s[k]) if k < s.numel() else 0.0
    return float(s[k - 1]) - nxt


@dataclass
class RitzTriplets:
    """Top singular triplets of an m×n operator from a p-dimensional right subspace.

    ``u`` m×p, ``s`` (p, descending), ``v`` n×p, returned as float64 (computed in the final
    Rayleigh–Ritz dtype); A v_i = s_i u_i holds to that dtype's rounding.
    ``residual``: ‖Aᵀu_i − s_i v_i‖ of these triplets, computed in the iterations' dtype.
    ``iterations``: subspace iterations taken (power steps: one fewer).
    """

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor
    residual: torch.Tensor
    iterations: int

    def subspace_error(self, k: int) -> float:
        """Estimated sin of the largest angle between the computed and the true top-k right (and
        left) singular subspaces: ‖R_k‖_F / (s_k − s_{k+1}) (Davis–Kahan/Wedin with Ritz values in
        place of the unknown σ_{k+1}), capped at 1."""
        return min(1.0, self.convergence_error(k))

    def convergence_error(self, k: int) -> float:
        """max(‖R_k‖_F / (s_k − s_{k+1}) uncapped, relative residual of the (k+1)-th Ritz pair):
        small once the top-k subspace and σ_{k+1} (hence the gap) are both resolved; inf when k is
        the whole computed width or the gap is zero."""
        if k >= self.s.numel():
            return float("inf")
        gap = float(self.s[k - 1] - self.s[k])
        err = float(torch.linalg.vector_norm(self.residual[:k])) / gap if gap > 0.0 else float("inf")
        if float(self.s[k]) > 0.0:
            err = max(err, float(self.residual[k]) / float(self.s[k]))
        return err


def ritz_subspace_iteration(
    matmul: Callable[[torch.Tensor], torch.Tensor],
    rmatmul: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    *,
    max_iter: int,
    k: int = 1,
    tol: float = 0.0,
    min_progress: float = 0.0,
    final_dtype: torch.dtype = torch.float64,
    normal: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> RitzTriplets:
    """Top singular triplets of an operator A (m×n) by subspace iteration with Rayleigh–Ritz.  SPEC §3–§5.

    Randomized range finder with power iterations (Halko, Martinsson & Tropp 2011, Alg. 4.4/5.1),
    warm-startable (``start``: n×p, e.g. a random matrix, or the right singular vectors of a nearby
    matrix). ``matmul(X)`` = A X (n×p → m×p), ``rmatmul(Y)`` = Aᵀ Y; both follow their argument's
    dtype, so the iterations run in ``start``'s dtype and the final Rayleigh–Ritz in ``final_dtype``.
    Each iteration (two passes over A): Y = A Z, X = Aᵀ Y; the Ritz pairs of span(Z) come from the
    small Gram YᵀY = W Σ² Wᵀ (u_i = Y w_i/σ_i, v_i = Z w_i) and their residuals
    ‖Aᵀu_i − σ_i v_i‖ = ‖X w_i/σ_i − σ_i Z w_i‖ cost no extra pass; unless done, Z = orth(X). It
    stops after ``max_iter`` iterations or once the estimated subspace error of the top ``k`` and
    the relative residual of the (k+1)-th pair are ≤ ``tol`` (:meth:`RitzTriplets.convergence_error`), or
    (with ``min_progress`` > 0) once two iterations in a row fail to shrink that error estimate
    below (1 − min_progress) × its best value so far: a flat spectrum, or float32 rounding, then
    leaves little to gain (the first iterations from a random start may go either way). When
    ``final_dtype`` differs from the iterations' dtype, one more pass recomputes the Ritz
    triplets of that last span(Z) in ``final_dtype``; otherwise the last iteration's are
    returned. Either way the residuals belong to the returned triplets. ``normal(Z)`` =
    (A Z, Aᵀ A Z) in one pass over A, if given, replaces the two passes of an iteration.
    Convergence per iteration goes as (σ_{p+1}/σ_k)²: fast for a decaying spectrum, slow for a
    flat one (and then the error estimate says so).
    """
    with lapack_one_thread(start):
        z = _cholesky_qr(start)
    it = 0
    best, stalls = float("inf"), 0
    while True:
        it += 1
        if normal is None:
            y = matmul(z)
            x = rmatmul(y)
        else:
            y, x = normal(z)
        with lapack_one_thread(x):
            sigma, w = _gram_ritz(y)
            res = x @ w / sigma.clamp_min(torch.finfo(sigma.dtype).tiny) - (z @ w) * sigma
            residual = torch.linalg.vector_norm(res, dim=0).to(torch.float64).cpu()
            error = RitzTriplets(y, sigma.to(torch.float64).cpu(), z, residual, it).convergence_error(k)
            stalls = stalls + 1 if error > (1.0 - min_progress) * best else 0
            best = min(best, error)
            if it >= max_iter or error <= tol or (min_progress > 0 and stalls >= 2):
                break
            z = _cholesky_qr(x)
    if z.dtype != final_dtype:
        with lapack_one_thread(z):
            z = _cholesky_qr(z.to(final_dtype))
        y = matmul(z)
        with lapack_one_thread(y):
            sigma, w = _gram_ritz(y)
    u = y @ w / sigma.clamp_min(torch.finfo(sigma.dtype).tiny)
    f64 = torch.float64
    return RitzTriplets(u=u.to(f64), s=sigma.to(f64).cpu(), v=(z @ w).to(f64), residual=residual, iterations=it)


def _cholesky_qr(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of span(x) (n×p, n ≥ p) by CholeskyQR2 in float64 (two passes of
    Q = X R⁻¹ with R = chol(XᵀX); Yamamoto et al. 2015), returned in x's dtype; Householder QR
    when XᵀX is numerically singular. Much cheaper than Householder for tall-skinny X."""
    q = x.to(torch.float64)
    for _ in range(2):
        r, info = torch.linalg.cholesky_ex(q.T @ q, upper=True)
        if int(info) != 0:
            return orthonormal_basis(x)
        q = torch.linalg.solve_triangular(r, q, upper=True, left=False)
    return q.to(x.dtype)


def _gram_ritz(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ descending, W) with YᵀY = W diag(σ²) Wᵀ: the singular values and right vectors of Y."""
    lam, w = torch.linalg.eigh(y.T @ y)
    return lam.flip(0).clamp_min(0.0).sqrt(), w.flip(1)


@contextmanager
def lapack_one_thread(t: torch.Tensor):
    """Run small CPU factorizations (QR of n×p, eigh of p×p) on one thread: LAPACK's threaded
    versions stall at every barrier when the cores are shared (measured 50× slower here)."""
    if t.device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
