"""Multi-output kernels and structured derivatives against explicit float64 Jacobians (J Jᵀ)."""

from __future__ import annotations

import pytest
import torch

from deltalens.kernel import empirical_ntk, encode_probes
from deltalens.kernel.ntk import default_memory_budget_mb, equal_chunks
from deltalens.kernel.outputs import check_positions, logits_output, top_tokens
from deltalens.kernel.structured import prefers_structured
from deltalens.errors import DeltalensError
from models import explicit_jacobian
from tests.smol_weights import gguf_matrices, needs_gguf


class VectorMLP(torch.nn.Module):
    """32 → 16 → 16 → m with tanh (the issue's MLP, narrower): m outputs per example."""

    def __init__(self, d_in=6, hidden=9, m=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.l1 = torch.nn.Linear(d_in, hidden)
        self.l2 = torch.nn.Linear(hidden, hidden)
        self.l3 = torch.nn.Linear(hidden, m)

    def forward(self, x):
        return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(x)))))


class SequenceModel(torch.nn.Module):
    """Linear layers over T positions (x: b×T×d), a shared (tied) layer used twice, and a scale
    parameter outside any Linear: structured layers with T > 1 next to Jacobian-route tensors."""

    def __init__(self, d=5, hidden=7, m=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = torch.nn.Linear(d, hidden)
        self.twice = torch.nn.Linear(hidden, hidden, bias=False)  # runs twice: Jacobian route
        self.out = torch.nn.Linear(hidden, m)
        self.scale = torch.nn.Parameter(torch.randn(hidden))

    def forward(self, x):
        h = torch.tanh(self.inp(x)) * self.scale
        h = torch.tanh(self.twice(torch.tanh(self.twice(h))))
        return self.out(h).sum(1)  # b × m: each output sums over the T positions


def vec_output(model, batch):
    return model(batch["x"])


def scalar_output(model, batch):
    return model(batch["x"]).sum(-1)


def rel(a, b) -> float:
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double()))


def references(jac):
    n, m, p = jac.shape
    full = jac.reshape(n * m, p) @ jac.reshape(n * m, p).T
    trace = torch.einsum("iop,jop->ij", jac, jac)
    return full, trace


@pytest.fixture(scope="module")
def mlp64():
    model = VectorMLP().double()
    batch = {"x": torch.randn(11, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))}
    return model, batch, explicit_jacobian(model, vec_output, batch)


@pytest.mark.parametrize("implementation", ["jacobian", "structured", "auto"])
@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_vector_output_kernels_equal_explicit_jacobian(mlp64, implementation, method):
    model, batch, jac = mlp64
    full, trace = references(jac)
    for chunk in (4, 64):
        got = empirical_ntk(model, vec_output, batch, implementation=implementation, method=method, chunk_size=chunk)
        assert got.matrix.shape == (44, 44) and got.n_outputs == 4 and not got.trace
        assert rel(got.matrix, full) < 1e-12
        got = empirical_ntk(model, vec_output, batch, implementation=implementation, method=method, chunk_size=chunk,
                            trace=True)
        assert got.matrix.shape == (11, 11) and got.trace
        assert rel(got.matrix, trace) < 1e-12
    expected = {"jacobian": [], "structured": ["l1", "l2", "l3"], "auto": ["l1", "l2", "l3"]}[implementation]
    assert got.structured_layers == expected  # T = 1: the rule always prefers structured derivatives


def test_float32_model_within_1e7_of_float64_reference():
    model = VectorMLP(d_in=32, hidden=64, m=10, seed=3)
    batch = {"x": torch.randn(16, 32, generator=torch.Generator().manual_seed(2))}
    jac = explicit_jacobian(model.double(), vec_output, {"x": batch["x"].double()})
    model.float()
    full, trace = references(jac)
    for implementation in ("jacobian", "structured"):
        assert rel(empirical_ntk(model, vec_output, batch, implementation=implementation).matrix, full) < 1e-6
        assert rel(empirical_ntk(model, vec_output, batch, implementation=implementation, trace=True).matrix, trace) < 1e-6


@pytest.mark.parametrize("output_fn", [vec_output, scalar_output])
def test_structured_over_positions_with_shared_and_other_parameters(output_fn):
    """T = 4 positions; a Linear that runs twice and a bare parameter keep the Jacobian route."""
    model = SequenceModel().double()
    batch = {"x": torch.randn(7, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))}
    jac = explicit_jacobian(model, output_fn, batch)
    full, trace = references(jac)
    got = empirical_ntk(model, output_fn, batch, implementation="structured", chunk_size=3)
    assert sorted(got.structured_layers) == ["inp", "out"]
    assert rel(got.matrix, full) < 1e-12
    if output_fn is vec_output:
        assert rel(empirical_ntk(model, output_fn, batch, implementation="structured", trace=True).matrix, trace) < 1e-12
    # J·v: the structured layers contribute Σ_t g_t·(V x_t)
    gen = torch.Generator().manual_seed(4)
    vec = {k: torch.randn(p.shape, dtype=torch.float64, generator=gen) for k, p in model.named_parameters()}
    flat = torch.cat([v.reshape(-1) for v in vec.values()])
    got = empirical_ntk(model, output_fn, batch, implementation="structured", vectors={"v": vec})
    assert rel(got.jv["v"], jac.reshape(-1, jac.shape[2]) @ flat) < 1e-12


def test_structured_in_parameter_groups_and_restricted_params(mlp64):
    model, batch, jac = mlp64
    full, _ = references(jac)
    # structured rows per example: T·(d_in + m·d_out) = 42, 45, 25 numbers; a budget for 60 of them
    # over 11 examples gives 3 passes, each layer's bias in its weight's pass (its rows are Σ_t g_t)
    budget = 11 * 60 * 8 / 2**20
    got = empirical_ntk(model, vec_output, batch, implementation="structured", memory_budget_mb=budget,
                        exact_strategy="recompute")
    assert got.n_groups == 3 and rel(got.matrix, full) < 1e-12
    # the same with the biases listed first and J·v (bias terms through the weight's taps)
    names = [k for k, _ in model.named_parameters()]
    order = [k for k in names if k.endswith("bias")] + [k for k in names if k.endswith("weight")]
    gen = torch.Generator().manual_seed(4)
    vec = {k: torch.randn(p.shape, dtype=torch.float64, generator=gen) for k, p in model.named_parameters()}
    flat = torch.cat([vec[k].reshape(-1) for k in names])
    got = empirical_ntk(model, vec_output, batch, implementation="structured", memory_budget_mb=budget,
                        exact_strategy="recompute", params=order, vectors={"v": vec})
    assert got.n_groups == 3 and rel(got.matrix, full) < 1e-12
    assert rel(got.jv["v"], jac.reshape(44, -1) @ flat) < 1e-12
    # only l2's weight: its bias is not differentiated, and not counted through the structured route
    sub = empirical_ntk(model, vec_output, batch, implementation="structured", params=["l2.weight"])
    cols = slice(6 * 9 + 9, 6 * 9 + 9 + 81)
    j = jac[:, :, cols].reshape(44, -1)
    assert sub.structured_layers == ["l2"] and rel(sub.matrix, j @ j.T) < 1e-12


def test_rule_and_chunks_and_budget():
    assert prefers_structured(1, 32, 128) and prefers_structured(5, 128, 128) and not prefers_structured(9, 128, 128)
    assert prefers_structured(20, 576, 1536) and not prefers_structured(21, 576, 1536)  # 576·1536/2112 = 418.9
    assert equal_chunks(64, 49) == 32 and equal_chunks(64, 64) == 64 and equal_chunks(100, 64) == 50
    assert equal_chunks(7, 3) == 3 and equal_chunks(5, 100) == 5 and equal_chunks(5, 0) == 1
    gib = 2**30
    assert default_memory_budget_mb(available=64 * gib) == 4096
    assert default_memory_budget_mb(available=10 * gib) == 2048  # 2.5 GiB → 2048
    assert default_memory_budget_mb(available=1 * gib) == 256
    assert default_memory_budget_mb(available=0) == 256
    assert 256 <= default_memory_budget_mb() <= 4096


@pytest.fixture(scope="module")
def llama64():
    from deltalens.lab.tiny_model import build_tiny_llama
    from deltalens.lab.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    model = build_tiny_llama(tokenizer=tok, seed=0).double()
    probes = [{"prompt": f"Q{i}: {i}*3=", "completion": str(3 * i) + "!" * (i % 3)} for i in range(1, 6)]
    return model, tok, encode_probes(tok, probes)


def test_logits_kernels_of_a_transformer(llama64):
    model, tok, batch = llama64
    check_positions(batch, [0])
    with pytest.raises(DeltalensError, match="probe 3 has a completion of 1 token"):
        check_positions(batch, [0, 1])
    ids = top_tokens(model, batch, [0], 3)
    assert len(set(ids)) == 3
    fn = logits_output([0], ids)
    out = fn(model, batch)
    logits = model(input_ids=batch["input_ids"]).logits
    start = batch["completion_mask"].argmax(-1)
    expected = torch.stack([logits[i, start[i] - 1, ids] for i in range(out.shape[0])])
    torch.testing.assert_close(out, expected)
    jac = explicit_jacobian(model, fn, batch)
    full, trace = references(jac)
    for implementation in ("jacobian", "structured"):
        got = empirical_ntk(model, fn, batch, implementation=implementation)
        assert rel(got.matrix, full) < 1e-11
        got = empirical_ntk(model, fn, batch, implementation=implementation, trace=True, chunk_size=2)
        assert rel(got.matrix, trace) < 1e-11
    assert got.structured_layers  # the attention and MLP projections


def test_batched_method_equals_explicit_jacobian(mlp64):
    """method='batched': one forward of the chunk, one backward vmapped over the output cotangents."""
    model, batch, jac = mlp64
    full, trace = references(jac)
    for chunk in (3, 64):
        got = empirical_ntk(model, vec_output, batch, method="batched", chunk_size=chunk, implementation="structured")
        assert rel(got.matrix, full) < 1e-12
        got = empirical_ntk(model, vec_output, batch, method="batched", trace=True, chunk_size=chunk)
        assert rel(got.matrix, trace) < 1e-12
    scalar = explicit_jacobian(model, scalar_output, batch)[:, 0]
    assert rel(empirical_ntk(model, scalar_output, batch, method="batched").matrix, scalar @ scalar.T) < 1e-12
    seq = SequenceModel().double()
    with pytest.raises(DeltalensError, match="'batched': 'scale' is not in a structured"):
        empirical_ntk(seq, vec_output, {"x": torch.randn(3, 4, 5, dtype=torch.float64)}, method="batched")


@pytest.mark.parametrize("kind", ["scalar", "full", "trace"])
def test_auto_runs_an_mlp_batched_and_the_same_bits_whatever_the_chunks(kind, monkeypatch):
    """Issue 21: on a model whose differentiated tensors all sit in structured nn.Linear layers,
    the default method is 'batched' (one forward and backward per tile of 64, checked for examples
    that interact); its kernel and J·v match the float64 J Jᵀ, and neither chunk_size nor the
    budget (while a tile fits) changes a bit."""
    from deltalens.kernel import gradients

    model = VectorMLP(d_in=6, hidden=9, m=4).double()
    batch = {"x": torch.randn(70, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))}
    fn = scalar_output if kind == "scalar" else vec_output
    jac = explicit_jacobian(model, fn, batch)
    gen = torch.Generator().manual_seed(6)
    vec = {k: torch.randn(p.shape, dtype=torch.float64, generator=gen) for k, p in model.named_parameters()}
    flat = torch.cat([v.reshape(-1) for v in vec.values()])
    runs = [empirical_ntk(model, fn, batch, trace=kind == "trace", vectors={"v": vec}, **kw)
            for kw in (dict(), dict(chunk_size=7), dict(memory_budget_mb=1))]
    full, trace = references(jac)
    expected = {"scalar": full, "full": full, "trace": trace}[kind]
    assert {r.method for r in runs} == {"batched"} and runs[0].chunk_size == 64
    if kind != "scalar":  # the check in a backward of its own (many outputs) passes and changes nothing
        monkeypatch.setattr(gradients, "FOLDED_CHECK_NUMEL", 0)
        alone = empirical_ntk(model, fn, batch, trace=kind == "trace", vectors={"v": vec})
        assert alone.method == "batched" and torch.equal(alone.matrix, runs[0].matrix)
    assert rel(runs[0].matrix, expected) < 1e-12
    assert rel(runs[0].jv["v"], jac.reshape(-1, jac.shape[2]) @ flat) < 1e-12
    for r in runs[1:]:
        assert torch.equal(r.matrix, runs[0].matrix) and torch.equal(r.jv["v"], runs[0].jv["v"])
    # a budget that cannot hold one tile's taps: per-example gradients (the documented exception)
    tiny = empirical_ntk(model, fn, batch, trace=kind == "trace", memory_budget_mb=0.01)
    assert tiny.method == "vmap" and rel(tiny.matrix, expected) < 1e-12


class Mixing(torch.nn.Module):
    """An MLP whose examples interact in a batched forward: 'mean' adds the batch mean (every
    example's value changes), 'cumsum' sums over the examples before it (example 0 keeps its
    value; only derivatives show it). Per example, both are functions of that example alone."""

    def __init__(self, how: str):
        super().__init__()
        self.mlp = VectorMLP(d_in=6, hidden=9, m=4)
        self.how = how

    def forward(self, x):
        y = self.mlp(x)
        return y + 0.5 * y.mean(0, keepdim=True) if self.how == "mean" else y.cumsum(0)


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("how", ["mean", "cumsum"])
def test_batched_finds_examples_that_interact(how, fold, monkeypatch):
    """The default method notices the interaction and falls back to per-example gradients (vmap),
    giving the kernel of the per-example function; an explicit 'batched' refuses a forward in
    which example 0's value changes (the caller asserted independence). ``fold``: a vector
    output's check rides in the batched backward, or (many outputs) takes a backward of its own."""
    from deltalens.kernel import gradients

    monkeypatch.setattr(gradients, "FOLDED_CHECK_NUMEL", gradients.FOLDED_CHECK_NUMEL if fold else 0)
    model = Mixing(how).double()
    batch = {"x": torch.randn(9, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7))}
    per_example = torch.cat([explicit_jacobian(model, vec_output, {"x": batch["x"][i:i + 1]}) for i in range(9)])
    full, trace = references(per_example)
    got = empirical_ntk(model, vec_output, batch)
    assert got.method == "vmap" and got.structured_layers and rel(got.matrix, full) < 1e-12
    got = empirical_ntk(model, scalar_output, batch)
    scalar = torch.cat([explicit_jacobian(model, scalar_output, {"x": batch["x"][i:i + 1]}) for i in range(9)])[:, 0]
    assert got.method == "vmap" and rel(got.matrix, scalar @ scalar.T) < 1e-12
    if how == "mean":
        with pytest.raises(DeltalensError, match="example 0's output differs between a batched forward"):
            empirical_ntk(model, vec_output, batch, method="batched")


class TwoHeads(torch.nn.Module):
    """An MLP with a second head that the output function ignores (its layer runs, its output is unused)."""

    def __init__(self):
        super().__init__()
        self.body = VectorMLP(d_in=6, hidden=9, m=4)
        self.aux = torch.nn.Linear(6, 3)

    def forward(self, x):
        self.aux_out = self.aux(x)
        return self.body(x)


@pytest.mark.parametrize("output_fn", [vec_output, scalar_output])
def test_a_layer_whose_output_is_unused_adds_nothing(output_fn):
    """The batched default differentiates every structured layer's output; one the output function
    never reads has zero cotangents (as per-example gradients give), not an autograd error."""
    model = TwoHeads().double()
    batch = {"x": torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(8))}
    jac = explicit_jacobian(model, output_fn, batch)
    full, trace = references(jac)
    got = empirical_ntk(model, output_fn, batch)
    assert got.method == "batched" and "aux" in got.structured_layers and rel(got.matrix, full) < 1e-12
    if output_fn is vec_output:
        assert rel(empirical_ntk(model, output_fn, batch, trace=True).matrix, trace) < 1e-12


@needs_gguf
@pytest.mark.parametrize("fold", [True, False])
def test_batched_default_on_real_smollm2_weights(fold, monkeypatch):
    """SmolLM2-135M's first MLP from the GGUF (de-quantized; up_proj's first 256 rows, SiLU,
    down_proj's first 16 outputs) on real inputs (RMS-normalized token embeddings × ffn_norm):
    the default takes the batched route without a false alarm from its check, folded into the
    batched backward or (``fold`` false) in a backward of its own, and the kernels, traced and
    full, and J·v match a float64 explicit J Jᵀ."""
    from deltalens.kernel import gradients

    monkeypatch.setattr(gradients, "FOLDED_CHECK_NUMEL", gradients.FOLDED_CHECK_NUMEL if fold else 0)
    w = gguf_matrices(["blk.0.ffn_up.weight", "blk.0.ffn_down.weight", "token_embd.weight", "blk.0.ffn_norm.weight"])
    up, down = torch.nn.Linear(576, 256, bias=False), torch.nn.Linear(256, 16, bias=False)
    with torch.no_grad():
        up.weight.copy_(w["blk.0.ffn_up.weight"][:256])
        down.weight.copy_(w["blk.0.ffn_down.weight"][:16, :256])
    model = torch.nn.Sequential(up, torch.nn.SiLU(), down)
    emb = w["token_embd.weight"][[17, 450, 1024, 3001, 9000, 20000]]
    x = emb / emb.pow(2).mean(-1, keepdim=True).sqrt() * w["blk.0.ffn_norm.weight"]
    batch = {"x": x}
    jac = explicit_jacobian(model.double(), vec_output, {"x": x.double()})
    model.float()
    full, trace = references(jac)
    gen = torch.Generator().manual_seed(9)
    vec = {k: torch.randn(p.shape, generator=gen) for k, p in model.named_parameters()}
    flat = torch.cat([v.reshape(-1).double() for v in vec.values()])
    for is_trace, expected in ((False, full), (True, trace)):
        got = empirical_ntk(model, vec_output, batch, trace=is_trace, vectors={"v": vec})
        assert got.method == "batched" and rel(got.matrix, expected) < 1e-6
    assert rel(got.jv["v"], jac.reshape(-1, jac.shape[2]) @ flat) < 1e-6
    scalar = jac.sum(1)
    got = empirical_ntk(model, scalar_output, batch)
    assert got.method == "batched" and rel(got.matrix, scalar @ scalar.T) < 1e-6


def test_batched_forward_check_tolerates_an_output_near_zero():
    """Example 0's output is exactly 0 in its own forward (f(x) − f(x₀), f(x₀) from that same
    one-example forward) and a rounding away from it in a batched one (float32 GEMMs of 64 rows
    round otherwise): the forward check measures the gap against the chunk's largest output, so
    neither the default nor an explicit 'batched' mistakes rounding for examples that interact."""
    model = VectorMLP(d_in=32, hidden=64, m=10, seed=3)
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        offset = model(x[:1])[0]

    def centred(m, b):
        return m(b["x"]) - offset

    with torch.no_grad():
        assert torch.equal(centred(model, {"x": x[:1]})[0], torch.zeros(10))
        assert not torch.equal(centred(model, {"x": x})[0], torch.zeros(10))  # the planted rounding gap
    jac = explicit_jacobian(model.double(), vec_output, {"x": x.double()})
    model.float()
    _, trace = references(jac)
    for method in ("auto", "batched"):
        got = empirical_ntk(model, centred, {"x": x}, trace=True, method=method)
        assert got.method == "batched" and rel(got.matrix, trace) < 1e-6
