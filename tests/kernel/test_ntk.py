"""Exact and sketched eNTK against an explicitly built Jacobian (torch.autograd.functional.jacobian)."""

from __future__ import annotations

import math

import pytest
import torch
from models import TinyMLP, explicit_jacobian, mlp_output

from deltalens.errors import DeltalensError
from deltalens.kernel import CountSketch, completion_logprob, empirical_ntk, encode_probes
from deltalens.kernel import ntk
from deltalens.kernel.ntk import add_chunk_gram, sketch_error_estimate, symmetrize_upper, upper_gram


def reference_jacobian(model, output_fn, batch) -> torch.Tensor:
    """J (n×P, float64) of a scalar-per-example output (:func:`models.explicit_jacobian`)."""
    jac = explicit_jacobian(model, output_fn, batch)
    return jac.reshape(jac.shape[0], -1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double()))


@pytest.fixture(scope="module")
def mlp_case():
    model = TinyMLP(seed=1)
    batch = {"x": torch.randn(9, 5, generator=torch.Generator().manual_seed(2))}
    jac = reference_jacobian(model, mlp_output, batch)
    return model, batch, jac


@pytest.fixture(scope="module")
def llama_case():
    from deltalens.lab.tiny_model import build_tiny_llama
    from deltalens.lab.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    model = build_tiny_llama(tokenizer=tok, seed=0)
    probes = [{"prompt": f"Q{i}: {i}*3=", "completion": str(3 * i) + "!" * (i % 3)} for i in range(7)]
    batch = encode_probes(tok, probes)
    jac = reference_jacobian(model, completion_logprob, batch)
    return model, batch, jac, tok, probes


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_exact_equals_explicit_jacobian_mlp(mlp_case, method):
    model, batch, jac = mlp_case
    result = empirical_ntk(model, mlp_output, batch, method=method, chunk_size=4)
    assert rel(result.matrix, jac @ jac.T) < 1e-5
    assert result.mode == "exact" and result.n_params == jac.shape[1]


def test_exact_equals_explicit_jacobian_transformer(llama_case):
    model, batch, jac, _, _ = llama_case
    result = empirical_ntk(model, completion_logprob, batch)
    assert rel(result.matrix, jac @ jac.T) < 1e-5
    assert result.n_groups == 1


@pytest.mark.parametrize("block", [1, 3, 5, 64])
def test_upper_gram_against_numpy(block):
    """Blocked upper-triangle Gram + symmetrize equals numpy's float64 R Rᵀ, for blocks that do not divide n."""
    import numpy as np

    r = np.random.default_rng(3).standard_normal((11, 40))
    part = torch.zeros(11, 11, dtype=torch.float64)
    upper_gram(torch.from_numpy(r), part, block)
    np.testing.assert_allclose(symmetrize_upper(part).numpy(), r @ r.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sizes", [(11,), (4, 4, 3), (1, 5, 2, 3)])
def test_chunk_gram_against_numpy(sizes):
    """Chunk-pair products over per-tensor column blocks, then symmetrize, equal numpy's float64 R Rᵀ."""
    import numpy as np

    r = np.random.default_rng(4).standard_normal((11, 40))
    cuts = (0, 7, 8, 25, 40)  # four parameter blocks of unequal width
    part = torch.zeros(11, 11, dtype=torch.float64)
    kept, start = [], 0
    for size in sizes:
        rows = torch.from_numpy(r[start : start + size])
        kept.append((slice(start, start + size), [rows[:, a:b] for a, b in zip(cuts, cuts[1:])]))
        add_chunk_gram(part, kept)
        start += size
    np.testing.assert_allclose(symmetrize_upper(part).numpy(), r @ r.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4])
def test_contraction_during_the_pass_equals_explicit_jacobian(llama_case, chunk):
    """Chunk-pair products over chunks that do not divide n still give J Jᵀ; torch's thread count is restored."""
    model, batch, jac, _, _ = llama_case
    threads = torch.get_num_threads()
    result = empirical_ntk(model, completion_logprob, batch, chunk_size=chunk, gradient_threads=threads + 1)
    assert rel(result.matrix, jac @ jac.T) < 1e-5
    assert torch.equal(result.matrix, result.matrix.T)
    assert torch.get_num_threads() == threads


def test_pass_threads_auto_depends_on_the_model_only(monkeypatch):
    """'auto' is 1 thread for small models and the caller's setting for large ones, whatever the
    machine's load (a kernel's rounding must not depend on what else runs)."""
    import os

    for load in (0.1, 50.0):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert ntk.pass_threads("auto", {"a": 10, "b": ntk.SMALL_TENSOR_NUMEL - 1}) == 1
        assert ntk.pass_threads("auto", {"a": 10, "b": ntk.SMALL_TENSOR_NUMEL}) is None
    assert ntk.pass_threads(3, {"a": 10}) == 3 and ntk.pass_threads(None, {"a": 10}) is None
    with pytest.raises(DeltalensError, match="gradient_threads"):
        ntk.pass_threads(0, {"a": 10})


def test_intra_op_threads_restores_on_error():
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError), ntk.intra_op_threads(threads + 1):
        assert torch.get_num_threads() == threads + 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("strategy", ["spill", "recompute"])
def test_exact_in_parameter_groups_never_holds_full_jacobian(llama_case, strategy, tmp_path):
    model, batch, jac, _, _ = llama_case
    n, p = jac.shape
    budget_mb = n * p * 4 / 2**20 / 6  # about a sixth of J per group
    result = empirical_ntk(
        model, completion_logprob, batch, memory_budget_mb=budget_mb, exact_strategy=strategy, spill_dir=str(tmp_path)
    )
    assert result.n_groups >= 6 and result.strategy == strategy
    assert rel(result.matrix, jac @ jac.T) < 1e-5
    assert list(tmp_path.iterdir()) == []  # spilled slices are removed


def test_jv_is_exact_in_both_modes(llama_case):
    model, batch, jac, _, _ = llama_case
    gen = torch.Generator().manual_seed(5)
    vec = {k: torch.randn(p.shape, generator=gen) for k, p in model.named_parameters()}
    flat = torch.cat([v.reshape(-1) for v in vec.values()]).double()
    expected = jac @ flat
    for mode, dim in (("exact", None), ("sketch", 64)):
        result = empirical_ntk(model, completion_logprob, batch, mode=mode, dim=dim, vectors={"v": vec})
        assert rel(result.jv["v"], expected) < 1e-5


def test_padding_does_not_change_outputs(llama_case):
    model, batch, _, tok, probes = llama_case
    together = completion_logprob(model, batch)
    alone = torch.stack([completion_logprob(model, encode_probes(tok, [p]))[0] for p in probes])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_countsketch_is_unbiased():
    """Mean of ⟨Sx, Sy⟩ over 2000 seeds → ⟨x, y⟩ within 4 standard errors."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 300, generator=gen, dtype=torch.float64)
    dim = 16
    estimates = []
    for seed in range(2000):
        sk = CountSketch(dim, seed)
        sx, sy = sk.project("w", torch.stack([x, y]))
        estimates.append(float(sx @ sy))
    est = torch.tensor(estimates, dtype=torch.float64)
    exact = float(x @ y)
    stderr = float(est.std()) / math.sqrt(len(est))
    assert abs(float(est.mean()) - exact) < 4 * stderr
    bound = math.sqrt((float(x @ x) * float(y @ y) + exact**2) / dim)
    assert float(est.std()) <= 1.1 * bound


def test_sketch_error_falls_like_inverse_sqrt_d(llama_case):
    """Relative Frobenius error of the sketched K at d = 64 … 4096 against exact: slope ≈ −1/2 on log-log."""
    model, batch, jac, _, _ = llama_case
    exact = jac @ jac.T
    dims = [64, 256, 1024, 4096]
    errors, estimates = [], []
    for d in dims:
        per_seed = []
        for seed in range(3):
            result = empirical_ntk(model, completion_logprob, batch, mode="sketch", dim=d, seed=seed)
            per_seed.append(rel(result.matrix, exact))
            estimates.append(result.error_estimate / rel(result.matrix, exact))
        errors.append(sum(e * e for e in per_seed) ** 0.5 / math.sqrt(len(per_seed)))
    logs = torch.log(torch.tensor(dims, dtype=torch.float64))
    loge = torch.log(torch.tensor(errors, dtype=torch.float64))
    slope = float(((logs - logs.mean()) * (loge - loge.mean())).sum() / ((logs - logs.mean()) ** 2).sum())
    assert -0.75 < slope < -0.3, (dims, errors, slope)
    ratio = torch.tensor(estimates)
    assert float(ratio.median()) == pytest.approx(1.0, rel=0.6)  # the reported estimate tracks the true error


def test_sketch_error_estimate_formula():
    k = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    fro2 = 4 + 1 + 1 + 9
    assert sketch_error_estimate(k, 100) == pytest.approx(math.sqrt((5.0**2 + fro2) / 100) / math.sqrt(fro2))


def test_bad_inputs(mlp_case, llama_case):
    model, batch, jac = mlp_case
    with pytest.raises(DeltalensError, match="larger than the parameter count"):
        empirical_ntk(model, mlp_output, batch, mode="sketch", dim=jac.shape[1] + 1)
    frozen = TinyMLP()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(DeltalensError, match="no parameters require gradients"):
        empirical_ntk(frozen, mlp_output, batch)
    _, _, _, tok, _ = llama_case
    with pytest.raises(DeltalensError, match="longer than the model's context of 16"):
        encode_probes(tok, [{"prompt": "x" * 20, "completion": "y"}], max_length=16)
    with pytest.raises(DeltalensError, match="no probes"):
        encode_probes(tok, [])


@pytest.mark.parametrize("implementation", ["auto", "structured", "jacobian"])
def test_exact_kernel_is_bit_identical_whatever_the_budget(implementation, tmp_path):
    """Issue 16 §8: the default budget follows the free memory, so the budget (and with it the
    chunks, the parameter groups and the strategy) must not change a single bit of K or of J·v.
    70 probes: two tiles of J Jᵀ; 0.5 MiB: 2-example chunks in 18 groups, recomputed or spilled."""
    from deltalens.lab.tiny_model import build_tiny_llama
    from deltalens.lab.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    model = build_tiny_llama(tokenizer=tok, seed=0)
    probes = [{"prompt": f"Q{i}: {i}*3=", "completion": str(3 * i) + "!" * (i % 3)} for i in range(70)]
    batch = encode_probes(tok, probes)
    gen = torch.Generator().manual_seed(5)
    vec = {k: torch.randn(p.shape, generator=gen) for k, p in model.named_parameters()}
    runs = [dict(memory_budget_mb=4096), dict(memory_budget_mb=4096, chunk_size=9),
            dict(memory_budget_mb=0.5, exact_strategy="auto", spill_dir=str(tmp_path)),
            dict(memory_budget_mb=0.5, exact_strategy="recompute")]
    if implementation == "jacobian":
        runs.append(dict(memory_budget_mb=0.5, exact_strategy="spill", spill_dir=str(tmp_path)))
    results = [empirical_ntk(model, completion_logprob, batch, implementation=implementation, vectors={"v": vec}, **kw)
               for kw in runs]
    first = results[0]
    assert first.n_groups == 1 and {r.n_groups for r in results[2:]} == {18}
    assert len({(r.strategy, r.chunk_size) for r in results}) >= 3  # in memory (two chunkings), and in groups
    for r in results[1:]:
        assert torch.equal(r.matrix, first.matrix) and torch.equal(r.jv["v"], first.jv["v"])
    jac = reference_jacobian(model, completion_logprob, batch)
    assert rel(first.matrix, jac @ jac.T) < 1e-5


def test_sketch_kernel_does_not_depend_on_the_budget():
    """Sketch mode at a 4096 MiB budget (one 24-probe chunk), with 5-probe chunks, and at 0.5 MiB
    (1-probe chunks): the same sketched rows J S, bit for bit, so the same kernel (issue 21: the
    budget follows the free memory and must not change results)."""
    from deltalens.lab.tiny_model import build_tiny_llama
    from deltalens.lab.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    model = build_tiny_llama(tokenizer=tok, seed=0)
    probes = [{"prompt": f"Q{i}: {i}*3=", "completion": str(3 * i)} for i in range(24)]
    batch = encode_probes(tok, probes)
    runs = [dict(memory_budget_mb=4096), dict(memory_budget_mb=4096, chunk_size=5), dict(memory_budget_mb=0.5)]
    results = [empirical_ntk(model, completion_logprob, batch, mode="sketch", dim=256, seed=3, **kw) for kw in runs]
    assert [r.chunk_size for r in results] == [24, 5, 1]
    for r in results[1:]:
        assert torch.equal(r.matrix, results[0].matrix)
    jac = reference_jacobian(model, completion_logprob, batch)
    assert rel(results[0].matrix, jac @ jac.T) < 0.5  # a sketch at d = 256: noisy, but of K


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_countsketch_projection_is_index_add_bit_for_bit(dtype):
    """The CPU projection (a compiled int32 scatter for float32/float64, index_add_ otherwise)
    against zeros(c, 2d).index_add_(1, int64 draws, rows) written out here: the same bits."""
    sk = CountSketch(64, seed=7)
    rows = torch.randn(3, 10_007, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = sk.project("layer.weight", rows)
    draw = sk._hash("layer.weight", rows.shape[1], rows.device).long()
    slots = torch.zeros(3, 128, dtype=dtype).index_add_(1, draw, rows)
    assert got.dtype == dtype and torch.equal(got, slots[:, 1::2] - slots[:, 0::2])
