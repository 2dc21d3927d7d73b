"""Trait kernels, predicted vs measured trait change, and gradient alignment against references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models import LinearInParameters, linear_output

from deltalens.kernel import (
    alignment_share,
    averaging_matrix,
    completion_loss,
    empirical_ntk,
    encode_probes,
    run_align,
    run_kernel,
    suite_to_probes,
    trait_changes,
)

SUITE = [
    {"task": "add", "prompt": "1+2=", "completion": "3"},
    {"task": "add", "prompt": "4+4=", "completion": "8"},
    {"task": "add", "prompt": "12+5=", "completion": "17"},
    {"task": "copy", "prompt": "copy abc:", "completion": "abc"},
    {"task": "copy", "prompt": "copy xy:", "completion": "xy"},
    {"id": "p1", "task": "caps", "prompt": "upper q:", "answer": "Q"},
]
PROBES = [{"prompt": f"{i} times 2 is ", "completion": str(2 * i)} for i in range(6)]


@pytest.fixture(scope="module")
def models():
    from deltalens.lab.tiny_model import build_tiny_llama
    from deltalens.lab.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    base = build_tiny_llama(tokenizer=tok, seed=0).double()  # float64 so a 1e-5 update is measurable
    tuned = build_tiny_llama(tokenizer=tok, seed=0).double()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(1e-5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return tok, base, tuned


def flat_grad(model, scalar) -> torch.Tensor:
    grads = torch.autograd.grad(scalar, list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads]).double()


def test_trait_kernel_equals_gram_of_trait_gradients(models):
    tok, base, tuned = models
    report, arrays = run_kernel(base, tuned, PROBES, tokenizer=tok, traits=SUITE, top_r=2)
    probes, names, index = suite_to_probes(SUITE)
    assert names == ["add", "copy", "caps"]
    rows = []
    for t in range(len(names)):
        lines = [p for p, i in zip(probes, index) if i == t]
        rows.append(flat_grad(base, completion_loss(base, encode_probes(tok, lines)).mean()))
    g = torch.stack(rows)
    np.testing.assert_allclose(arrays["traits_base"].numpy(), (g @ g.T).numpy(), rtol=1e-5)
    block = report["traits"]
    assert [t["name"] for t in block["traits"]] == names
    assert block["comparison"]["top_r"] == 2
    # small update: the first-order prediction J·Δθ matches the measured change
    for row in block["traits"]:
        assert row["predicted"] == pytest.approx(row["measured"], rel=1e-2)  # second-order terms are ~0.5% at this step size


def test_prediction_is_exact_for_a_linear_model():
    model = LinearInParameters()
    batch = {"phi": torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)}
    delta = {"theta": torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)}
    before = linear_output(model, batch).detach()
    result = empirical_ntk(model, linear_output, batch, vectors={"delta": delta})
    with torch.no_grad():
        model.theta.add_(delta["theta"])
    measured = linear_output(model, batch).detach() - before
    a = averaging_matrix([0, 0, 1, 1, 1], 2)
    rows = trait_changes(["a", "b"], a, result.jv["delta"], measured)
    for row in rows:
        assert row["predicted"] == pytest.approx(row["measured"], rel=1e-12)
    assert rows[0]["measured"] == pytest.approx(float(measured[:2].mean()), rel=1e-12)


def test_alignment_against_reference(models):
    tok, base, _ = models
    data = SUITE[:4]
    report = run_align(base, data, PROBES, tokenizer=tok, top_r=2)
    gbar = flat_grad(base, completion_loss(base, encode_probes(tok, data)).mean())
    from deltalens.kernel import completion_logprob

    jac = torch.stack([flat_grad(base, completion_logprob(base, encode_probes(tok, [p]))[0]) for p in PROBES])
    u = (jac @ gbar).numpy()
    values, vectors = np.linalg.eigh((jac @ jac.T).numpy())
    top = vectors[:, np.argsort(values)[::-1][:2]]
    expected = np.sum((top.T @ u) ** 2) / np.sum(u**2)
    a = report["alignment"]
    assert a["share"] == pytest.approx(expected, rel=1e-4)
    assert a["baseline"] == pytest.approx(2 / 6)
    assert a["ratio_to_baseline"] == pytest.approx(expected * 3, rel=1e-4)


def test_alignment_share_planted():
    k = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    u = torch.tensor([1.0, 1.0, 1.0, 1.0])
    assert alignment_share(k, u, 1)["share"] == pytest.approx(0.25)
    assert alignment_share(k, torch.tensor([0.0, 2.0, 0.0, 0.0]), 2)["share"] == pytest.approx(1.0)
