"""Sparsity, size and rank metrics against planted answers and numpy float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deltalens.weights import rank as R
from deltalens.weights.sparsity import bf16_half_ulp, stream_pair_stats


def _bf16_bits_flip(w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    out = w.clone()
    bits = out.view(torch.int16).reshape(-1)
    bits[idx] ^= 1  # flip the lowest mantissa bit: changes exactly these elements
    return out


@pytest.mark.parametrize("kernel", ["auto", "torch"])
@pytest.mark.parametrize("chunk", [7, 1 << 18])
def test_bit_flips_of_known_count(chunk, kernel):
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(300, 70, generator=g).to(torch.bfloat16)
    idx = torch.randperm(w0.numel(), generator=g)[:1234]
    w1 = _bf16_bits_flip(w0, idx)
    s = stream_pair_stats(w0, w1, tols=(1e-5, 1e-2), chunk=chunk, kernel=kernel)
    assert s["unchanged_bitwise"] == (w0.numel() - 1234) / w0.numel()
    a, b = w0.double().numpy().ravel(), w1.double().numpy().ravel()
    d = np.abs(b - a)
    rel = (d <= 1e-3 * np.maximum(np.abs(a), np.abs(b))).mean()
    assert s["unchanged_relative"] == pytest.approx(rel, abs=0)
    assert s["unchanged_absolute"]["1e-05"] == pytest.approx((d <= 1e-5).mean(), abs=0)
    assert s["unchanged_absolute"]["0.01"] == pytest.approx((d <= 1e-2).mean(), abs=0)
    assert s["delta_fro"] == pytest.approx(np.sqrt((d ** 2).sum()), rel=1e-5)
    assert s["delta_rel"] == pytest.approx(np.sqrt((d ** 2).sum() / (a ** 2).sum()), rel=1e-5)
    assert s["delta_max_abs"] == pytest.approx(d.max(), rel=1e-7)
    assert s["nonfinite"] == 0


def test_bf16_relative_rule_equals_bitwise():
    """SPEC §2: in bf16, η = 1e-3 < 2⁻⁹, so |Δ| ≤ η·max(|w0|,|w1|) only when the bits agree."""
    g = torch.Generator().manual_seed(1)
    w0 = (torch.randn(200_000, generator=g) * torch.logspace(-6, 2, 200_000)).to(torch.bfloat16)
    for scale in (1e-4, 1e-3, 3e-3, 1e-2, 1e-1):
        noise = torch.randn(w0.shape, generator=g) * scale * w0.float().abs()
        mask = torch.rand(w0.shape, generator=g) < 0.5
        w1 = (w0.float() + noise * mask).to(torch.bfloat16)
        s = stream_pair_stats(w0, w1)
        if scale >= 1e-2:
            assert 0.5 < s["unchanged_bitwise"] < 0.9
        assert s["unchanged_relative"] == s["unchanged_bitwise"]


@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_signed_zero_and_nan_rules(kernel):
    w0 = torch.tensor([0.0, -0.0, float("nan"), 1.0, float("inf"), 2.0], dtype=torch.float32)
    w1 = torch.tensor([-0.0, -0.0, float("nan"), 1.0, float("inf"), float("nan")], dtype=torch.float32)
    s = stream_pair_stats(w0, w1, kernel=kernel)
    # bitwise: +0→−0 changed; −0→−0, NaN(same bits)→NaN, 1→1, inf→inf unchanged; 2→NaN changed
    assert s["unchanged_bitwise"] == pytest.approx(4 / 6)
    # relative/absolute: ±0 has |Δ| = 0 → unchanged; same-bit NaN/Inf unchanged; 2→NaN changed
    assert s["unchanged_relative"] == pytest.approx(5 / 6)
    assert s["unchanged_absolute"]["1e-05"] == pytest.approx(5 / 6)
    assert s["nonfinite"] == 3  # positions 2, 4, 5
    assert s["delta_fro"] == 0.0 and s["delta_max_abs"] == 0.0  # over finite entries only


@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_bf16_half_ulp_and_visibility(kernel):
    w0 = torch.tensor([1.0, 1.5, 3.0, -0.25, 1e-3], dtype=torch.float32)
    # bf16 has 8 significand bits: ulp(x) = 2^(⌊log2|x|⌋ − 7)
    expect = [2.0 ** (math.floor(math.log2(abs(x))) - 8) for x in w0.tolist()]
    assert bf16_half_ulp(w0).tolist() == pytest.approx(expect, rel=0)
    base = torch.full((1000,), 1.0).to(torch.bfloat16)
    steps = torch.zeros(1000)
    steps[:100] = 2.0 ** -10  # below half ULP (2^-8): vanishes on a bf16 save
    steps[100:300] = 2.0 ** -6  # above: visible
    tuned = base.float() + steps
    s = stream_pair_stats(base, tuned, visible=True, kernel=kernel)
    assert s["visible_fraction"] == pytest.approx(0.2)
    assert s["vanishing_fraction"] == pytest.approx(0.1)
    assert s["unchanged_bitwise"] == pytest.approx(0.7)
    # the vanishing ones really vanish on a bf16 round trip, the visible ones do not
    rounded = tuned.to(torch.bfloat16)
    assert int((rounded != base).sum()) == 200


def _planted(m, n, sing, seed=0):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, len(sing))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(sing))))
    return (u * np.asarray(sing)) @ v.T


@pytest.mark.parametrize("method", ["gram", "exact"])
@pytest.mark.parametrize("shape", [(60, 40), (30, 90)])
def test_rank_measures_of_planted_update(method, shape):
    sing = np.array([5.0, 3.0, 2.0, 1.0])
    delta = torch.tensor(_planted(*shape, sing), dtype=torch.float32)
    sigma = R.singular_values_gram(delta, block=500) if method == "gram" else R.singular_values_exact(delta)
    out = R.rank_measures(sigma, shape)
    e = sing ** 2
    p = sing / sing.sum()
    assert out["numerical_rank"] == 4
    assert out["delta_spectral"] == pytest.approx(5.0, rel=1e-5)
    assert out["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-5)
    assert out["stable_rank"] == pytest.approx(e.sum() / 25.0, rel=1e-5)
    assert out["rank1_share"] == pytest.approx(25.0 / e.sum(), rel=1e-5)
    cum = np.cumsum(e) / e.sum()  # 0.641, 0.872, 0.974, 1
    assert out["energy_rank_90"] == int(np.argmax(cum >= 0.9)) + 1 == 3
    assert out["energy_rank_99"] == 4


def test_numerical_rank_matches_torch_matrix_rank():
    g = torch.Generator().manual_seed(3)
    delta = torch.randn(80, 8, generator=g) @ torch.randn(8, 50, generator=g) + 1e-7 * torch.randn(80, 50, generator=g)
    expect = int(torch.linalg.matrix_rank(delta))
    assert R.numerical_rank(R.singular_values_exact(delta), (80, 50)) == expect
    assert R.numerical_rank(R.singular_values_gram(delta), (80, 50)) == expect


def test_zero_update_rank_fields():
    out = R.rank_measures(R.singular_values_gram(torch.zeros(5, 3)), (5, 3))
    # the ratios are 0/0 for Δ = 0: undefined, so null, all three alike (not 0, which reads as a real rank)
    assert out == {"delta_spectral": 0.0, "numerical_rank": 0, "effective_rank": None, "stable_rank": None,
                   "energy_rank_90": 0, "energy_rank_99": 0, "rank1_share": None}
    top = R.rank_measures_top(0.0, 0.0)  # the fast route on large matrices says the same
    assert top["stable_rank"] is None and top["rank1_share"] is None and top["effective_rank"] is None


def test_overlap_counts_closed_form():
    from deltalens.weights.overlap import overlap_from_counts

    o = overlap_from_counts(100, 40, 20, 10)
    assert o["o1"] == 10 / 40 and o["o1_baseline"] == pytest.approx(0.2)
    assert o["o2"] == 10 / 20 and o["o2_baseline"] == pytest.approx(0.4)
    assert o["jaccard"] == pytest.approx(10 / 50)
    assert o["jaccard_baseline"] == pytest.approx(0.4 * 0.2 / (0.4 + 0.2 - 0.08))


def test_aggregation_is_parameter_weighted():
    from deltalens.weights.aggregate import summarize
    from deltalens.weights.groups import AggField

    rows = [
        {"name": "a", "module": "q", "layer": 0, "numel": 100, "unchanged_bitwise": 0.5, "stable_rank": 2.0,
         "delta_fro": 3.0, "unchanged_absolute": {"1e-05": 0.5}},
        {"name": "b", "module": "q", "layer": 1, "numel": 300, "unchanged_bitwise": 0.9, "stable_rank": 4.0,
         "delta_fro": 4.0, "unchanged_absolute": {"1e-05": 1.0}},
        {"name": "c", "module": "norm", "layer": None, "numel": 100, "unchanged_bitwise": 0.0, "stable_rank": None,
         "delta_fro": 0.0, "unchanged_absolute": {"1e-05": 0.0}},
    ]
    fields = [AggField("unchanged_bitwise", "fraction"), AggField("unchanged_absolute", "fraction"),
              AggField("stable_rank", "value"), AggField("delta_fro", "rss")]
    s = summarize(rows, fields)
    assert s["unchanged_bitwise"] == pytest.approx((50 + 270 + 0) / 500)
    assert s["unchanged_absolute"]["1e-05"] == pytest.approx((50 + 300) / 500)
    assert s["by_module"]["q"]["unchanged_bitwise"] == pytest.approx(320 / 400)
    assert s["by_module"]["q"]["stable_rank_mean"] == 3.0 and s["by_module"]["q"]["stable_rank_max"] == 4.0
    assert s["delta_fro"] == pytest.approx(5.0)
    assert set(s["by_layer"]) == {"0", "1"} and s["by_layer"]["1"]["numel"] == 300


def test_nan_in_a_sparse_chunk_torch_kernel():
    """The subset path of the device kernel: few changed entries, one of them NaN."""
    w0 = torch.linspace(-1, 1, 1000)
    w1 = w0.clone()
    w1[3] = float("nan")
    w1[10] = 5.0
    for kernel in ("auto", "torch"):
        s = stream_pair_stats(w0, w1, kernel=kernel)
        assert s["nonfinite"] == 1 and s["unchanged_bitwise"] == pytest.approx(998 / 1000)
        assert s["unchanged_relative"] == pytest.approx(998 / 1000)
        assert s["delta_max_abs"] == pytest.approx(5.0 - float(w0[10]))


@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_same_bits_inf_in_a_dense_chunk(kernel):
    w0 = torch.tensor([float("inf"), 1.0, 2.0, 3.0])
    w1 = torch.tensor([float("inf"), 1.5, 2.5, 3.5])
    s = stream_pair_stats(w0, w1, tols=(1.0,), kernel=kernel)
    assert s["nonfinite"] == 1
    assert s["unchanged_bitwise"] == s["unchanged_relative"] == 0.25
    assert s["unchanged_absolute"]["1.0"] == 1.0
    assert s["delta_fro"] == pytest.approx(math.sqrt(3 * 0.25)) and s["delta_max_abs"] == 0.5


def _bf16_pair(n: int, changed_share: float, seed: int, specials: bool):
    """A bf16 pair with ~changed_share of entries changed, optionally with ±0.0 pairs, same-bits
    and changed NaN/Inf placed in the first chunk only."""
    g = torch.Generator().manual_seed(seed)
    w0 = (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16)
    mask = torch.rand(n, generator=g) < changed_share
    w1 = torch.where(mask, (w0.float() * (1 + 0.05 * torch.randn(n, generator=g))).to(torch.bfloat16), w0)
    w0[5], w1[5] = 0.0, -0.0  # ±0.0: changed bitwise, unchanged under relative/absolute
    w0[6], w1[6] = -0.0, 0.0
    w0[7], w1[7] = 0.0, 0.0
    if specials:
        w0[0] = w1[0] = float("nan")  # same bits: unchanged everywhere, counted non-finite
        w0[1], w1[1] = 1.0, float("nan")
        w0[2] = w1[2] = float("inf")
        w0[3], w1[3] = float("-inf"), 3.0
    return w0, w1


def _float64_reference(w0, w1, tols, eta=1e-3):
    a, b = w0.double().numpy(), w1.double().numpy()
    same_bits = w0.view(torch.int16).numpy() == w1.view(torch.int16).numpy()
    fin = np.isfinite(a) & np.isfinite(b)
    with np.errstate(invalid="ignore"):
        d = np.where(fin, np.abs(b - a), np.nan)
        rel = same_bits | (d <= eta * np.maximum(np.abs(a), np.abs(b)))
        ref = {"unchanged_bitwise": same_bits.mean(), "unchanged_relative": rel.mean(),
               "unchanged_absolute": {repr(t): (same_bits | (d <= t)).mean() for t in tols},
               "nonfinite": int((~fin).sum()),
               "delta_fro": math.sqrt(np.nansum(d ** 2)), "delta_max_abs": float(np.nanmax(d)),
               "w0_fro": math.sqrt((np.where(np.isfinite(a), a, 0) ** 2).sum())}
    return ref


@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("share", [0.0, 0.01, 0.3, 0.9])
@pytest.mark.parametrize("chunk", [64, 1 << 16])
def test_bf16_passes_agree_with_float64(share, specials, chunk):
    """The compiled pass and the torch pass (on the changed elements only when ≤ 1/8 changed,
    dense otherwise) give the counts and max of float64, and its sums to rounding."""
    tols = (1e-5, 1e-3, 0.0)
    w0, w1 = _bf16_pair(5000, share, seed=int(share * 100) + specials, specials=specials)
    ref = _float64_reference(w0, w1, tols)
    runs = {k: stream_pair_stats(w0, w1, tols=tols, chunk=chunk, kernel=k) for k in ("auto", "torch")}
    for kernel, s in runs.items():
        for key in ("unchanged_bitwise", "unchanged_relative"):
            assert s[key] == pytest.approx(ref[key], abs=0), (kernel, key)
        for t in tols:
            assert s["unchanged_absolute"][repr(t)] == pytest.approx(ref["unchanged_absolute"][repr(t)], abs=0), (kernel, t)
        assert s["nonfinite"] == ref["nonfinite"]
        assert s["delta_max_abs"] == ref["delta_max_abs"]  # exact: a bf16 difference is exact in float32 here
        assert s["delta_fro"] == pytest.approx(ref["delta_fro"], rel=1e-6, abs=0)
        assert s["delta_rel"] == pytest.approx(ref["delta_fro"] / ref["w0_fro"], rel=1e-6)
    # the ±0.0 pairs are the only place where relative and bitwise differ
    assert runs["auto"]["unchanged_relative"] - runs["auto"]["unchanged_bitwise"] == pytest.approx(2 / 5000)


def test_bf16_relative_rule_with_a_large_eta():
    """η ≥ 2⁻⁹ breaks relative = bitwise (up to ±0) in bf16: the general rule must run."""
    w0 = torch.tensor([1.0, 2.0, 4.0, 0.5], dtype=torch.bfloat16)
    w1 = torch.tensor([1.0078125, 2.0, 4.0, 0.5], dtype=torch.bfloat16)  # one ULP up at 1.0: |Δ| = 2⁻⁷
    for kernel in ("auto", "torch"):
        s = stream_pair_stats(w0, w1, eta=2.0 ** -7, kernel=kernel)
        assert s["unchanged_relative"] == 1.0 and s["unchanged_bitwise"] == 0.75
        s = stream_pair_stats(w0, w1, eta=1e-3, kernel=kernel)
        assert s["unchanged_relative"] == 0.75
