"""KL, entropy and cross-perplexity against closed forms on models with hand-set distributions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from behavior_helpers import markov_llama, markov_table, write_jsonl
from scipy import stats

from deltalens.behavior.divergence import (answer_entropy, divergence, entropy_categorical, kl_categorical,
                                           kl_estimators, perplexity)
from deltalens.errors import DeltalensError
from tests.fingerprints import folder_sha256

PROMPTS = [{"id": "a", "prompt": "12"}, {"id": "b", "prompt": "3"}]
L = 20


@pytest.fixture(scope="module")
def pair(tok):
    # context-independent distributions (one group): every position has the same p0 / p1;
    # EOS is (numerically) impossible in both, so every sequence has exactly L tokens
    t0 = markov_table(tok, n_groups=1, seed=10, eos_logit=-1e4)
    t1 = markov_table(tok, n_groups=1, seed=11, eos_logit=-1e4)
    return markov_llama(tok, t0), markov_llama(tok, t1), t0[0].double(), t1[0].double()


def test_pure_functions_match_scipy():
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(7)), rng.dirichlet(np.ones(7))
    p[2] = 0.0
    p /= p.sum()
    lp, lq = torch.log(torch.tensor(p)), torch.log(torch.tensor(q))
    assert kl_categorical(lp, lq).item() == pytest.approx(stats.entropy(p, q), rel=1e-12)
    assert entropy_categorical(lp).item() == pytest.approx(stats.entropy(p), rel=1e-12)
    assert kl_categorical(lp, lp).item() == 0.0
    assert answer_entropy(["1", "1", None, "2"]) == pytest.approx(stats.entropy([2, 1, 1]))
    assert answer_entropy([None, None]) == 0.0
    assert perplexity([math.log(0.5), math.log(0.25)]) == pytest.approx(math.sqrt(8))
    est = kl_estimators([math.log(0.5), math.log(0.25)], [math.log(0.25), math.log(0.5)])
    assert est["k1"] == pytest.approx(0.0, abs=1e-15)
    assert est["k3"] == pytest.approx(((0.5 - 1 - math.log(0.5)) + (2 - 1 - math.log(2))) / 2)


def test_closed_forms_on_hand_set_models(tok, pair):
    m0, m1, l0, l1 = pair
    res = divergence(m0, m1, PROMPTS, tokenizer=tok, n_samples=12, max_new_tokens=L, seed=0,
                     base_name="b", tuned_name="t")
    p0, p1 = l0.softmax(-1).numpy(), l1.softmax(-1).numpy()
    keep = (p0 > 1e-12) | (p1 > 1e-12)
    kl01 = stats.entropy(p0[keep], p1[keep])
    kl10 = stats.entropy(p1[keep], p0[keep])
    assert res["forward_kl"]["token_mean"] == pytest.approx(kl01, rel=1e-6)
    assert res["reverse_kl"]["token_mean"] == pytest.approx(kl10, rel=1e-6)
    assert res["forward_kl"]["sequence_mean"] == pytest.approx(L * kl01, rel=1e-6)
    assert res["reverse_kl"]["sequence_mean"] == pytest.approx(L * kl10, rel=1e-6)
    assert res["entropy"]["base"]["token"] == pytest.approx(stats.entropy(p0[keep]), rel=1e-6)
    assert res["entropy"]["tuned"]["token"] == pytest.approx(stats.entropy(p1[keep]), rel=1e-6)
    # cross-perplexity: exp of the cross-entropy H(p1, p0) = H(p1) + KL(p1||p0), up to sampling noise
    ce10 = stats.entropy(p1[keep]) + kl10
    ce01 = stats.entropy(p0[keep]) + kl01
    n_tok = len(PROMPTS) * 12 * L
    for got, ce, p_s, p_o in ((res["cross_perplexity"]["tuned_under_base"], ce10, p1, p0),
                              (res["cross_perplexity"]["base_under_tuned"], ce01, p0, p1)):
        sd = math.sqrt(np.sum(p_s[keep] * (np.log(p_o[keep]) + ce) ** 2) / n_tok)
        assert abs(math.log(got) - ce) < 5 * sd
    assert res["n_prompts"] == 2 and res["n_samples"] == 12 and "exact" in res["method"]
    # the sample estimators k1/k3 are unbiased for the same KL: they land near the exact value
    for side, kl, p_s, p_o in (("forward_kl", kl01, p0, p1), ("reverse_kl", kl10, p1, p0)):
        lr = np.log(p_o[keep]) - np.log(p_s[keep])
        sd1 = math.sqrt(np.sum(p_s[keep] * (-lr - kl) ** 2) / n_tok)
        sd3 = math.sqrt(np.sum(p_s[keep] * (np.expm1(lr) - lr - kl) ** 2) / n_tok)
        assert abs(res[side]["k1_estimate"] - kl) < 5 * sd1
        assert abs(res[side]["k3_estimate"] - kl) < 5 * sd3
    # answer entropy: the numeric extractor on digit strings; at most ln(12) per prompt
    assert 0 <= res["entropy"]["base"]["answer"] <= math.log(12) + 1e-12


def test_same_model_has_zero_kl(tok, pair):
    m0 = pair[0]
    res = divergence(m0, m0, PROMPTS[:1], tokenizer=tok, n_samples=4, max_new_tokens=5)
    assert res["forward_kl"]["token_mean"] == 0.0 and res["reverse_kl"]["sequence_mean"] == 0.0
    assert math.log(res["cross_perplexity"]["tuned_under_base"]) > 0
    assert res["base"] != res["tuned"]


def test_divergence_cli(tmp_path, tok, pair, run_cli):
    m0, m1, l0, l1 = pair
    for name, m in (("base", m0), ("tuned", m1)):
        m.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    code, out, err = run_cli("divergence", tmp_path / "base", tmp_path / "tuned", "--prompts", prompts,
                             "--out", tmp_path / "o", "-n", "2", "--max-new-tokens", "6")
    assert code == 0, err
    data = json.loads((tmp_path / "o" / "divergence.json").read_text())
    assert data["base"] == "base" and data["tuned"] == "tuned"
    assert data["fingerprints"] == {"base": {"sha256": folder_sha256(tmp_path / "base")},
                                    "tuned": {"sha256": folder_sha256(tmp_path / "tuned")}}
    assert set(data) >= {"n_prompts", "n_samples", "method", "forward_kl", "reverse_kl", "entropy", "cross_perplexity"}
    assert set(data["entropy"]["base"]) == {"token", "answer"}
    kl01 = stats.entropy(l0.softmax(-1).numpy(), l1.softmax(-1).numpy())
    assert data["forward_kl"]["token_mean"] == pytest.approx(kl01, rel=1e-5)
    code, _, err = run_cli("divergence", tmp_path / "base", tmp_path / "missing", "--prompts", prompts,
                           "--out", tmp_path / "o2")
    assert code == 2 and "config.json" in err and not (tmp_path / "o2").exists()


def test_vocab_mismatch(tok, pair):
    from deltalens.lab.tiny_model import TinyConfig, build_tiny_llama

    other = build_tiny_llama(TinyConfig(vocab_size=len(tok) + 3))
    with pytest.raises(DeltalensError, match="vocabularies"):
        divergence(pair[0], other, PROMPTS[:1], tokenizer=tok, n_samples=1, max_new_tokens=2)
