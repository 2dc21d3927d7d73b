"""linalg against scipy float64 on planted rotations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from deltalens.linalg import principal_angles, wedin_bound


def _rotated_pair(m: int, k: int, angles_deg: list[float], seed: int = 0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((m, 2 * k)))
    base, perp = q[:, :k], q[:, k:]
    th = np.deg2rad(angles_deg)
    rotated = base * np.cos(th) + perp[:, : len(th)] * np.sin(th)
    return base, rotated


@pytest.mark.parametrize("angle", [1e-4, 0.1, 1.0, 5.0, 30.0, 44.9, 45.1, 60.0, 89.0])
def test_planted_angles_match_scipy_and_truth(angle):
    base, rotated = _rotated_pair(50, 3, [angle, angle / 2, 0.0])
    got = np.rad2deg(principal_angles(torch.from_numpy(base), torch.from_numpy(rotated)).numpy())
    ref = np.sort(np.rad2deg(scipy.linalg.subspace_angles(base, rotated)))
    truth = np.sort([angle, angle / 2, 0.0])
    np.testing.assert_allclose(got, ref, atol=1e-5)  # scipy itself drifts ~1e-6° near 0 at θ_max≈89°
    np.testing.assert_allclose(got, truth, atol=1e-8)


def test_unequal_dimensions_and_float32_input():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((40, 5)), rng.standard_normal((40, 3))
    got = np.rad2deg(principal_angles(torch.from_numpy(a).float(), torch.from_numpy(b).float()).numpy())
    ref = np.sort(np.rad2deg(scipy.linalg.subspace_angles(a, b)))
    assert got.shape == (3,)
    np.testing.assert_allclose(got, ref, atol=1e-3)


def test_wedin_bound():
    assert wedin_bound(0.5, 2.0) == 0.25
    assert wedin_bound(0.5, 0.0) == float("inf")


# ----------------------------------------------------------------------------- SVD helpers

import deltalens.linalg as linalg  # noqa: E402
from deltalens.linalg import (  # noqa: E402
    chunked_matmul,
    eigh_descending,
    gram_products,
    largest_eigenvalue,
    spectral_gap,
    top_k_svd,
)


def _decaying(m, n, seed=0):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, min(m, n))))
    v, _ = np.linalg.qr(rng.standard_normal((n, min(m, n))))
    s = 10.0 * 0.8 ** np.arange(min(m, n))
    return (u * s) @ v.T


@pytest.mark.parametrize("method", ["exact", "gram", "randomized"])
@pytest.mark.parametrize("shape", [(60, 25), (25, 60)])
def test_top_k_svd_against_numpy(method, shape, monkeypatch):
    monkeypatch.setattr(linalg, "_CHUNK_ELEMENTS", 77)
    a = _decaying(*shape)
    k = 5
    u, s, v = top_k_svd(torch.from_numpy(a), k, method=method)
    ur, sr, vhr = np.linalg.svd(a, full_matrices=False)
    np.testing.assert_allclose(s.numpy(), sr[:k], rtol=1e-8)
    assert np.rad2deg(scipy.linalg.subspace_angles(u.numpy(), ur[:, :k])).max() < 1e-6
    assert np.rad2deg(scipy.linalg.subspace_angles(v.numpy(), vhr[:k].T)).max() < 1e-6
    np.testing.assert_allclose(u.numpy().T @ a @ v.numpy(), np.diag(sr[:k]), atol=1e-8)


def test_top_k_svd_rejects_bad_k_and_method():
    a = torch.randn(5, 4)
    with pytest.raises(ValueError):
        top_k_svd(a, 0)
    with pytest.raises(ValueError):
        top_k_svd(a, 5)
    with pytest.raises(ValueError):
        top_k_svd(a, 2, method="lanczos")


def test_gram_products_and_chunked_matmul(monkeypatch):
    monkeypatch.setattr(linalg, "_CHUNK_ELEMENTS", 50)
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((33, 7)).astype(np.float32)
    w1 = (w0 + 0.1 * rng.standard_normal((33, 7))).astype(np.float32)
    g0, c, e = gram_products(torch.from_numpy(w0), torch.from_numpy(w1))
    a0, a1 = w0.astype(np.float64), w1.astype(np.float64)
    np.testing.assert_allclose(g0.numpy(), a0.T @ a0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c.numpy(), a0.T @ (a1 - a0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(e.numpy(), (a1 - a0).T @ (a1 - a0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose((g0 + c + c.T + e).numpy(), a1.T @ a1, rtol=1e-10, atol=1e-10)
    x = rng.standard_normal((7, 3))
    np.testing.assert_allclose(chunked_matmul(torch.from_numpy(w0), torch.from_numpy(x)).numpy(), a0 @ x, atol=1e-12)


def test_eigh_descending_and_largest_eigenvalue():
    rng = np.random.default_rng(4)
    b = rng.standard_normal((40, 12))
    g = b.T @ b
    w, v = eigh_descending(torch.from_numpy(g))
    ref = np.sort(np.linalg.eigvalsh(g))[::-1]
    np.testing.assert_allclose(w.numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(g @ v.numpy(), v.numpy() * w.numpy(), atol=1e-9)
    vals, none = eigh_descending(torch.from_numpy(g), vectors=False)
    assert none is None
    np.testing.assert_allclose(vals.numpy(), ref, rtol=1e-10)
    assert largest_eigenvalue(torch.from_numpy(g)) == pytest.approx(ref[0], rel=1e-10)
    assert largest_eigenvalue(torch.zeros(5, 5, dtype=torch.float64)) == 0.0


def test_spectral_gap():
    s = torch.tensor([5.0, 3.0, 3.0, 1.0])
    assert spectral_gap(s, 1) == 2.0
    assert spectral_gap(s, 2) == 0.0
    assert spectral_gap(s, 4) == 1.0  # σ_{k+1} = 0 past the rank
    with pytest.raises(ValueError):
        spectral_gap(s, 5)


# ----------------------------------------------------------------------------- randomized top-q


from deltalens.linalg import chunked_normal_matmul, chunked_rmatmul, ritz_subspace_iteration  # noqa: E402


def test_chunked_products_with_difference(monkeypatch):
    monkeypatch.setattr(linalg, "_CHUNK_ELEMENTS", 40)  # many row chunks
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal((45, 8)).astype(np.float32)
    w1 = (w0 + 0.01 * rng.standard_normal((45, 8))).astype(np.float32)
    d = w1.astype(np.float64) - w0.astype(np.float64)
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((45, 3))
    t0, t1 = torch.from_numpy(w0), torch.from_numpy(w1)
    np.testing.assert_allclose(chunked_matmul(t1, torch.from_numpy(x), minus=t0).numpy(), d @ x, atol=1e-12)
    np.testing.assert_allclose(chunked_rmatmul(t1, torch.from_numpy(y), minus=t0).numpy(), d.T @ y, atol=1e-12)
    np.testing.assert_allclose(chunked_rmatmul(t0, torch.from_numpy(y)).numpy(), w0.astype(np.float64).T @ y, atol=1e-10)
    tx = torch.from_numpy(x)
    for w, ref in ((chunked_normal_matmul(t1, tx, minus=t0), d), (chunked_normal_matmul(t0.double(), tx), w0.astype(np.float64))):
        np.testing.assert_allclose(w[0].numpy(), ref @ x, atol=1e-12)  # one pass: (W X, WᵀW X)
        np.testing.assert_allclose(w[1].numpy(), ref.T @ (ref @ x), atol=1e-10)


def _operator(a):
    t = torch.from_numpy(a)
    return (lambda x: t.to(x.dtype) @ x), (lambda y: t.to(y.dtype).T @ y)


def test_ritz_subspace_iteration_against_numpy():
    """A decaying spectrum: the top-k triplets converge to numpy's SVD; Ritz values never exceed
    the true ones; the error estimate is small and at least the true error."""
    a = _decaying(300, 120, seed=6)
    ur, sr, vhr = np.linalg.svd(a, full_matrices=False)
    k, p = 6, 20
    start = torch.randn(120, p, generator=torch.Generator().manual_seed(0))
    r = ritz_subspace_iteration(*_operator(a), start, max_iter=30, k=k, tol=1e-4)
    assert r.iterations < 30  # stopped on the tolerance (float32 iterations floor it near 1e-6)
    np.testing.assert_allclose(r.s[:k].numpy(), sr[:k], rtol=1e-9)
    assert np.all(r.s.numpy() <= sr[:p] * (1 + 1e-12))  # Ritz values are lower bounds (interlacing)
    err_v = scipy.linalg.subspace_angles(r.v[:, :k].numpy(), vhr[:k].T).max()
    err_u = scipy.linalg.subspace_angles(r.u[:, :k].numpy(), ur[:, :k]).max()
    assert max(err_u, err_v) < 1e-5  # radians; float32 iterations
    assert r.subspace_error(k) < 1e-3
    np.testing.assert_allclose(a @ r.v.numpy(), r.u.numpy() * r.s.numpy(), atol=1e-9)  # A v = σ u
    np.testing.assert_allclose(r.v.numpy().T @ r.v.numpy(), np.eye(p), atol=1e-12)
    # a warm start from the answer converges in one iteration
    warm = ritz_subspace_iteration(*_operator(a), r.v.float(), max_iter=30, k=k, tol=1e-4)
    assert warm.iterations == 1


def test_ritz_error_estimate_flags_a_flat_spectrum():
    """Gaussian noise has no gap at k: two iterations leave the top-k subspace unresolved, and the
    estimate must say so rather than report a converged answer."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((400, 200))
    r = ritz_subspace_iteration(*_operator(a), torch.randn(200, 24), max_iter=2, k=8, tol=1e-6)
    _, _, vhr = np.linalg.svd(a, full_matrices=False)
    true_err = np.sin(scipy.linalg.subspace_angles(r.v[:, :8].numpy(), vhr[:8].T).max())
    assert true_err > 0.05
    assert r.subspace_error(8) >= true_err


def test_ritz_rank_deficient_operator():
    """Fewer nonzero singular values than columns: CholeskyQR falls back to Householder QR."""
    rng = np.random.default_rng(8)
    a = rng.standard_normal((50, 3)) @ rng.standard_normal((3, 30))
    r = ritz_subspace_iteration(*_operator(a), torch.randn(30, 10), max_iter=3)
    np.testing.assert_allclose(r.s[:3].numpy(), np.linalg.svd(a, compute_uv=False)[:3], rtol=1e-6)
    assert float(r.s[3:].abs().max()) < 1e-4 * float(r.s[0])


def test_pair_normal_products_and_common_rayleigh_ritz_against_numpy(monkeypatch):
    """chunked_pair_normal_matmul against numpy float64 products (several row chunks, bf16 and
    float32 inputs); rayleigh_ritz_pair on a basis spanning everything gives numpy's SVD of W0
    and of W1 (values, subspaces, zero residuals); Δ = 0 gives bitwise identical triplets."""
    from deltalens.linalg import chunked_pair_normal_matmul, rayleigh_ritz_pair

    monkeypatch.setattr(linalg, "_CHUNK_ELEMENTS", 300)
    g = torch.Generator().manual_seed(7)
    for dtype in (torch.float32, torch.bfloat16):
        w0 = torch.randn(70, 12, generator=g).to(dtype)
        w1 = (w0.float() + 0.01 * torch.randn(70, 12, generator=g)).to(dtype)
        x = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))[0]
        b0, d, g0, g1, fro2 = chunked_pair_normal_matmul(w0, w1, x)
        if dtype == torch.float32:  # Δ given: whole-matrix products, the same numbers
            x32 = x.float()
            given = chunked_pair_normal_matmul(w0, w1, x32, delta=w1 - w0)
            for a, b in zip(given[:4], chunked_pair_normal_matmul(w0, w1, x32)[:4]):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
        a0, a1, xn = w0.double().numpy(), w1.double().numpy(), x.numpy()
        np.testing.assert_allclose(b0.numpy(), a0 @ xn, atol=1e-12)
        np.testing.assert_allclose(d.numpy(), (a1 - a0) @ xn, atol=1e-12)
        np.testing.assert_allclose(g0.numpy(), a0.T @ a0 @ xn, atol=1e-10)
        np.testing.assert_allclose(g1.numpy(), a1.T @ a1 @ xn, atol=1e-10)
        assert fro2 == pytest.approx(float(((a1 - a0) ** 2).sum()), rel=1e-10)
        t0, t1 = rayleigh_ritz_pair(x, b0, d, g0, g1, width=4)
        for t, a in ((t0, a0), (t1, a1)):
            u, s, vt = np.linalg.svd(a, full_matrices=False)
            np.testing.assert_allclose(t.s.numpy(), s, rtol=1e-10)
            assert float(t.residual.max()) < 1e-9
            angles = scipy.linalg.subspace_angles(t.v[:, :4].numpy(), vt[:4].T)
            assert np.degrees(angles).max() < 1e-6
            assert np.degrees(scipy.linalg.subspace_angles(t.u.numpy(), u[:, :4])).max() < 1e-6
        same0, same1 = rayleigh_ritz_pair(x, b0, torch.zeros_like(d), g0, g0, width=4)
        assert torch.equal(same0.u, same1.u) and torch.equal(same0.v, same1.v) and torch.equal(same0.s, same1.s)


def test_orthonormal_extension():
    """The extension is orthonormal, orthogonal to the basis, spans new's component outside it,
    drops directions already inside, and never exceeds the room left (n − s)."""
    from deltalens.linalg import orthonormal_extension

    g = torch.Generator().manual_seed(8)
    basis = torch.linalg.qr(torch.randn(10, 4, generator=g, dtype=torch.float64))[0]
    inside = basis @ torch.randn(4, 3, generator=g, dtype=torch.float64)
    outside = torch.randn(10, 2, generator=g, dtype=torch.float64)
    ext = orthonormal_extension(basis, torch.cat([inside, outside], 1))
    assert ext.shape == (10, 2)
    np.testing.assert_allclose((ext.T @ ext).numpy(), np.eye(2), atol=1e-12)
    assert float((basis.T @ ext).abs().max()) < 1e-12
    proj = outside - basis @ (basis.T @ outside)
    assert np.degrees(scipy.linalg.subspace_angles(ext.numpy(), proj.numpy())).max() < 1e-8
    full = orthonormal_extension(basis, torch.randn(10, 9, generator=g, dtype=torch.float64))
    assert full.shape == (10, 6)  # only n − s = 6 directions exist
    assert orthonormal_extension(basis, inside).shape == (10, 0)
