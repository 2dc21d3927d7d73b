"""Kernel comparisons on planted cases with known answers (references: scipy/numpy float64, fractions)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.linalg
import torch
from models import LinearInParameters, PlantedKernel, linear_output, planted_output

from deltalens.kernel import compare_kernels, empirical_ntk, kernel_alignment, kernel_rescale_baseline, kernel_rescale_share
from deltalens.kernel.trajectory import kernel_trajectory

N = 8


def orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@pytest.fixture()
def planted():
    theta = torch.linspace(3.0, 0.5, N, dtype=torch.float64)  # θ_k² distinct and descending
    return PlantedKernel(orthogonal(N, 0), theta, plane=(2, 5)), {"index": torch.arange(N)}


def kernel_of(model, output_fn, batch, **kw):
    return empirical_ntk(model, output_fn, batch, **kw).matrix


def test_linear_in_parameters_keeps_its_kernel():
    model = LinearInParameters()
    batch = {"phi": torch.randn(7, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)}
    k0 = kernel_of(model, linear_output, batch)
    with torch.no_grad():
        model.theta.add_(torch.randn(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 5)
    k1 = kernel_of(model, linear_output, batch)
    np.testing.assert_allclose(k0.numpy(), (batch["phi"] @ batch["phi"].T).numpy(), rtol=1e-12)
    comp = compare_kernels(k0, k1, top_r=3)
    assert torch.equal(k0, k1)
    assert max(comp["angles_deg"]) < 1e-10
    assert comp["rescale_share"] is None and "unchanged" in comp["rescale_undefined_reason"]
    assert comp["alignment"] == pytest.approx(1.0, abs=1e-14)
    assert all(r == pytest.approx(0.0, abs=1e-12) for r in comp["eigenvalue_log_ratios"])


def test_scaling_one_eigendirection_gives_rescale_share_one(planted):
    model, batch = planted
    k0 = kernel_of(model, planted_output, batch, params=["theta"])
    with torch.no_grad():
        model.theta[1] *= 1.05
    k1 = kernel_of(model, planted_output, batch, params=["theta"])
    comp = compare_kernels(k0, k1, top_r=3)
    assert comp["rescale_share"] == pytest.approx(1.0, abs=1e-10)
    assert max(comp["angles_deg"]) < 1e-6
    # λ_2 moves from θ_2² to (1.05 θ_2)²: log ratio 2 log 1.05 (order kept), others 0
    assert comp["eigenvalue_log_ratios"][1] == pytest.approx(2 * math.log(1.05), abs=1e-10)
    assert comp["eigenvalue_log_ratios"][0] == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("alpha_deg", [0.5, 3.0, 20.0])
def test_rotating_features_gives_the_planted_angle(planted, alpha_deg):
    model, batch = planted
    k0 = kernel_of(model, planted_output, batch, params=["theta"])
    with torch.no_grad():
        model.alpha.fill_(math.radians(alpha_deg))
    k1 = kernel_of(model, planted_output, batch, params=["theta"])
    comp = compare_kernels(k0, k1, top_r=3)
    phi, rotated = model.phi.numpy(), (model.phi @ model.rotation()).detach().numpy()
    reference = np.sort(np.degrees(scipy.linalg.subspace_angles(phi[:, :3], rotated[:, :3])))
    np.testing.assert_allclose(comp["angles_deg"], reference, atol=0.01)
    assert comp["angles_deg"][-1] == pytest.approx(alpha_deg, abs=0.01)
    assert comp["rescale_share"] < 1.0
    assert not comp["gap_limited"]


def test_rescale_share_of_a_planted_E():
    """K1 = K0 + U0 E U0ᵀ with a chosen integer E: share = ‖diag E‖²/‖E‖_F² exactly (fractions)."""
    u0 = orthogonal(5, 3)
    values = torch.tensor([9.0, 7.0, 4.0, 2.0, 1.0], dtype=torch.float64)
    k0 = u0 @ torch.diag(values) @ u0.T
    e = torch.tensor(
        [[3, 1, 0, 0, 2], [1, -2, 0, 1, 0], [0, 0, 1, 0, 0], [0, 1, 0, 0, 0], [2, 0, 0, 0, 1]], dtype=torch.float64
    )
    share, reason = kernel_rescale_share(k0, k0 + u0 @ e @ u0.T)
    diag = sum(Fraction(int(v)) ** 2 for v in torch.diagonal(e))
    total = sum(Fraction(int(v)) ** 2 for v in e.reshape(-1))
    assert reason is None
    assert share == pytest.approx(float(diag / total), abs=1e-12)


def test_rescale_baseline_is_the_random_symmetric_share():
    """For Gaussian symmetric E (diagonal variance 2, off-diagonal 1) the mean share → 2/(n+1)."""
    n = 6
    gen = torch.Generator().manual_seed(0)
    k0 = torch.diag(torch.arange(n, 0, -1, dtype=torch.float64))
    shares = []
    for _ in range(3000):
        a = torch.randn(n, n, generator=gen, dtype=torch.float64)
        shares.append(kernel_rescale_share(k0, k0 + (a + a.T) / 2 * 1e-3)[0])
    # the mean of a ratio is not the ratio of means; with n=6 the gap is small but not zero
    assert np.mean(shares) == pytest.approx(kernel_rescale_baseline(n), rel=0.1)
    assert kernel_rescale_baseline(n) == pytest.approx(2 / 7)


def test_gap_wedin_alignment_and_log_ratios_against_numpy():
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    b = a + 0.05 * torch.randn(10, 6, generator=gen, dtype=torch.float64)
    k0, k1 = a @ a.T, b @ b.T
    comp = compare_kernels(k0, k1, top_r=4)
    l0 = np.sort(np.linalg.eigvalsh(k0.numpy()))[::-1]
    l1 = np.sort(np.linalg.eigvalsh(k1.numpy()))[::-1]
    np.testing.assert_allclose(comp["eigenvalue_log_ratios"], np.log(l1[:4] / l0[:4]), rtol=1e-9)
    assert comp["gap"] == pytest.approx(l0[3] - l0[4], rel=1e-9)
    spectral = np.linalg.norm(k1.numpy() - k0.numpy(), 2)
    assert comp["wedin_bound"] == pytest.approx(spectral / (l0[3] - l0[4]), rel=1e-9)
    assert comp["gap_limited"] == (comp["wedin_bound"] > 1)
    ref_align = np.sum(k0.numpy() * k1.numpy()) / (np.linalg.norm(k0.numpy()) * np.linalg.norm(k1.numpy()))
    assert kernel_alignment(k0, k1) == pytest.approx(ref_align, rel=1e-12)
    # sin θ_max never exceeds the Wedin/Davis–Kahan bound when the bound is below 1
    assert math.sin(math.radians(max(comp["angles_deg"]))) <= comp["wedin_bound"] + 1e-12


def test_degenerate_gap_is_flagged():
    k0 = torch.diag(torch.tensor([5.0, 3.0, 3.0, 1.0], dtype=torch.float64))
    k1 = k0 + 0.01 * torch.ones(4, 4, dtype=torch.float64)
    comp = compare_kernels(k0, k1, top_r=2)  # λ_2 = λ_3: the top-2 eigenspace is not defined
    assert comp["gap"] == 0.0 and comp["gap_limited"]


def test_trajectory_compares_with_base_and_previous(planted):
    model, batch = planted
    kernels = []
    for alpha in (0.0, 2.0, 5.0):
        with torch.no_grad():
            model.alpha.fill_(math.radians(alpha))
        kernels.append(kernel_of(model, planted_output, batch, params=["theta"]))
    steps = kernel_trajectory(kernels[0], kernels[1:], ["a", "b"], top_r=3)
    assert [s["checkpoint"] for s in steps] == ["a", "b"]
    assert steps[0]["vs_base"]["angles_deg"][-1] == pytest.approx(2.0, abs=0.01)
    assert steps[1]["vs_base"]["angles_deg"][-1] == pytest.approx(5.0, abs=0.01)
    assert steps[1]["vs_previous"]["angles_deg"][-1] == pytest.approx(3.0, abs=0.01)
