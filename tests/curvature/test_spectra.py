"""Curvature products, Lanczos spectra and comparisons against explicit float64 matrices (SPEC §9)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deltalens.curvature import (
    CurvatureProducts,
    curvature_block,
    curvature_rescale_share,
    pp_shares,
    random_subspace_angles_deg,
    top_eigenpairs,
)
from deltalens.errors import DeltalensError
from deltalens.linalg import principal_angles

from .reference import Explicit, TinyLM, top_by_magnitude, toy_batch

R = 4
EIG_RTOL = 1e-6
ANGLE_DEG = 0.01


def max_angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.rad2deg(principal_angles(a, b)).max())


@pytest.fixture(scope="module")
def toy():
    model, batch = TinyLM(), toy_batch()
    block, _ = curvature_block(model, batch, top=R, tol=1e-10)
    return model, batch, Explicit(model, batch), block


@pytest.mark.parametrize("jvp", ["dual", "linearize"])
def test_products_match_explicit_matrices(toy, jvp):
    model, batch, ref, _ = toy
    products = CurvatureProducts(model, batch, chunk_size=4, jvp=jvp)  # two chunks: the sum over chunks is exercised
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(products.dim, generator=gen, dtype=torch.float64)
    u = torch.randn(products.outputs, generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(products.hvp(v), ref.hessian @ v, rtol=0, atol=1e-12)
    np.testing.assert_allclose(products.ggn_vp(v), ref.gauss_newton @ v, rtol=0, atol=1e-12)
    np.testing.assert_allclose(products.kernel_vp(u, weighted=False), ref.kernel_logits @ u, rtol=0, atol=1e-11)
    np.testing.assert_allclose(products.jt(u, weighted=False), ref.jacobian.T @ u, rtol=0, atol=1e-12)
    assert all(bool(chunk.linear) == (jvp == "linearize") for chunk in products.chunks)  # the route asked for ran


@pytest.mark.parametrize("kind,matrix", [("hessian", "hessian"), ("gauss_newton", "gauss_newton")])
def test_top_eigenpairs_of_h_and_g(toy, kind, matrix):
    _, _, ref, block = toy
    values, vectors = top_by_magnitude(getattr(ref, matrix), R)
    got = block.spectra[kind]
    np.testing.assert_allclose(got.values, values, rtol=EIG_RTOL)
    assert max_angle_deg(got.vectors, vectors) < ANGLE_DEG
    assert torch.all(got.residuals < 1e-8 * got.values.abs().max())
    assert got.values.abs().tolist() == sorted(got.values.abs().tolist(), reverse=True)


@pytest.mark.parametrize("kind,kernel,operator", [
    ("entk_weighted", "kernel_weighted", "gauss_newton"),
    ("entk_logits", "kernel_logits", None),
    ("entk_logprob", "kernel_logprob", None),
])
def test_entk_directions(toy, kind, kernel, operator):
    """Kernel eigenvalues from eigh of the explicit kernel (symmetric H_z^{1/2} for the weighted one);
    directions Jᵀu/√λ against the top eigenvectors of the parameter-space operator (JᵀJ, J_fᵀJ_f, G)."""
    _, _, ref, block = toy
    got = block.spectra[kind]
    values, _ = top_by_magnitude(getattr(ref, kernel), R)
    np.testing.assert_allclose(got.values, values, rtol=EIG_RTOL)
    j = {"entk_logits": ref.jacobian, "entk_logprob": ref.jacobian_logprob}.get(kind)
    param_op = getattr(ref, operator) if operator else j.T @ j
    _, vectors = top_by_magnitude(param_op, R)
    assert max_angle_deg(got.vectors, vectors) < ANGLE_DEG
    np.testing.assert_allclose(torch.linalg.vector_norm(got.vectors, dim=0), 1.0, rtol=1e-12)
    if kind == "entk_weighted":  # its nonzero eigenvalues are exactly n × G's
        np.testing.assert_allclose(got.values, ref.n * block.spectra["gauss_newton"].values, rtol=EIG_RTOL)


def test_quadratic_model_has_h_equal_g():
    """Logits linear in θ (a head on frozen features): the residual term vanishes, H = G exactly."""
    model, batch = TinyLM(linear=True), toy_batch()
    ref = Explicit(model, batch)
    assert torch.allclose(ref.hessian, ref.gauss_newton, atol=1e-14)
    block, products = curvature_block(model, batch, top=R, tol=1e-10)
    v = torch.randn(products.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(products.hvp(v), products.ggn_vp(v), rtol=0, atol=1e-13)
    assert max_angle_deg(block.spectra["hessian"].vectors, block.spectra["gauss_newton"].vectors) < ANGLE_DEG
    assert max(block.residual["along_hessian"]["relative"]) < 1e-10


def test_non_interpolating_point_differs_by_the_residual_term(toy):
    """H − G = (1/n) Σ_rows Σ_k (p − e_y)_k ∇²z_k, written out by torch.func.hessian, and it is not small."""
    model, batch, ref, block = toy
    products = CurvatureProducts(model, batch)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        v = torch.randn(products.dim, generator=gen, dtype=torch.float64)
        np.testing.assert_allclose(products.hvp(v) - products.ggn_vp(v), ref.residual_term @ v, rtol=0, atol=1e-12)
    assert float(torch.linalg.matrix_norm(ref.residual_term, 2)) > 0.1 * float(torch.linalg.matrix_norm(ref.hessian, 2))
    assert block.residual["output_residuals"]["mean_norm"] > 0.1
    v = block.spectra["hessian"].vectors
    expect = torch.linalg.vector_norm(ref.residual_term @ v, dim=0) / torch.linalg.vector_norm(ref.hessian @ v, dim=0)
    np.testing.assert_allclose(block.residual["along_hessian"]["relative"], expect, rtol=1e-8)


def test_top_vocabulary_columns():
    """--vocab V: z = V chosen logits per row; G = (1/n) Jᵀ H_VV J with H_VV the sub-block of the full
    softmax curvature (Σ p_V < 1), and the weighted kernel still has n × G's eigenvalues."""
    model, batch = TinyLM(), toy_batch()
    rows = int((batch["completion_mask"][:, 1:] > 0).sum())
    columns = torch.stack([torch.randperm(7, generator=torch.Generator().manual_seed(i))[:3] for i in range(rows)])
    ref = Explicit(model, batch, columns=columns)
    block, _ = curvature_block(model, batch, top=R, tol=1e-10, vocab_index=columns)
    values, vectors = top_by_magnitude(ref.gauss_newton, R)
    np.testing.assert_allclose(block.spectra["gauss_newton"].values, values, rtol=EIG_RTOL)
    np.testing.assert_allclose(block.spectra["entk_weighted"].values, top_by_magnitude(ref.kernel_weighted, R)[0],
                               rtol=EIG_RTOL)
    assert max_angle_deg(block.spectra["entk_weighted"].vectors, vectors) < ANGLE_DEG


def test_block_is_the_principal_submatrix():
    model, batch = TinyLM(), toy_batch()
    names = ["mix.weight", "mix.bias"]
    ref = Explicit(model, batch, names=names)
    block, _ = curvature_block(model, batch, names=names, top=3, tol=1e-10)
    for kind, matrix in (("hessian", ref.hessian), ("gauss_newton", ref.gauss_newton)):
        values, vectors = top_by_magnitude(matrix, 3)
        np.testing.assert_allclose(block.spectra[kind].values, values, rtol=EIG_RTOL)
        assert max_angle_deg(block.spectra[kind].vectors, vectors) < ANGLE_DEG


def test_lanczos_is_deterministic_for_a_seed_and_stops_on_its_tolerance():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(300, 300, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(0, -4, 300, dtype=torch.float64) * torch.tensor([1.0, -1.0]).repeat(150)) @ q.T
    runs = [top_eigenpairs(lambda v: a @ v, 300, 6, seed=7, tol=1e-8) for _ in range(2)]
    assert torch.equal(runs[0].values, runs[1].values) and torch.equal(runs[0].vectors, runs[1].vectors)
    assert runs[0].products == runs[1].products
    values, vectors = top_by_magnitude(a, 6)
    np.testing.assert_allclose(runs[0].values, values, rtol=1e-8)
    np.testing.assert_allclose(runs[0].residuals, torch.linalg.vector_norm(a @ runs[0].vectors - runs[0].vectors
                                                                          * runs[0].values, dim=0), rtol=0, atol=1e-13)
    loose = top_eigenpairs(lambda v: a @ v, 300, 6, seed=7, tol=1e-2)
    assert loose.products <= runs[0].products
    other = top_eigenpairs(lambda v: a @ v, 300, 6, seed=8, tol=1e-8)
    assert not torch.equal(other.vectors, runs[0].vectors)


def test_curvature_block_is_deterministic(toy):
    model, batch, _, block = toy
    again, _ = curvature_block(model, batch, top=R, tol=1e-10)
    for kind in block.spectra:
        assert torch.equal(block.spectra[kind].values, again.spectra[kind].values)
        assert torch.equal(block.spectra[kind].vectors, again.spectra[kind].vectors)


def test_top_larger_than_the_operator_is_an_error():
    model, batch = TinyLM(), toy_batch()
    with pytest.raises(DeltalensError, match="--top 83"):
        curvature_block(model, batch, top=83)
    with pytest.raises(DeltalensError, match="probes"):
        curvature_block(model, batch, top=7)  # 6 probes: the log-prob kernel has 6 eigenvectors
    with pytest.raises(DeltalensError, match="fewer than 5"):
        top_eigenpairs(lambda v: v, 5, 5)


def test_random_subspace_baseline_matches_monte_carlo():
    """Bartlett-sampled baseline against explicit random orthonormal bases (QR of Gaussians)."""
    dim, r = 40, 3
    got = np.array(random_subspace_angles_deg(dim, r, seed=0, draws=2000))
    gen = torch.Generator().manual_seed(1)
    fixed = torch.eye(dim, r, dtype=torch.float64)
    draws = [torch.rad2deg(principal_angles(fixed, torch.randn(dim, r, generator=gen, dtype=torch.float64))).numpy()
             for _ in range(2000)]
    np.testing.assert_allclose(got, np.mean(draws, axis=0), atol=1.0)
    cos2 = np.cos(np.radians(np.array(draws))) ** 2
    assert abs(cos2.sum(1).mean() - r * r / dim) < 0.02  # E Σ cos² = r²/dim


def test_pp_share_against_numpy():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    vectors = torch.randn(30 + 4, 2, generator=gen, dtype=torch.float64)
    u, _, vt = np.linalg.svd(w.numpy())
    frames = {"w": (torch.from_numpy(u[:, :2]), torch.from_numpy(vt[:2].T))}
    got = pp_shares(vectors, [("w", torch.Size([6, 5])), ("b", torch.Size([4]))], frames)
    for i in range(2):
        x = vectors[:30, i].numpy().reshape(6, 5)
        expect = np.sum((u[:, :2].T @ x @ vt[:2].T) ** 2) / np.sum(x ** 2)
        assert math.isclose(got["matrices"]["w"]["pp_share"][i], expect, rel_tol=1e-12)
        assert math.isclose(got["pooled"][i], expect, rel_tol=1e-12)
    assert got["matrices"]["w"]["baseline"] == 4 / 30


def test_curvature_rescale_share_against_explicit_matrices():
    """A change that only rescales the base's eigenvectors has share 1; a rotation less."""
    gen = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=gen, dtype=torch.float64))
    lam = torch.linspace(5, 1, 20, dtype=torch.float64)
    a0 = q @ torch.diag(lam) @ q.T
    v0 = q[:, :3]
    rescaled = q @ torch.diag(lam * torch.linspace(2, 0.5, 20, dtype=torch.float64)) @ q.T
    assert math.isclose(curvature_rescale_share(v0, a0 @ v0, rescaled @ v0)["rescale_share"], 1.0, rel_tol=1e-12)
    s = torch.randn(20, 20, generator=gen, dtype=torch.float64)
    a1 = a0 + (s + s.T) / 10
    change = (a1 - a0) @ v0
    expect = float(torch.diagonal(v0.T @ change).square().sum() / change.square().sum())
    got = curvature_rescale_share(v0, a0 @ v0, a1 @ v0)
    assert math.isclose(got["rescale_share"], expect, rel_tol=1e-12) and got["baseline"] == 2 / 21


def test_gap_and_subspace_error_bound_follow_the_planted_spectrum():
    """λ_{r+1}, the gap and the Davis–Kahan bound against a matrix whose spectrum is planted."""
    gen = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen, dtype=torch.float64))
    spectrum = torch.cat([torch.tensor([10.0, 8.0, 6.0, 5.0]), torch.linspace(1.0, 0.01, 196)]).double()
    a = q @ torch.diag(spectrum) @ q.T
    pairs = top_eigenpairs(lambda v: a @ v, 200, 3, seed=0, tol=1e-10, which="LA")
    assert pairs.next_value == pytest.approx(5.0, rel=1e-8) and pairs.gap == pytest.approx(1.0, rel=1e-8)
    true = q[:, :3]
    sin_max = math.sin(math.radians(max_angle_deg(pairs.vectors, true)))
    bound = math.sin(math.radians(pairs.error_bound_deg))
    assert sin_max <= bound + 1e-12 and pairs.error_bound_deg < 1e-3  # converged: tight and tiny
    # a tolerance loose enough to leave residuals: the bound still covers the true angle
    loose = top_eigenpairs(lambda v: a @ v, 200, 3, seed=0, tol=1e-1, which="LA")
    assert math.sin(math.radians(max_angle_deg(loose.vectors, true))) <= math.sin(math.radians(loose.error_bound_deg)) + 1e-12
    summary = pairs.summary()
    assert summary["gap"] == pytest.approx(1.0, rel=1e-8) and summary["subspace_error_bound_deg"] == pairs.error_bound_deg
    # a flat spectrum across the cut (λ_3 = λ_4): no gap, the top-3 subspace is not determined, the bound is 90°
    flat = torch.cat([torch.tensor([10.0, 8.0, 5.0, 5.0]), torch.linspace(1.0, 0.01, 196)]).double()
    tied = top_eigenpairs(lambda v: q @ torch.diag(flat) @ q.T @ v, 200, 3, seed=0, tol=1e-10, which="LA")
    assert abs(tied.gap) < 1e-8 and tied.error_bound_deg == 90.0
    # identical operators give identical subspaces: angle 0, within the bound
    again = top_eigenpairs(lambda v: a @ v, 200, 3, seed=0, tol=1e-10, which="LA")
    assert max_angle_deg(pairs.vectors, again.vectors) < 1e-6
    # no (r+1)-th eigenvalue: no gap, the bound says nothing
    small = top_eigenpairs(lambda v: a[:4, :4] @ v, 4, 3, seed=0, tol=1e-10, which="LA")
    assert small.next_value is None and small.error_bound_deg == 90.0
