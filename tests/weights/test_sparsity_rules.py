"""SPEC §2 rule functions and both passes (compiled loop, torch) against an element-by-element
float64 reference written in plain Python, on edge cases and random pairs with planted changes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deltalens.weights import sparsity as S
from tests.smol_weights import gguf_matrices, needs_gguf
from deltalens.weights.sparsity import (
    absolute_unchanged, bf16_half_ulp, bf16_visibility, bitwise_unchanged, relative_unchanged, stream_pair_stats,
    update_abs,
)

ETA = 1e-3
TOLS = (1e-5, 1e-3, 0.0)
_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}
compiled = pytest.mark.skipif(S.compiled_pass() is None, reason="numba not installed")


def _bits(t: torch.Tensor, wide: torch.dtype, mixed: bool = False) -> list[int]:
    """Stored bits; for a mixed pair, after an upcast (numpy's) with any NaN as one NaN (SPEC §2)."""
    if not mixed:
        return t.view(_INT[t.element_size()]).tolist()
    x = t.double().numpy().astype({torch.float32: np.float32, torch.float64: np.float64}[wide])
    x[np.isnan(x)] = np.nan
    return x.view({torch.float32: np.int32, torch.float64: np.int64}[wide]).tolist()


def _half_ulp(x: float) -> float:
    """Half a bf16 ULP at float32(x): 2^(⌊log2|x|⌋ − 8), and 2^-134 below 2^-126."""
    x = abs(float(np.float32(x)))
    return 2.0 ** -134 if x < 2.0 ** -126 else 2.0 ** (math.floor(math.log2(x)) - 8)


def reference(w0: torch.Tensor, w1: torch.Tensor, tols=TOLS, eta=ETA, visible=False) -> dict:
    """SPEC §2/§3 one element at a time in Python floats: bitwise on the stored bits (after an
    exact upcast of a mixed pair to the wider float type, any NaN equal to any NaN); a pair that is not bit-identical and
    holds a NaN/Inf is changed under every rule; sums over finite entries, exact (fsum)."""
    wide = w0.dtype if w0.dtype == w1.dtype else (torch.float64 if torch.float64 in (w0.dtype, w1.dtype) else torch.float32)
    mixed = w0.dtype != w1.dtype
    b0, b1 = _bits(w0.reshape(-1), wide, mixed), _bits(w1.reshape(-1), wide, mixed)
    a, b = w0.reshape(-1).double().tolist(), w1.reshape(-1).double().tolist()
    n = len(a)
    same = rel = nonfinite = vis = van = 0
    small = [0] * len(tols)
    s0, sd, mx = [], [], 0.0
    for x, y, bx, by in zip(a, b, b0, b1):
        eq = bx == by
        fin = math.isfinite(x) and math.isfinite(y)
        d = abs(y - x) if fin else None
        same += eq
        nonfinite += not fin
        rel += eq or (fin and d <= eta * max(abs(x), abs(y)))
        for k, t in enumerate(tols):
            small[k] += eq or (fin and d <= t)
        if math.isfinite(x):
            s0.append(x * x)
        if fin:
            sd.append(d * d)
            mx = max(mx, d)
            if visible:
                h = _half_ulp(x)
                vis += d >= h
                van += 0 < d < h
    out = {"unchanged_bitwise": same / n, "unchanged_relative": rel / n, "nonfinite": nonfinite,
           "unchanged_absolute": {repr(float(t)): c / n for t, c in zip(tols, small)},
           "delta_fro": math.sqrt(math.fsum(sd)), "w0_fro": math.sqrt(math.fsum(s0)), "delta_max_abs": mx}
    if visible:
        out.update(visible_fraction=vis / n, vanishing_fraction=van / n)
    return out


def assert_matches(s: dict, ref: dict, label="") -> None:
    for key in ("unchanged_bitwise", "unchanged_relative", "visible_fraction", "vanishing_fraction"):
        if key in ref:
            assert s[key] == ref[key], (label, key, s[key], ref[key])
    assert s["unchanged_absolute"] == ref["unchanged_absolute"], label
    assert s["nonfinite"] == ref["nonfinite"], label
    assert s["delta_max_abs"] == ref["delta_max_abs"], label  # a max of float64 |Δ|: exact
    assert s["delta_fro"] == pytest.approx(ref["delta_fro"], rel=1e-12, abs=1e-300), label
    if ref["w0_fro"] > 0 and ref["delta_fro"] > 0:
        # float64 pairs near the largest value overflow ‖Δ‖ and ‖W0‖ to Inf in both: Inf/Inf = NaN
        assert s["delta_rel"] == pytest.approx(ref["delta_fro"] / ref["w0_fro"], rel=1e-12, nan_ok=True), label


NAN, INF = math.nan, math.inf
EDGE_PAIRS = [
    (0.0, -0.0), (-0.0, 0.0), (0.0, 0.0), (-0.0, -0.0),  # ±0: changed bitwise only
    (NAN, NAN), (1.0, NAN), (NAN, 1.0),  # same-bits NaN unchanged; NaN against a number changed
    (INF, INF), (-INF, -INF), (-INF, INF), (INF, 3.0), (3.0, -INF),  # Inf − finite must not pass as Inf ≤ η·Inf
    (1.0, 1.0), (1.0, 1.001), (1.0, 1.0009765625), (-2.0, -2.00390625), (0.5, -0.5),
    (1e-5, 0.0), (0.0, 1e-5), (3e-5, 2e-5), (1e-3, 0.0), (100.0, 100.0625),
]


def _subnormal_pairs(dtype: torch.dtype) -> list[tuple[float, float]]:
    tiny = torch.finfo(dtype).smallest_normal
    sub = tiny * 2.0 ** -3
    return [(sub, 2 * sub), (sub, 0.0), (sub, -sub), (-sub, -0.0), (tiny, tiny - sub), (sub, sub)]


def _edge_tensors(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = EDGE_PAIRS + _subnormal_pairs(dtype)
    big = torch.finfo(dtype).max
    pairs += [(big, -big), (big, big)]  # float64: Δ overflows to Inf, changed
    w0 = torch.tensor([p[0] for p in pairs], dtype=torch.float64).to(dtype)
    w1 = torch.tensor([p[1] for p in pairs], dtype=torch.float64).to(dtype)
    # a NaN with other bits than the first NaN: not bit-identical, so changed under every rule
    i = len(pairs)
    w0, w1 = torch.cat([w0, w0[4:5]]), torch.cat([w1, w1[4:5]])
    bits = w1.view(_INT[w1.element_size()])
    bits[i] = bits[i] ^ 1
    assert math.isnan(float(w1[i])) and torch.equal(w0[4:5].view(bits.dtype), w0[i:i + 1].view(bits.dtype))
    return w0, w1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_rule_functions_on_edge_cases(dtype):
    """The rule functions applied to numpy float64 arrays (as the torch pass applies them to
    tensors) agree element by element with the Python reference."""
    w0, w1 = _edge_tensors(dtype)
    b0, b1 = np.array(_bits(w0, dtype)), np.array(_bits(w1, dtype))
    x, y = w0.double().numpy(), w1.double().numpy()
    with np.errstate(invalid="ignore", over="ignore"):
        same = bitwise_unchanged(b0, b1)
        d = update_abs(x, y)
        rel = relative_unchanged(same, d, x, y, ETA)
        small = {t: absolute_unchanged(same, d, t) for t in TOLS}
    for i, (xi, yi) in enumerate(zip(x.tolist(), y.tolist())):
        eq = bool(b0[i] == b1[i])
        fin = math.isfinite(xi) and math.isfinite(yi)
        assert bool(same[i]) == eq
        assert bool(rel[i]) == (eq or (fin and abs(yi - xi) <= ETA * max(abs(xi), abs(yi)))), (i, xi, yi)
        for t in TOLS:
            assert bool(small[t][i]) == (eq or (fin and abs(yi - xi) <= t)), (i, xi, yi, t)
    # the cases the SPEC names: +0 → −0 changed bitwise, unchanged otherwise; same-bits NaN unchanged
    assert not same[0] and rel[0] and small[1e-5][0]
    assert same[4] and rel[4] and not rel[-1] and not small[1e-3][-1]
    assert not rel[10] and not small[1e-3][10]  # Inf → 3


def test_visibility_rule_against_rounding():
    """bf16_visibility: an update at or above half a bf16 ULP of w0 survives a bf16 save, one below
    rounds back to w0 (checked by rounding, not by the formula)."""
    w0 = torch.tensor([1.0, 1.5, 3.0, -0.25, 1e-3, 2.0 ** -130, 0.0]).to(torch.bfloat16).float()
    half = bf16_half_ulp(w0)
    assert half.tolist() == [_half_ulp(x) for x in w0.tolist()]
    for scale, survives in ((0.5, False), (0.99, False), (1.01, True), (1.5, True)):
        step = half * scale
        visible, vanishing = bf16_visibility(step.double(), half)
        assert visible.tolist() == [survives] * 7 and vanishing.tolist() == [not survives] * 7
        # away from zero (toward zero, at a power of two the spacing halves: the SPEC's ULP is the
        # one above |w0|); ties (scale 1.0) round to even, so they are left out
        rounded = (w0 + torch.where(w0 < 0, -step, step)).to(torch.bfloat16).float()
        assert ((rounded != w0).tolist() == [survives] * 7), scale
    visible, vanishing = bf16_visibility(torch.tensor([0.0, math.inf, math.nan]), torch.ones(3))
    assert not visible.any() and not vanishing.any()


def _passes(w0, w1, **kw):
    runs = {"torch": stream_pair_stats(w0, w1, kernel="torch", **kw),
            "torch, chunk 7": stream_pair_stats(w0, w1, kernel="torch", chunk=7, **kw)}
    if S.compiled_pass() is not None and w0.dtype == w1.dtype and not kw.get("visible"):
        runs["compiled"] = stream_pair_stats(w0, w1, **kw)
        runs["compiled, block 7"] = stream_pair_stats(w0, w1, chunk=7, **kw)
        acc = S.SparsityAccumulator(kw.get("tols", S.DEFAULT_TOLS), kw.get("eta", S.DEFAULT_ETA), False)
        S.compiled_pass().accumulate(acc, w0.reshape(-1), w1.reshape(-1), block=5, threads=3, part=11)
        runs["compiled, 3 threads"] = acc.result(True, True)
    return runs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_passes_on_edge_cases(dtype):
    w0, w1 = _edge_tensors(dtype)
    ref = reference(w0, w1)
    for label, s in _passes(w0, w1, tols=TOLS).items():
        assert_matches(s, ref, label)


def _planted_pair(dtype, n, seed, share=0.3):
    """w0 spread over magnitudes 1e-8…10; about ``share`` of entries moved by relative steps around
    the rule thresholds (so counts differ between rules); ±0.0, NaN and Inf planted."""
    g = torch.Generator().manual_seed(seed)
    w0 = (torch.randn(n, generator=g, dtype=torch.float64) * torch.logspace(-8, 1, n, dtype=torch.float64)[torch.randperm(n, generator=g)]).to(dtype)
    step = torch.randn(n, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-6, -1, (n,), generator=g).double()
    moved = torch.rand(n, generator=g) < share
    w1 = torch.where(moved, (w0.double() * (1 + step)).to(dtype), w0)
    absolute = torch.rand(n, generator=g) < 0.05  # absolute steps near the tolerances
    w1 = torch.where(absolute, (w0.double() + torch.randn(n, generator=g, dtype=torch.float64) * 1e-5).to(dtype), w1)
    w0[:4], w1[:4] = torch.tensor([0.0, -0.0, NAN, INF], dtype=dtype), torch.tensor([-0.0, 0.0, NAN, INF], dtype=dtype)
    w0[n // 2], w1[n // 2] = 1.0, NAN
    w0[n - 1], w1[n - 1] = -INF, 2.0
    return w0, w1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("share", [0.0, 0.05, 0.6])
def test_passes_on_planted_pairs(dtype, share):
    w0, w1 = _planted_pair(dtype, 3001, seed=int(share * 100) + dtype.itemsize, share=share)
    ref = reference(w0, w1)
    assert 0 < ref["unchanged_bitwise"] <= 1 and ref["nonfinite"] == 4
    if share:
        assert ref["unchanged_relative"] != ref["unchanged_absolute"]["1e-05"]  # the rules differ here
    for label, s in _passes(w0, w1, tols=TOLS).items():
        assert_matches(s, ref, label)


@pytest.mark.parametrize("dtypes", [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                    (torch.float32, torch.float64), (torch.bfloat16, torch.bfloat16)])
def test_mixed_dtypes_and_visibility(dtypes):
    """Mixed pairs (bitwise after an exact upcast) and the visibility counts, against the reference."""
    w0, w1 = _planted_pair(dtypes[0], 2000, seed=7)
    w1 = (w1.double() + 1e-4 * torch.randn(2000, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
          * (torch.arange(2000) % 3 == 0)).to(dtypes[1])
    bits = w1.view(_INT[w1.element_size()])
    bits[2] = bits[2] ^ 1  # w0[2] is NaN: a NaN of another payload on the wide side is still "NaN on both"
    assert math.isnan(float(w1[2])) and math.isnan(float(w0[2]))
    ref = reference(w0, w1, visible=True)
    assert 0 < ref["visible_fraction"] < 1
    for label, s in _passes(w0, w1, tols=TOLS, visible=True).items():
        assert_matches(s, ref, label)


def test_bf16_relative_rule_is_bitwise_up_to_signed_zero():
    """SPEC §2: in bf16, η = 1e-3 < 2⁻⁹, so the relative rule keeps exactly the bit-identical
    elements and the ±0.0 pairs; η ≥ 2⁻⁹ breaks it (one ULP at 1.0 is 2⁻⁷ = 2⁻⁷ of the value)."""
    for seed in range(3):
        w0, w1 = _planted_pair(torch.bfloat16, 5000, seed=seed, share=0.5)
        for label, s in _passes(w0, w1).items():
            assert s["unchanged_relative"] - s["unchanged_bitwise"] == pytest.approx(2 / 5000, abs=1e-15), label
    w0 = torch.tensor([1.0, 2.0, 4.0, 0.5], dtype=torch.bfloat16)
    w1 = torch.tensor([1.0078125, 2.0, 4.0, 0.5], dtype=torch.bfloat16)
    for label, s in _passes(w0, w1, eta=2.0 ** -7).items():
        assert s["unchanged_relative"] == 1.0 and s["unchanged_bitwise"] == 0.75, label


def test_torch_pass_runs_where_numba_is_absent(monkeypatch):
    """Without numba, "auto" falls back to the torch pass with the same rule functions."""
    monkeypatch.setattr(S, "compiled_pass", lambda: None)
    w0, w1 = _planted_pair(torch.bfloat16, 1000, seed=3)
    assert_matches(stream_pair_stats(w0, w1, tols=TOLS), reference(w0, w1))


@compiled
def test_compiled_pass_empty_and_no_tolerances():
    empty = torch.zeros(0, dtype=torch.bfloat16)
    s = stream_pair_stats(empty, empty)
    assert s["unchanged_bitwise"] is None and s["delta_fro"] == 0.0 and s["nonfinite"] == 0
    w0, w1 = _planted_pair(torch.float32, 500, seed=4)
    s = stream_pair_stats(w0, w1, tols=())
    assert s["unchanged_absolute"] == {} and s["unchanged_relative"] == reference(w0, w1)["unchanged_relative"]


def test_unknown_kernel_is_an_error():
    with pytest.raises(ValueError, match="kernel"):
        stream_pair_stats(torch.zeros(3), torch.zeros(3), kernel="numpy")


@needs_gguf
def test_passes_on_real_weights_against_the_reference():
    """Real SmolLM2 matrices (the GGUF's values) released in bf16 as a fine-tune would be: an
    update of 1e-3 of the matrix's scale (most entries round back to W0 in bf16: a realistic
    sparsity), the same update in float32 (nothing rounds back), and the identical pair (all
    unchanged, Δ = 0), every pass against the float64 reference."""
    real = gguf_matrices(("blk.12.attn_v.weight", "blk.3.attn_q.weight"))
    for i, (name, w) in enumerate(sorted(real.items())):
        w = w[:96]  # 96 rows: 55k entries keep the Python reference fast
        g = torch.Generator().manual_seed(i)
        moved = w + 1e-3 * float(w.std()) * torch.randn(w.shape, generator=g)
        for dtype in (torch.bfloat16, torch.float32):
            w0, w1 = w.to(dtype), moved.to(dtype)
            ref = reference(w0, w1)
            if dtype == torch.bfloat16:
                assert 0.3 < ref["unchanged_bitwise"] < 0.99, (name, ref["unchanged_bitwise"])
            for label, s in _passes(w0, w1, tols=TOLS).items():
                assert_matches(s, ref, f"{name} {dtype} {label}")
            same = reference(w0, w0.clone())
            assert same["unchanged_bitwise"] == 1.0 and same["delta_fro"] == 0.0
            for label, s in _passes(w0, w0.clone(), tols=TOLS).items():
                assert_matches(s, same, f"{name} {dtype} identical {label}")
