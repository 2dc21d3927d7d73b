"""Large-model routes of the curvature command (SPEC §9): G by Lanczos in function space, and
directions streamed to disk, each held against explicit float64 matrices or the in-memory route."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deltalens.curvature import curvature_block, pair_comparison, pp_shares
from deltalens.curvature.compare import pp_shares_of, update_share
from deltalens.curvature.run import FUNCTION_SPACE, PARAMETER_SPACE, plan_curvature
from deltalens.curvature.store import ColumnFile, DirectionStore, streamed_angles_deg, write_npz
from deltalens.errors import DeltalensError
from deltalens.linalg import principal_angles

from tests.smol_weights import gguf_matrices, needs_gguf

from .reference import Explicit, TinyLM, top_by_magnitude, toy_batch

R = 4


def max_angle_deg(a, b) -> float:
    return float(torch.rad2deg(principal_angles(a, b)).max())


@pytest.fixture(scope="module")
def toy():
    model, batch = TinyLM(), toy_batch()
    return model, batch, Explicit(model, batch)


@pytest.mark.parametrize("vocab", [None, 3])
def test_function_space_gauss_newton_matches_explicit_g(toy, vocab):
    """Eigenvalues, directions, parameter-space residuals and the image G V of the function-space
    route against eigh of the explicit G = Jᵀ H_z J / n (with ``vocab``: on the base's top-3
    columns, where Σp < 1 and H_z is the principal sub-block)."""
    model, batch, ref = toy
    columns = None
    if vocab is not None:
        from deltalens.curvature import top_vocabulary

        columns = top_vocabulary(model, batch, vocab)
        ref = Explicit(model, batch, columns=columns)
    block, _ = curvature_block(model, batch, top=R, tol=1e-10, operators=("gauss_newton",), route=FUNCTION_SPACE,
                               vocab_index=columns)
    assert set(block.spectra) == {"gauss_newton"} and block.route == FUNCTION_SPACE
    got = block.spectra["gauss_newton"]
    values, vectors = top_by_magnitude(ref.gauss_newton, R)
    np.testing.assert_allclose(got.values, values, rtol=1e-6)
    assert max_angle_deg(got.vectors, vectors) < 0.01
    np.testing.assert_allclose(got.image, ref.gauss_newton @ got.vectors, rtol=0, atol=1e-12)
    explicit_residuals = torch.linalg.vector_norm(ref.gauss_newton @ got.vectors - got.vectors * got.values, dim=0)
    np.testing.assert_allclose(got.residuals, explicit_residuals, rtol=0, atol=1e-12)
    all_values = torch.linalg.eigvalsh(ref.gauss_newton).flip(0)
    assert got.next_value == pytest.approx(float(all_values[R]), rel=1e-6)


def test_function_space_route_with_the_weighted_kernel_shares_one_run(toy):
    model, batch, ref = toy
    block, _ = curvature_block(model, batch, top=R, tol=1e-10, operators=("gauss_newton", "entk_weighted"),
                               route=FUNCTION_SPACE)
    g, k = block.spectra["gauss_newton"], block.spectra["entk_weighted"]
    np.testing.assert_allclose(k.values, ref.n * g.values, rtol=1e-12)
    values, _ = top_by_magnitude(ref.kernel_weighted, R)
    np.testing.assert_allclose(k.values, values, rtol=1e-6)
    from deltalens.curvature.run import block_report

    report = block_report(block)
    assert "gauss_newton_vs_entk_weighted" not in report["angles_deg"]  # zero by construction, not a measurement
    assert report["gauss_newton"]["route"] == FUNCTION_SPACE


def test_streamed_directions_are_the_in_memory_ones(toy, tmp_path):
    model, batch, _ = toy
    kinds = ("gauss_newton", "entk_logits", "entk_logprob")
    memory, _ = curvature_block(model, batch, top=R, tol=1e-10, operators=kinds, route=FUNCTION_SPACE)
    store = DirectionStore(tmp_path / "store")
    disk, _ = curvature_block(model, batch, top=R, tol=1e-10, operators=kinds, route=FUNCTION_SPACE, store=store,
                              key="m/")
    for kind in kinds:
        column_file = disk.spectra[kind].vectors
        assert isinstance(column_file, ColumnFile)
        on_disk = np.load(column_file.path)
        assert on_disk.shape == (memory.n_params, R) and on_disk.dtype == np.float64
        np.testing.assert_array_equal(on_disk, memory.spectra[kind].vectors.numpy())
        np.testing.assert_array_equal(disk.spectra[kind].values, memory.spectra[kind].values)
    assert disk.spectra["gauss_newton"].image is None  # not kept when streaming
    store.cleanup()
    assert not (tmp_path / "store").exists()


def random_frames(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [("a", torch.Size([5, 7])), ("bias", torch.Size([5])), ("b", torch.Size([6, 3]))]
    frames = {}
    for name, shape in shapes:
        if len(shape) == 2:
            u, _, vh = torch.linalg.svd(torch.randn(shape, generator=gen, dtype=torch.float64))
            frames[name] = (u[:, :2], vh[:2].T)
    return shapes, frames


def test_column_file_consumers_equal_the_tensor_ones(tmp_path):
    shapes, frames = random_frames()
    dim = 35 + 5 + 18
    gen = torch.Generator().manual_seed(1)
    vectors = torch.linalg.qr(torch.randn(dim, 3, generator=gen, dtype=torch.float64))[0]
    column_file = ColumnFile(tmp_path / "v.npy", dim, 3)
    for j in range(3):
        column_file.append(vectors[:, j])
    assert pp_shares_of(column_file, shapes, frames) == pp_shares(vectors, shapes, frames)
    delta = torch.randn(dim, generator=gen, dtype=torch.float64)
    assert update_share(column_file, delta)["share"] == pytest.approx(update_share(vectors, delta)["share"], rel=1e-12)
    with pytest.raises(DeltalensError, match="all 3 columns"):
        column_file.append(vectors[:, 0])


@pytest.mark.parametrize("angle", [0.0, 1e-6, 1e-3, 0.3, 1.2, np.pi / 2])
def test_streamed_angles_against_planted_angles(tmp_path, angle):
    """Two 3-dimensional subspaces of R^5000 at planted principal angles (angle, angle/2, 0),
    one side on disk, read in row blocks of 700: against the planted values and principal_angles.
    Sines come from the eigenvalues of an r × r Gram matrix, so they are exact to ~1e-8 absolute
    (1e-6°) beside a 90° angle, and to 1e-8 relative when every angle is small."""
    dim, gen = 5000, torch.Generator().manual_seed(2)
    q = torch.linalg.qr(torch.randn(dim, 6, generator=gen, dtype=torch.float64))[0]
    planted = torch.tensor([angle, angle / 2, 0.0], dtype=torch.float64)
    a = q[:, :3] @ torch.randn(3, 3, generator=gen, dtype=torch.float64)  # not orthonormal: a basis of span(q[:, :3])
    b = q[:, :3] * torch.cos(planted) + q[:, 3:] * torch.sin(planted)
    column_file = ColumnFile(tmp_path / "a.npy", dim, 3)
    for j in range(3):
        column_file.append(a[:, j])
    got = streamed_angles_deg(column_file, b, block=700)
    expected = sorted(np.degrees(planted.numpy()))
    atol = 1e-6 if angle > 0.1 else 1e-9
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=atol)
    np.testing.assert_allclose(got, torch.rad2deg(principal_angles(a, b)).tolist(), rtol=1e-8, atol=atol)


def test_write_npz_reads_back_with_numpy(tmp_path):
    gen = torch.Generator().manual_seed(3)
    small = torch.randn(7, 2, generator=gen, dtype=torch.float64)
    big = torch.randn(1000, 3, generator=gen, dtype=torch.float64)
    column_file = ColumnFile(tmp_path / "big.npy", 1000, 3)
    for j in range(3):
        column_file.append(big[:, j])
    with open(tmp_path / "out.npz", "wb") as fh:
        write_npz(fh, {"small": small, "block/x/big": column_file})
    arrays = np.load(tmp_path / "out.npz")
    assert set(arrays.files) == {"small", "block/x/big"}
    np.testing.assert_array_equal(arrays["small"], small.numpy())
    np.testing.assert_array_equal(arrays["block/x/big"], big.numpy())
    half = ColumnFile(tmp_path / "half.npy", 10, 2)
    half.append(torch.zeros(10))
    with pytest.raises(DeltalensError, match="1 of 2 columns"):
        write_npz(open(tmp_path / "bad.npz", "wb"), {"half": half})


def test_plan_follows_the_budget():
    assert plan_curvature(1000, 4, ("hessian", "gauss_newton"), memory_budget_mb=64) == \
        plan_curvature(1000, 4, ("hessian", "gauss_newton"), memory_budget_mb=64)
    small = plan_curvature(1000, 4, ("gauss_newton",), memory_budget_mb=64)
    assert small.route == PARAMETER_SPACE and not small.stream
    # SmolLM2-135M, top 10, a 4 GiB budget: G's basis (23 x P float64, 24.7 GB) cannot be held, nor the directions
    smol = plan_curvature(134_515_008, 10, ("gauss_newton",), memory_budget_mb=4096)
    assert smol.route == FUNCTION_SPACE and smol.stream
    with pytest.raises(DeltalensError, match="--operators hessian"):
        plan_curvature(134_515_008, 10, ("hessian",), memory_budget_mb=4096)
    with pytest.raises(DeltalensError, match="output folder"):
        plan_curvature(134_515_008, 10, ("gauss_newton",), memory_budget_mb=4096, streamable=False)


def test_rotation_is_within_the_davis_kahan_bound(toy):
    """Base → perturbed model: the measured rotation of G's and H's top-r subspaces stays under
    the bound from ‖A1 V0 − V0 Λ0‖_F and the gap (plus the tuned run's own error bound); the bound
    itself is checked against explicit matrices."""
    model, batch, ref0 = toy
    tuned = TinyLM()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    b0, _ = curvature_block(model, batch, top=R, tol=1e-10, operators=("hessian", "gauss_newton"))
    b1, products1 = curvature_block(tuned, batch, top=R, tol=1e-10, operators=("hessian", "gauss_newton"))
    delta = torch.cat([(p1 - p0).reshape(-1) for p0, p1 in zip(model.parameters(), tuned.parameters())]).detach()
    pair = pair_comparison(b0, b1, products1, delta.double())
    ref1 = Explicit(tuned, batch)
    for kind, a1 in (("gauss_newton", ref1.gauss_newton), ("hessian", ref1.hessian)):
        row = pair[kind]
        bound = row["curvature_change"]["rotation_bound_deg"]
        assert max(row["angles_deg"]) <= bound + b1.spectra[kind].error_bound_deg + 1e-6
        s0 = b0.spectra[kind]
        explicit = torch.linalg.matrix_norm(a1 @ s0.vectors - s0.vectors * s0.values)
        w = torch.linalg.eigvalsh(a1)
        next_abs = float(w.abs().sort(descending=True).values[R])
        expected = np.degrees(np.arcsin(min(1.0, float(explicit) / (abs(float(s0.values[-1])) - next_abs))))
        assert bound == pytest.approx(expected, rel=1e-6)


@needs_gguf
def test_streamed_angles_on_real_smollm2_subspaces(tmp_path):
    """Real weights: the top-8 right singular subspaces of two SmolLM2 matrices (blk.3 q and blk.29
    attn_output, 576 columns, float64 SVD) and of one matrix against itself in another basis
    (identical span: every angle 0), one side on disk read in blocks of 100 rows, against
    principal_angles (sine-based SVD) on the same matrices."""
    smol = gguf_matrices(("blk.3.attn_q.weight", "blk.29.attn_output.weight"))
    frames = [torch.linalg.svd(w.double(), full_matrices=False)[2][:8].T for w in smol.values()]
    mix = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    for a, b in ((frames[0], frames[1]), (frames[0], frames[0] @ mix)):
        column_file = ColumnFile(tmp_path / f"{len(list(tmp_path.iterdir()))}.npy", 576, 8)
        for j in range(8):
            column_file.append(a[:, j])
        got = streamed_angles_deg(column_file, b, block=100)
        np.testing.assert_allclose(got, torch.rad2deg(principal_angles(a, b)).tolist(), rtol=1e-8, atol=1e-7)
    assert max(got) < 1e-6  # the identical span


def test_rotation_bound_at_a_zero_gap_and_for_an_unchanged_operator():
    """Davis–Kahan's rotation bound where it breaks and where it is tight, on explicit matrices:
    λ_r(A0) = λ_{r+1}(A1) (no separation) gives 90°; A1 = A0 with exact eigenvectors gives 0°; a
    planted perturbation gives asin(‖E V0‖_F / gap)."""
    from deltalens.curvature.compare import rotation_bound_deg

    q = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64))[0]
    values = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    a0 = q @ torch.diag(values) @ q.T
    v0, l0 = q[:, :2], values[:2]
    assert rotation_bound_deg(v0, l0, a0 @ v0, next_value1=4.0) == 90.0  # |λ2| − |λ3'| = 0
    assert rotation_bound_deg(v0, l0, a0 @ v0, next_value1=None) == 90.0
    assert rotation_bound_deg(v0, l0, a0 @ v0, next_value1=3.0) < 1e-6
    e = 0.01 * torch.randn(6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a1 = a0 + (e + e.T) / 2
    expected = np.degrees(np.arcsin(float(torch.linalg.matrix_norm(a1 @ v0 - v0 * l0)) / (4.0 - 3.0)))
    got = rotation_bound_deg(v0, l0, a1 @ v0, next_value1=3.0)
    assert got == pytest.approx(expected, rel=1e-12)
    true = torch.linalg.eigh(a1)[1][:, -2:]  # A1's top-2 eigenspace: the bound must hold
    assert float(torch.rad2deg(principal_angles(v0, true)).max()) <= got
