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
