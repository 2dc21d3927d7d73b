"""Spectral diff (SPEC §4–§5) against independent references: scipy/numpy float64 and planted answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import deltalens.linalg as linalg
import deltalens.weights.selection as selection
from deltalens.errors import DeltalensError
from deltalens.weights.spectral import default_k, resolve_k, spectral_metrics

MODES = [pytest.param(False, id="fast"), pytest.param(True, id="exact")]
# planted tests also run the randomized top-q route of fast mode, forced on small matrices
# (full_max=0) with q = k (overlap_k=k) so the subspace (q + 16 columns) is smaller than min(m, n)
ROUTES = MODES + [pytest.param("topq", id="topq")]


def _metrics(route, w0, w1, **kw):
    """spectral_metrics in one of the ROUTES (False = fast default, True = exact, "topq")."""
    if route == "topq":
        kw.setdefault("overlap_k", max(kw.get("top_k", (1,))))
        return spectral_metrics(w0, w1, full_max=0, max_iter=40, **kw)
    return spectral_metrics(w0, w1, exact=route, **kw)


def _orthonormal(rng, m, k):
    q, _ = np.linalg.qr(rng.standard_normal((m, k)))
    return q


def _planted(m, n, s, seed=0):
    """W = U diag(s) Vᵀ with U m×n... (reduced), in float64."""
    rng = np.random.default_rng(seed)
    r = min(m, n)
    u = _orthonormal(rng, m, r)
    v = _orthonormal(rng, n, r)
    return u, np.asarray(s, dtype=np.float64), v


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a)).float()


def _np_svd(w):
    u, s, vh = np.linalg.svd(w.numpy().astype(np.float64), full_matrices=False)
    return u, s, vh.T


# ----------------------------------------------------------------------------- k


def test_resolve_k_rules():
    assert default_k(1536, 8960) == 16
    assert default_k(3, 5) == 1
    assert resolve_k(4, 100, 50) == 4
    assert resolve_k(4.0, 100, 50) == 4
    assert resolve_k(0.1, 100, 50) == 5
    assert resolve_k(0.011, 100, 50) == 1
    assert resolve_k(1.0, 100, 50) == 50
    assert resolve_k(500, 100, 50) == 50  # capped at min(m, n)
    for bad in (0, -1, 1.5, 0.0, True, "4"):
        with pytest.raises(DeltalensError):
            resolve_k(bad, 100, 50)


# ----------------------------------------------------------------------------- planted rotations


@pytest.mark.parametrize("exact", ROUTES)
@pytest.mark.parametrize("transpose", [False, True], ids=["tall", "wide"])
def test_planted_rotations_match_scipy(exact, transpose):
    """Rotate top-k left vectors u_i toward u_{k+i} by 0.1°–60°; right vectors by other angles."""
    m, n, k = 90, 60, 4
    s = np.concatenate([[10.0, 9.0, 8.0, 7.0], np.linspace(2.0, 0.5, n - k)])
    u, s, v = _planted(m, n, s, seed=1)
    left = [0.1, 1.0, 15.0, 60.0]
    right = [0.5, 3.0, 30.0, 0.0]

    def rotate(basis, angles):
        out = basis.copy()
        for i, deg in enumerate(angles):
            th = math.radians(deg)
            a, b = basis[:, i], basis[:, k + i]
            out[:, i], out[:, k + i] = a * math.cos(th) + b * math.sin(th), -a * math.sin(th) + b * math.cos(th)
        return out

    w0 = u @ np.diag(s) @ v.T
    w1 = rotate(u, left) @ np.diag(s) @ rotate(v, right).T
    t0, t1 = _t(w0), _t(w1)
    if transpose:
        t0, t1 = t0.T.contiguous(), t1.T.contiguous()
    r = _metrics(exact, t0, t1, top_k=(k,))["by_k"][str(k)]
    # reference: numpy float64 SVD of the float32 inputs, then scipy's subspace angles
    u0, _, v0 = _np_svd(t0)
    u1, _, v1 = _np_svd(t1)
    ref_left = np.sort(np.rad2deg(scipy.linalg.subspace_angles(u0[:, :k], u1[:, :k])))
    ref_right = np.sort(np.rad2deg(scipy.linalg.subspace_angles(v0[:, :k], v1[:, :k])))
    if transpose:  # the transpose swaps the sides
        left, right = right, left
    np.testing.assert_allclose(r["angles_left_deg"], ref_left, atol=0.01)
    np.testing.assert_allclose(r["angles_right_deg"], ref_right, atol=0.01)
    np.testing.assert_allclose(r["angles_left_deg"], np.sort(left), atol=0.01)  # the planted truth
    np.testing.assert_allclose(r["angles_right_deg"], np.sort(right), atol=0.01)
    assert r["angle_max_left_deg"] == pytest.approx(max(left), abs=0.01)
    assert r["angle_mean_right_deg"] == pytest.approx(np.mean(right), abs=0.01)
    # gap and Wedin flag against numpy float64
    s_ref = np.linalg.svd(t0.numpy().astype(np.float64), compute_uv=False)
    d2 = np.linalg.norm(t1.numpy().astype(np.float64) - t0.numpy().astype(np.float64), 2)
    topq = exact == "topq"  # Ritz values (converged to ~1e-8) and a 2-step power iteration on Δ
    assert r["gap_k"] == pytest.approx(s_ref[k - 1] - s_ref[k], rel=1e-6 if topq else 1e-9)
    assert r["wedin_bound"] == pytest.approx(d2 / (s_ref[k - 1] - s_ref[k]), rel=1e-3 if topq else 1e-6)
    assert r["gap_limited"] == (d2 / (s_ref[k - 1] - s_ref[k]) > 1)
    assert ("angle_error_deg" in r) == topq
    if topq:
        assert r["angle_error_deg"] < 0.1


@pytest.mark.parametrize("exact", ROUTES)
@pytest.mark.parametrize("deg", [0.1, 0.5, 2.0, 10.0, 60.0])
def test_small_rotation_not_gap_limited(exact, deg):
    """One planted rotation at a time, with a gap wide enough that the Wedin bound stays < 1."""
    m, n, k = 70, 40, 3
    s = np.concatenate([[100.0, 90.0, 80.0], np.linspace(1.0, 0.1, n - k)])
    u, s, v = _planted(m, n, s, seed=2)
    th = math.radians(deg)
    u1 = u.copy()
    u1[:, k - 1], u1[:, k] = u[:, k - 1] * math.cos(th) + u[:, k] * math.sin(th), -u[:, k - 1] * math.sin(th) + u[:, k] * math.cos(th)
    t0, t1 = _t(u @ np.diag(s) @ v.T), _t(u1 @ np.diag(s) @ v.T)
    r = _metrics(exact, t0, t1, top_k=(k,))["by_k"][str(k)]
    u0r, _, _ = _np_svd(t0)
    u1r, _, _ = _np_svd(t1)
    ref = np.sort(np.rad2deg(scipy.linalg.subspace_angles(u0r[:, :k], u1r[:, :k])))
    if deg < 45:
        assert not r["gap_limited"]
    np.testing.assert_allclose(r["angles_left_deg"], ref, atol=0.01)
    assert r["angle_max_left_deg"] == pytest.approx(deg, abs=0.01)
    assert r["angle_max_right_deg"] < 0.01


# ----------------------------------------------------------------------------- fast vs exact


def _random_pair(m, n, seed, scale=0.05, low_rank=3):
    g = torch.Generator().manual_seed(seed)
    decay = torch.linspace(1.0, 0.05, min(m, n)) ** 2
    u, _ = torch.linalg.qr(torch.randn(m, min(m, n), generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, min(m, n), generator=g))
    w0 = (u * (10 * decay)) @ v.T + 0.01 * torch.randn(m, n, generator=g)
    d = scale * torch.randn(m, n, generator=g) / math.sqrt(n)
    d += torch.randn(m, low_rank, generator=g) @ torch.randn(low_rank, n, generator=g) * scale
    return w0.float(), (w0 + d).float()


@pytest.mark.parametrize("shape,seed", [((120, 80), 0), ((64, 150), 1), ((200, 200), 2)])
def test_fast_agrees_with_exact_random(shape, seed, monkeypatch):
    monkeypatch.setattr(linalg, "_CHUNK_ELEMENTS", 997)  # force many row chunks in the fast path
    w0, w1 = _random_pair(*shape, seed=seed)
    fast = spectral_metrics(w0, w1, top_k=(2, 8, 0.1))
    ex = spectral_metrics(w0, w1, top_k=(2, 8, 0.1), exact=True)
    assert fast["by_k"].keys() == ex["by_k"].keys()
    for k, f in fast["by_k"].items():
        e = ex["by_k"][k]
        np.testing.assert_allclose(f["angles_left_deg"], e["angles_left_deg"], atol=0.1)
        np.testing.assert_allclose(f["angles_right_deg"], e["angles_right_deg"], atol=0.1)
        assert f["gap_k"] == pytest.approx(e["gap_k"], rel=1e-6, abs=1e-9)
        assert f["gap_limited"] == e["gap_limited"]
        for blk in ("PP", "PQ", "QP", "QQ"):
            assert f["block_shares"][blk]["share"] == pytest.approx(e["block_shares"][blk]["share"], abs=1e-6)
    assert fast["nss"] == pytest.approx(ex["nss"], rel=0.01)
    assert fast["rescale_share"] == pytest.approx(ex["rescale_share"], abs=0.01)
    assert fast["principal_overlap"] == pytest.approx(ex["principal_overlap"], abs=0.01)
    assert fast["low_overlap"] == ex["low_overlap"]
    assert fast["method"]["mode"] == "fast" and ex["method"]["mode"] == "exact"


@pytest.mark.parametrize("shape,seed,scale", [((400, 200), 20, 0.05), ((180, 360), 21, 1e-4)])
def test_randomized_fast_agrees_with_exact(shape, seed, scale, monkeypatch):
    """Default fast mode on matrices above FULL_FRAME_MAX (lowered here) runs the randomized top-q
    route with its default iterations. Like against like: angles, gaps, block shares and overlaps
    against --exact; NSS and rescale_share against their top-q definitions from numpy's SVD; the
    upper bound against the exact full-frame rescale_share."""
    import deltalens.weights.spectral as spectral

    monkeypatch.setattr(spectral, "FULL_FRAME_MAX", 100)
    monkeypatch.setattr(linalg, "_CHUNK_ELEMENTS", 5000)  # several row chunks per pass
    w0, w1 = _random_pair(*shape, seed=seed, scale=scale)
    ks = (2, 8, 0.05)
    fast = spectral_metrics(w0, w1, top_k=ks)
    ex = spectral_metrics(w0, w1, top_k=ks, exact=True)
    given = spectral_metrics(w0, w1, top_k=ks, delta=w1 - w0)  # Δ read, not formed chunk by chunk: same numbers
    assert given["nss"] == pytest.approx(fast["nss"], rel=1e-6)
    assert given["rescale_share"] == pytest.approx(fast["rescale_share"], rel=1e-5)
    np.testing.assert_allclose(given["by_k"]["8"]["angles_left_deg"], fast["by_k"]["8"]["angles_left_deg"], atol=1e-6)
    with pytest.raises(DeltalensError, match="delta must have the pair's shape"):
        spectral_metrics(w0, w1, delta=(w1 - w0).T)
    q = 64
    assert fast["method"]["route"] == f"top-{q}" and ex["method"]["route"] == "full"
    assert fast["nss_scope"] == fast["rescale_scope"] == f"top-{q}"
    assert any(not e["gap_limited"] for e in ex["by_k"].values()) == (scale < 1e-3)
    for k, f in fast["by_k"].items():
        e = ex["by_k"][k]
        if f["unresolved"]:  # only an ill-posed k may stay unresolved (a defined one escalates)
            assert e["gap_limited"] and f["angle_error_deg"] > 0.01
            continue
        np.testing.assert_allclose(f["angles_left_deg"], e["angles_left_deg"], atol=0.01)
        np.testing.assert_allclose(f["angles_right_deg"], e["angles_right_deg"], atol=0.01)
        err = np.abs(np.subtract(f["angles_left_deg"], e["angles_left_deg"])).max()
        assert err <= f["angle_error_deg"] + 1e-9  # the error estimate covers the actual error
        assert f["gap_k"] == pytest.approx(e["gap_k"], rel=1e-4)
        assert f["gap_limited"] == e["gap_limited"]
        assert f["wedin_bound"] == pytest.approx(e["wedin_bound"], rel=1e-2)
        for blk in ("PP", "PQ", "QP", "QQ"):
            assert f["block_shares"][blk]["share"] == pytest.approx(e["block_shares"][blk]["share"], abs=1e-5)
    m, n = shape
    u, s0, v = _np_svd(w0)
    s1 = np.linalg.svd(w1.numpy().astype(np.float64), compute_uv=False)
    d = w1.numpy().astype(np.float64) - w0.numpy().astype(np.float64)
    nss_top = np.linalg.norm(s1[:q] - s0[:q]) / np.linalg.norm(s0[:q])
    diag = np.einsum("mi,mn,ni->i", u, d, v)
    assert fast["nss"] == pytest.approx(nss_top, rel=0.01)
    assert fast["rescale_share"] == pytest.approx(np.sum(diag[:q] ** 2) / np.sum(d**2), abs=0.01, rel=0.01)
    assert fast["rescale_baseline"] == pytest.approx(q / (m * n))
    assert ex["rescale_share"] <= fast["rescale_share_upper"] + 1e-9
    assert fast["principal_overlap"] == pytest.approx(ex["principal_overlap"], abs=0.01)
    assert fast["low_overlap"] == ex["low_overlap"]


def test_rank_group_top_route(monkeypatch):
    """Fast §3 on a large matrix: σ1 from the power iteration, stable rank and rank-1 share against
    numpy; the full-spectrum ranks are null, and the spectral group reuses σ1."""
    import deltalens.weights.spectral as spectral
    from deltalens.weights.groups import MetricContext, compute_rank, compute_spectral
    from deltalens.weights.options import make_options

    monkeypatch.setattr(spectral, "FULL_FRAME_MAX", 50)
    w0, w1 = _random_pair(160, 90, seed=22)
    ctx = MetricContext("t", "q", 0, w0, w1, w0, w1, make_options())
    out = compute_rank(w0, w1, ctx)
    d = w1.numpy().astype(np.float64) - w0.numpy().astype(np.float64)
    sig = np.linalg.svd(d, compute_uv=False)
    assert out["delta_spectral"] == pytest.approx(sig[0], rel=1e-4)
    assert out["stable_rank"] == pytest.approx(np.sum(sig**2) / sig[0] ** 2, rel=1e-3)
    assert out["rank1_share"] == pytest.approx(sig[0] ** 2 / np.sum(sig**2), rel=1e-3)
    for name in ("numerical_rank", "numerical_rank_fraction", "effective_rank", "energy_rank_90", "energy_rank_99"):
        assert out[name] is None
    assert out["rank_method"].startswith("power-top-float32")
    # through the streaming pass's ‖Δ‖_F (as the driver does): the same measures, no pass of its own
    from deltalens.weights.sparsity import stream_pair_stats

    streamed = MetricContext.after_stream(stream_pair_stats(w0, w1), "t", "q", 0, w0, w1, w0, w1, make_options())
    assert streamed.streamed_fro2 == pytest.approx(np.sum(sig**2), rel=1e-6) == streamed.delta_fro2
    again = compute_rank(w0, w1, streamed)
    assert again["stable_rank"] == pytest.approx(out["stable_rank"], rel=1e-6)
    # above FLOAT32_COPY_MAX (an embedding): stored bf16 operands, Δ formed chunk by chunk, no Δ in memory
    import deltalens.weights.groups as groups_mod

    monkeypatch.setattr(groups_mod, "FLOAT32_COPY_MAX", 100)
    monkeypatch.setattr(linalg, "_CHUNK_ELEMENTS", 900)
    b0, b1 = w0.bfloat16(), w1.bfloat16()
    big = MetricContext("t", "q", 0, b0, b1, b0, b1, make_options())
    assert big.delta_in_memory is None
    sig_b = np.linalg.svd(b1.double().numpy() - b0.double().numpy(), compute_uv=False)
    chunked = compute_rank(b0, b1, big)
    assert chunked["stable_rank"] == pytest.approx(np.sum(sig_b**2) / sig_b[0] ** 2, rel=1e-3)
    assert chunked["delta_spectral"] == pytest.approx(sig_b[0], rel=1e-4)
    row = compute_spectral(w0, w1, ctx)
    assert "given by the caller" in row["method"]["delta_spectral"]
    assert row["by_k"]["1"]["wedin_bound"] == pytest.approx(out["delta_spectral"] / row["by_k"]["1"]["gap_k"])


def test_exact_rescale_share_matches_numpy_full_frame():
    w0, w1 = _random_pair(50, 30, seed=3)
    u, _, v = _np_svd(w0)
    d = w1.numpy().astype(np.float64) - w0.numpy().astype(np.float64)
    ref = np.sum(np.einsum("mi,mn,ni->i", u, d, v) ** 2) / np.sum(d**2)
    for exact in (False, True):
        r = spectral_metrics(w0, w1, exact=exact)
        assert r["rescale_share"] == pytest.approx(ref, abs=1e-6)
        assert r["rescale_baseline"] == pytest.approx(30 / (50 * 30))
    s0 = np.linalg.svd(w0.numpy().astype(np.float64), compute_uv=False)
    s1 = np.linalg.svd(w1.numpy().astype(np.float64), compute_uv=False)
    assert spectral_metrics(w0, w1, groups=("spectral",))["nss"] == pytest.approx(
        np.linalg.norm(s1 - s0) / np.linalg.norm(s0), rel=1e-6
    )


# ----------------------------------------------------------------------------- planted frame answers


@pytest.mark.parametrize("exact", ROUTES)
def test_pure_rescale(exact):
    m, n = 60, 40
    u, s, v = _planted(m, n, np.linspace(5, 1, n), seed=4)
    scale = np.linspace(1.3, 0.7, n)
    w0 = u @ np.diag(s) @ v.T
    w1 = u @ np.diag(s * scale) @ v.T
    r = _metrics(exact, _t(w0), _t(w1), top_k=(3, 10))
    for entry in r["by_k"].values():
        assert entry["angle_max_left_deg"] < 1e-3 and entry["angle_max_right_deg"] < 1e-3
    s1 = s * scale
    if exact == "topq":  # only the top q = 10 singular values and diagonal entries exist
        q = 10
        assert r["nss_scope"] == r["rescale_scope"] == "top-10"
        d = s * (scale - 1)  # D = UᵀΔV = diag(s(c − 1)) in W0's order
        assert r["rescale_share"] == pytest.approx(np.sum(d[:q] ** 2) / np.sum(d**2), abs=1e-5)
        assert r["rescale_baseline"] == pytest.approx(q / (m * n))
        assert r["rescale_share_upper"] == pytest.approx(1.0, abs=1e-5)  # the rest is diagonal, in QQ
        top1 = np.sort(s1)[::-1][:q]
        assert r["nss"] == pytest.approx(np.linalg.norm(top1 - s[:q]) / np.linalg.norm(s[:q]), rel=1e-4)
    else:
        assert r["nss_scope"] == r["rescale_scope"] == "full"
        assert r["rescale_share"] == pytest.approx(1.0, abs=1e-5)
        assert r["rescale_share_upper"] == r["rescale_share"]
        assert r["nss"] == pytest.approx(np.linalg.norm(np.sort(s1)[::-1] - s) / np.linalg.norm(s), rel=1e-4)


@pytest.mark.parametrize("exact", ROUTES)
@pytest.mark.parametrize("deg", [1.0, 20.0, 90.0])
def test_rotating_one_left_vector(exact, deg):
    """u_j → cos θ u_j + sin θ z with z ⟂ range(W0): one left angle θ, no right angle, NSS 0,
    rescale_share (1 − cos θ)/2."""
    m, n, k, j = 50, 20, 4, 1
    rng = np.random.default_rng(5)
    q = _orthonormal(rng, m, n + 1)
    u, z = q[:, :n], q[:, n]
    v = _orthonormal(rng, n, n)
    s = np.linspace(6, 1, n)
    th = math.radians(deg)
    u1 = u.copy()
    u1[:, j] = math.cos(th) * u[:, j] + math.sin(th) * z
    t0, t1 = _t(u @ np.diag(s) @ v.T), _t(u1 @ np.diag(s) @ v.T)
    r = _metrics(exact, t0, t1, top_k=(k,))  # top-q route: j < q, so the one diagonal entry is in scope
    e = r["by_k"][str(k)]
    assert e["angles_left_deg"][-1] == pytest.approx(deg, abs=0.01)
    assert max(e["angles_left_deg"][:-1]) < 0.01
    assert e["angle_max_right_deg"] < 0.01
    assert r["nss"] == pytest.approx(0.0, abs=1e-6)
    assert r["rescale_share"] == pytest.approx((1 - math.cos(th)) / 2, abs=1e-4)


@pytest.mark.parametrize("exact", ROUTES)
def test_degenerate_spectrum_is_gap_limited(exact):
    m, n, k = 40, 30, 3
    s = np.array([5.0, 4.0, 3.0, 3.0] + list(np.linspace(2, 1, n - 4)))
    u, s, v = _planted(m, n, s, seed=6)
    w0 = u @ np.diag(s) @ v.T
    w1 = w0 + 1e-3 * np.random.default_rng(7).standard_normal((m, n))
    r = _metrics(exact, _t(w0), _t(w1), top_k=(2, k))
    assert r["by_k"][str(k)]["gap_limited"] is True
    # Ritz values of a repeated σ stop once the iteration stalls (no gap to converge to)
    assert r["by_k"][str(k)]["gap_k"] == pytest.approx(0.0, abs=0.02 if exact == "topq" else 1e-5)
    assert r["by_k"]["2"]["gap_limited"] is False


@pytest.mark.parametrize("exact", ROUTES)
@pytest.mark.parametrize("transpose", [False, True], ids=["tall", "wide"])
def test_block_shares_match_numpy(exact, transpose):
    w0, w1 = _random_pair(70, 45, seed=8)
    if transpose:
        w0, w1 = w0.T.contiguous(), w1.T.contiguous()
    m, n = w0.shape
    k = 5
    u, _, v = _np_svd(w0)
    d = w1.numpy().astype(np.float64) - w0.numpy().astype(np.float64)
    pu, pv = u[:, :k] @ u[:, :k].T, v[:, :k] @ v[:, :k].T
    qu, qv = np.eye(m) - pu, np.eye(n) - pv
    total = np.sum(d**2)
    ref = {
        "PP": np.sum((pu @ d @ pv) ** 2) / total,
        "PQ": np.sum((pu @ d @ qv) ** 2) / total,
        "QP": np.sum((qu @ d @ pv) ** 2) / total,
        "QQ": np.sum((qu @ d @ qv) ** 2) / total,
    }
    base = {"PP": k * k, "PQ": k * (n - k), "QP": (m - k) * k, "QQ": (m - k) * (n - k)}
    got = _metrics(exact, w0, w1, top_k=(k,))["by_k"][str(k)]["block_shares"]
    assert sum(b["share"] for b in got.values()) == pytest.approx(1.0, abs=1e-9)
    for key in ref:
        assert got[key]["share"] == pytest.approx(ref[key], abs=1e-6 if exact == "topq" else 1e-7)  # float32 Ritz
        assert got[key]["baseline"] == pytest.approx(base[key] / (m * n))


# ----------------------------------------------------------------------------- overlaps


def _overlap_reference(w0, mask, k, alpha):
    w = w0.numpy().astype(np.float64)
    u, s, vh = np.linalg.svd(w, full_matrices=False)
    recon = np.abs((u[:, :k] * s[:k]) @ vh[:k]).ravel()
    count = math.ceil(alpha * w.size)
    princ = np.zeros(w.size, bool)
    princ[np.argsort(-recon, kind="stable")[:count]] = True
    low = np.zeros(w.size, bool)
    low[np.argsort(np.abs(w).ravel(), kind="stable")[:count]] = True
    mflat = mask.numpy().ravel()
    return princ, low, (princ & mflat).sum() / mflat.sum(), (low & mflat).sum() / mflat.sum()


SELECT_PATHS = ["one-chunk", "bracket", "radix"]
SAMPLE_PART = 16  # off the defaults, the bracket's sample is every 16th row


def _select_path(monkeypatch, path, chunk_elements):
    """Steer the overlap selection. "one-chunk": the defaults (a small matrix is one chunk, and
    the sample is all of it). Otherwise ``chunk_elements`` per chunk, a strided sample of
    1/SAMPLE_PART of the rows, candidates capped at 1/8 of the entries (no floor), and
    "bracket": as is; "radix": no room for candidates, every selection falls back to the radix
    select; "torch-ops": as "bracket" with torch's elementwise ops instead of numpy's (the GPU path)."""
    if path == "one-chunk":
        return
    monkeypatch.setattr(linalg, "_CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(selection, "SELECT_SAMPLE", (SAMPLE_PART, 1, 1 << 21))
    monkeypatch.setattr(selection, "SELECT_CANDIDATES", (8, 1, 0 if path == "radix" else 1 << 24))
    if path == "torch-ops":
        monkeypatch.setattr(selection, "_on_host", lambda t: False)


@pytest.mark.parametrize("path", SELECT_PATHS)
@pytest.mark.parametrize("exact", MODES)
def test_overlaps_against_planted_masks(exact, path, monkeypatch):
    _select_path(monkeypatch, path, 1500)
    w0, w1 = _random_pair(90, 70, seed=9)
    k, alpha = 6, 0.05
    princ, low, _, _ = _overlap_reference(w0, torch.ones(90, 70, dtype=torch.bool), k, alpha)
    rng = np.random.default_rng(10)
    # mask = the principal set plus random other entries: principal_overlap = |princ| / |mask|
    planted = princ | (rng.random(princ.size) < 0.2)
    mask = torch.from_numpy(planted.reshape(90, 70))
    r = spectral_metrics(w0, w1, changed=mask, exact=exact, overlap_k=k, overlap_alpha=alpha)
    assert r["principal_overlap"] == pytest.approx(princ.sum() / planted.sum(), abs=1.5 / planted.sum())
    assert r["low_overlap"] == pytest.approx((low & planted).sum() / planted.sum(), abs=1e-12)
    assert r["overlap_baseline"] == alpha
    # a random mask sits near the baseline, and exactly on the numpy reference
    rand = torch.from_numpy(rng.random((90, 70)) < 0.3)
    _, _, ref_p, ref_l = _overlap_reference(w0, rand, k, alpha)
    r = spectral_metrics(w0, w1, changed=rand, exact=exact, overlap_k=k, overlap_alpha=alpha)
    assert r["principal_overlap"] == pytest.approx(ref_p, abs=1.5 / int(rand.sum()))
    assert r["low_overlap"] == pytest.approx(ref_l, abs=1e-12)
    # the low set of a wide matrix (transposed internally) is the same set
    rt = spectral_metrics(w0.T.contiguous(), w1.T.contiguous(), changed=rand.T.contiguous(), overlap_k=k, overlap_alpha=alpha)
    assert rt["low_overlap"] == pytest.approx(ref_l, abs=1e-12)


def test_default_mask_is_bitwise_and_empty_update():
    w0, w1 = _random_pair(30, 20, seed=11)
    w1 = w1.clone()
    w1[:10] = w0[:10]
    r = spectral_metrics(w0, w1, overlap_k=4)
    mask = (w0 != w1)
    _, _, ref_p, ref_l = _overlap_reference(w0, mask, 4, 0.05)
    assert r["principal_overlap"] == pytest.approx(ref_p, abs=1.5 / int(mask.sum()))
    assert r["low_overlap"] == pytest.approx(ref_l)
    assert "bitwise" in r["method"]["mask"]
    same = spectral_metrics(w0, w0.clone())
    assert same["rescale_share"] is None and same["principal_overlap"] is None
    assert same["nss"] == 0.0
    assert all(b["share"] is None for b in same["by_k"]["1"]["block_shares"].values())
    assert same["by_k"]["1"]["angle_max_left_deg"] < 1e-6


def test_groups_and_bad_input():
    w0, w1 = _random_pair(30, 20, seed=12)
    only_spec = spectral_metrics(w0, w1, groups=("spectral",))
    assert "rescale_share" not in only_spec and "block_shares" not in only_spec["by_k"]["1"]
    only_frame = spectral_metrics(w0, w1, groups=("frame",))
    assert "nss" not in only_frame and "angles_left_deg" not in only_frame["by_k"]["1"]
    with pytest.raises(DeltalensError, match="shapes differ"):
        spectral_metrics(w0, w1[:, :10])
    with pytest.raises(DeltalensError, match="2-D"):
        spectral_metrics(w0[0], w1[0])
    bad = w1.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(DeltalensError, match="NaN"):
        spectral_metrics(w0, bad)
    with pytest.raises(DeltalensError, match="group"):
        spectral_metrics(w0, w1, groups=("rank",))
    with pytest.raises(DeltalensError, match="mask"):
        spectral_metrics(w0, w1, changed=torch.ones(3, 3, dtype=torch.bool))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    w0, w1 = _random_pair(300, 200, seed=13)
    cpu = spectral_metrics(w0, w1, top_k=(4,))
    gpu = spectral_metrics(w0, w1, top_k=(4,), device="cuda")
    np.testing.assert_allclose(gpu["by_k"]["4"]["angles_left_deg"], cpu["by_k"]["4"]["angles_left_deg"], atol=1e-3)
    assert gpu["rescale_share"] == pytest.approx(cpu["rescale_share"], abs=1e-6)
    assert gpu["nss"] == pytest.approx(cpu["nss"], rel=1e-6)
    assert gpu["principal_overlap"] == pytest.approx(cpu["principal_overlap"], abs=0.01)


@pytest.mark.parametrize("path", SELECT_PATHS)
def test_overlap_with_heavy_ties_matches_stable_sort(path, monkeypatch):
    """bf16-valued weights tie a lot: the boundary of the low set falls inside a run of equal
    values, and ties are taken in position order, like numpy's stable argsort."""
    _select_path(monkeypatch, path, 700)
    g = torch.Generator().manual_seed(14)
    w0 = (0.02 * torch.randn(120, 50, generator=g)).bfloat16().float()
    w0 = torch.round(w0 * 300) / 300  # few distinct values: long runs of ties
    w1 = w0 + 0.001 * torch.randn(120, 50, generator=g)
    mask = torch.rand(120, 50, generator=g) < 0.4
    r = spectral_metrics(w0, w1, changed=mask, overlap_k=5, overlap_alpha=0.07)
    flat = np.abs(w0.numpy()).ravel()
    count = math.ceil(0.07 * flat.size)
    low = np.zeros(flat.size, bool)
    low[np.argsort(flat, kind="stable")[:count]] = True
    assert np.sum(flat == np.sort(flat)[count - 1]) > 10  # the boundary is really tied
    m = mask.numpy().ravel()
    assert r["low_overlap"] == pytest.approx((low & m).sum() / m.sum(), abs=1e-12)


def _stable_hits(x, mask, count, largest):
    """Reference |S ∩ M|: S = the first ``count`` of numpy's stable argsort (descending for the
    largest: argsort of −x, stable, keeps position order among equal values)."""
    order = np.argsort(-x if largest else x, kind="stable")[:count]
    return int(mask[order].sum())


def _select_data(kind, m, n, rng):
    x = np.abs(0.02 * rng.standard_normal((m, n))).astype(np.float32)
    if kind == "bf16":  # few distinct values near the boundary: long runs of ties
        x = torch.from_numpy(x).bfloat16().float().numpy()
        x = np.round(x * 3000) / 3000
    elif kind == "zeros":  # a mass of exact zeros, more than the low set: the boundary is 0
        x[rng.random((m, n)) < 0.3] = 0.0
    elif kind == "adversarial":  # the strided sample rows are the largest: the sample misplaces the bracket
        r = math.ceil(m / SAMPLE_PART)
        x[(2 * np.arange(r) + 1) * m // (2 * r)] += 1.0
    return x.astype(np.float32)


@pytest.mark.parametrize("path", SELECT_PATHS + ["torch-ops"])
@pytest.mark.parametrize("kind", ["random", "bf16", "zeros", "adversarial"])
def test_count_selected_matches_stable_sort(kind, path, monkeypatch):
    """The selection behind both overlaps against a numpy stable argsort, for count = 1, 5 %, and
    all entries, largest and smallest; and it takes the path it should: one pass when the sample's
    bracket holds the boundary, the radix select when it misses or holds too many values."""
    _select_path(monkeypatch, path, 8000)
    fallbacks = []
    radix = selection._count_selected_in_mask
    monkeypatch.setattr(selection, "_count_selected_in_mask", lambda *a: fallbacks.append(1) or radix(*a))
    rng = np.random.default_rng(["random", "bf16", "zeros", "adversarial"].index(kind))
    m, n = 400, 157
    x = _select_data(kind, m, n, rng)
    mask = rng.random((m, n)) < 0.5
    xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
    if kind == "zeros":
        assert np.sum(x == 0) > 0.05 * x.size
    if kind == "bf16":  # the 5 % boundaries really fall in runs of ties
        srt = np.sort(x.ravel())
        k5 = math.ceil(0.05 * x.size)
        assert np.sum(x == srt[k5 - 1]) > 10 and np.sum(x == srt[x.size - k5]) > 10
    for count in (1, math.ceil(0.05 * x.size), x.size):
        for largest in (True, False):
            fallbacks.clear()
            got = selection.count_selected(lambda i, out: out.copy_(xt[i]), mt, count, largest)
            assert got == _stable_hits(x.ravel(), mask.ravel(), count, largest), (count, largest)
            if path == "radix":
                assert fallbacks
            elif path in ("bracket", "torch-ops") and kind == "random":
                assert not fallbacks
            elif path in ("bracket", "torch-ops") and kind == "adversarial" and 1 < count < x.size:  # the sample lies
                assert fallbacks
            elif path in ("bracket", "torch-ops") and kind == "zeros" and 1 < count < x.size and not largest:  # 30 % ties
                assert fallbacks
    # the bracket itself: a sample of the rows brackets the true boundary of random data
    count = math.ceil(0.05 * x.size)
    if kind == "random":
        lo, hi = selection._selection_bracket(xt[::16], x.size, count, largest=True)
        assert lo <= np.sort(x.ravel())[x.size - count] <= hi


def test_count_selected_with_a_bracket_that_misses(monkeypatch):
    """A zero-width bracket (SELECT_Z = 0, a small sample) misses the boundary of random data
    most of the time; whatever the sample, the answer is exact (the radix select takes over)."""
    monkeypatch.setattr(selection, "SELECT_Z", 0.0)
    monkeypatch.setattr(selection, "SELECT_SAMPLE", (64, 1, 1 << 21))
    monkeypatch.setattr(linalg, "_CHUNK_ELEMENTS", 10000)
    calls = []
    radix = selection._count_selected_in_mask
    monkeypatch.setattr(selection, "_count_selected_in_mask", lambda *a: calls.append(1) or radix(*a))
    rng = np.random.default_rng(5)
    for trial in range(6):
        x = np.abs(rng.standard_normal((300, 101))).astype(np.float32)
        mask = rng.random(x.shape) < 0.5
        xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
        for largest in (True, False):
            count = int(rng.integers(1, x.size))
            got = selection.count_selected(lambda i, out: out.copy_(xt[i]), mt, count, largest)
            assert got == _stable_hits(x.ravel(), mask.ravel(), count, largest)
    assert calls  # the fallback did run


@pytest.mark.parametrize("scale", [1e-3, 1e-6])
def test_fast_keeps_precision_for_tiny_rl_like_updates(scale):
    """bf16 weights with a power-law spectrum and a sparse update of relative size 1e-3 … 1e-6:
    NSS and rescale_share are differences of nearly equal numbers; fast must still match exact."""
    g = torch.Generator().manual_seed(15)
    m, n = 160, 96
    u, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = torch.arange(1, n + 1, dtype=torch.float64) ** -0.7
    w0 = ((u * s) @ v.T).bfloat16().float()
    upd = scale * float(w0.abs().mean()) * torch.randn(m, n, generator=g) * (torch.rand(m, n, generator=g) < 0.3)
    w1 = w0 + upd
    fast = spectral_metrics(w0, w1, top_k=(4,))
    ex = spectral_metrics(w0, w1, top_k=(4,), exact=True)
    assert ex["nss"] > 0
    assert fast["nss"] == pytest.approx(ex["nss"], rel=1e-3)
    assert fast["rescale_share"] == pytest.approx(ex["rescale_share"], abs=1e-4)
    np.testing.assert_allclose(fast["by_k"]["4"]["angles_left_deg"], ex["by_k"]["4"]["angles_left_deg"], atol=1e-3)


def test_groups_give_the_same_rows_in_any_metric_order(monkeypatch):
    """What groups share (σ1(Δ), ‖Δ‖_F², the §4–§5 frame) is a context property computed once,
    so the rows of rank, spectral and frame do not depend on the order they run in."""
    import deltalens.weights.spectral as spectral
    from deltalens.weights.groups import METRIC_GROUPS, MetricContext
    from deltalens.weights.options import make_options

    monkeypatch.setattr(spectral, "FULL_FRAME_MAX", 50)
    w0, w1 = _random_pair(160, 90, seed=23)
    rows = []
    for order in (("rank", "spectral", "frame"), ("frame", "spectral", "rank")):
        ctx = MetricContext("t", "q", 0, w0, w1, w0, w1, make_options(metrics=list(order)))
        row = {}
        for name in order:
            row.update(METRIC_GROUPS[name].compute(w0, w1, ctx))
        rows.append(row)
    assert rows[0] == rows[1]
    assert rows[0]["delta_spectral"] == pytest.approx(np.linalg.svd(w1.double().numpy() - w0.double().numpy(),
                                                                    compute_uv=False)[0], rel=1e-4)
