"""The hf sampling backend: distribution, prompt encoded once, reproducibility, resume, CLI."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from behavior_helpers import markov_llama, markov_table, write_jsonl
from scipy import stats

from deltalens.behavior.sampling import draw_tokens, sample
from deltalens.errors import DeltalensError
from tests.fingerprints import folder_sha256

PROBLEMS = [{"id": "a", "prompt": "1+1=", "answer": "2"}, {"id": "b", "prompt": "12+30=", "answer": "42"},
            {"id": "c", "prompt": "7", "answer": "7"}]


@pytest.fixture(scope="module")
def markov(tok):
    table = markov_table(tok, seed=1, eos_logit=-30.0)  # EOS practically never: long sequences
    return markov_llama(tok, table), table


def test_draw_tokens_top_p_and_greedy():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    u = torch.linspace(0, 0.999, 200)
    toks = draw_tokens(logits.expand(200, 4), u, 1.0, 0.8)
    assert set(toks.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.8: nucleus {0, 1}
    assert (toks == 0).float().mean().item() == pytest.approx(0.5 / 0.8, abs=0.01)
    assert draw_tokens(logits, torch.tensor([0.99]), 0.0, 1.0).item() == 0
    toks = draw_tokens(logits.expand(200, 4), u, 1.0, 1.0)
    assert Counter(toks.tolist()) == {0: 100, 1: 60, 2: 30, 3: 10}


def test_samples_follow_the_model_distribution(tok, markov):
    model, table = markov
    rows = sample(model, [{"id": "p", "prompt": "0"}], n=48, tokenizer=tok, max_new_tokens=30, seed=3)
    # transitions observed vs the hand-set next-token distribution of each group
    for g in range(2):
        counts = Counter()
        for r in rows:
            seq = tok("0")["input_ids"] + tok(r["completion"])["input_ids"]
            counts.update(seq[i + 1] for i in range(len(seq) - 1) if seq[i] % 2 == g)
        p = torch.softmax(table[g], -1).numpy().astype(np.float64)
        ids = [i for i in range(len(p)) if p[i] > 1e-6]
        obs = np.array([counts[i] for i in ids], dtype=float)
        exp = p[ids] / p[ids].sum() * obs.sum()
        assert stats.chisquare(obs, exp).pvalue > 1e-3
    r = rows[0]
    assert r["n_tokens"] == 30 and r["finish_reason"] == "length"
    # summed logprob equals the hand-set model's log-probability of the completion
    seq = tok("0")["input_ids"] + tok(r["completion"])["input_ids"]
    ref = sum(torch.log_softmax(table[seq[i] % 2], -1)[seq[i + 1]].item() for i in range(len(seq) - 1))
    assert r["logprob"] == pytest.approx(ref, abs=1e-3)


def test_prompt_encoded_once(tok, random_model):
    shapes = []
    hook = random_model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                                  with_kwargs=True)
    try:
        sample(random_model, PROBLEMS, n=16, tokenizer=tok, max_new_tokens=3, seed=0, batch_size=64)
    finally:
        hook.remove()
    assert shapes[0] == (3, 6)  # one prefill of the 3 prompts (padded to 6), not 48 rows
    assert 40 <= shapes[1][0] <= 48 and shapes[1][1] == 1 and len(shapes) == 3  # rows that hit EOS are dropped


def test_eos_and_stop_strings(tok):
    table = markov_table(tok, seed=2, eos_logit=3.0)  # EOS likely
    model = markov_llama(tok, table)
    rows = sample(model, PROBLEMS[:1], n=16, tokenizer=tok, max_new_tokens=30, seed=0)
    stopped = [r for r in rows if r["finish_reason"] == "stop"]
    assert stopped and all(len(tok(r["completion"])["input_ids"]) == r["n_tokens"] - 1 for r in stopped)
    rows = sample(model, PROBLEMS[:1], n=8, tokenizer=tok, max_new_tokens=30, seed=0, stop=[" "])
    assert all(" " not in r["completion"] for r in rows)


def test_reproducible_independent_of_batching_and_resumable(tmp_path, tok, random_model):
    kw = dict(tokenizer=tok, max_new_tokens=6, seed=5, temperature=0.8, top_p=0.9)
    a = sample(random_model, PROBLEMS, n=6, batch_size=4, **kw)
    b = sample(random_model, PROBLEMS, n=6, batch_size=64, **kw)
    key = lambda rows: sorted((r["id"], r["sample_index"], r["completion"]) for r in rows)  # noqa: E731
    assert key(a) == key(b)
    assert len({r["completion"] for r in a}) > 10
    c = sample(random_model, PROBLEMS, n=6, seed=6, tokenizer=tok, max_new_tokens=6, temperature=0.8, top_p=0.9)
    assert key(c) != key(a)
    # resume: 2 samples, then 6 -> only the 4 missing ones are appended, equal to a fresh run
    out = tmp_path / "s.jsonl"
    sample(random_model, PROBLEMS, n=2, out=out, model_name="m", **kw)
    first = out.read_text()
    rows = sample(random_model, PROBLEMS, n=6, out=out, model_name="m", **kw)
    text = out.read_text()
    assert text.startswith(first) and len(text.splitlines()) == 18
    assert key(rows) == key(a)
    sample(random_model, PROBLEMS, n=6, out=out, model_name="m", **kw)  # nothing missing: no change
    assert out.read_text() == text
    with pytest.raises(DeltalensError, match="conflicts"):
        sample(random_model, PROBLEMS, n=6, out=out, model_name="other", **kw)


def test_sample_cli_with_verification(tmp_path, tok, random_model, run_cli):
    random_model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    probs = write_jsonl(tmp_path / "p.jsonl", PROBLEMS)
    out = tmp_path / "s.jsonl"
    code, stdout, err = run_cli("sample", tmp_path / "tiny", "--problems", probs, "-n", "4", "--max-new-tokens", "4",
                                "--out", out, "--verify", "numeric")
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 12 and {r["model"] for r in rows} == {"tiny"}
    assert all(isinstance(r["correct"], bool) and 1 <= r["n_tokens"] <= 4 for r in rows)
    assert set(rows[0]) == {"id", "model", "sample_index", "completion", "extracted", "correct", "logprob",
                            "n_tokens", "finish_reason"}
    # bad inputs: problem without answer when verifying; duplicated ids; conflicting name on resume
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "prompt": "x"}])
    code, _, err = run_cli("sample", tmp_path / "tiny", "--problems", bad, "--out", out, "--verify", "numeric")
    assert code == 2 and "no answer" in err
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"id": 1, "prompt": "x"}, {"id": "1", "prompt": "y"}])
    code, _, err = run_cli("sample", tmp_path / "tiny", "--problems", dup, "--out", out)
    assert code == 2 and "dup.jsonl:2: duplicated problem id '1'" in err
    code, _, err = run_cli("sample", tmp_path / "tiny", "--problems", probs, "--out", out, "--model-name", "x")
    assert code == 2 and "conflicts" in err
    code, _, err = run_cli("sample", tmp_path / "nothing", "--problems", probs, "--out", out)
    assert code == 2 and "config.json" in err
    # a resume must draw the same distribution: other settings are refused, more samples are added
    code, _, err = run_cli("sample", tmp_path / "tiny", "--problems", probs, "-n", "5", "--max-new-tokens", "4",
                           "--out", out, "--temperature", "0.7")
    assert code == 2 and "s.jsonl: its samples were drawn with temperature 1.0, this run asks 0.7" in err
    assert len(out.read_text().splitlines()) == 12
    code, _, err = run_cli("sample", tmp_path / "tiny", "--problems", probs, "-n", "5", "--max-new-tokens", "4",
                           "--out", out)
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 15


def test_the_weights_are_recorded_and_carried_to_passk_and_support(tmp_path, tok, random_model):
    import shutil

    from deltalens.behavior import passk, support
    from deltalens.lab.tiny_model import build_tiny_llama

    random_model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    shutil.copytree(tmp_path / "tiny", tmp_path / "copy")  # the same weights in another folder
    kw = dict(n=2, max_new_tokens=3, verifier="numeric")
    out, out2 = tmp_path / "s.jsonl", tmp_path / "s2.jsonl"
    sample(tmp_path / "tiny", PROBLEMS, out=out, **kw)
    sample(tmp_path / "copy", PROBLEMS, out=out2, **kw)
    weights = {"sha256": folder_sha256(tmp_path / "tiny")}
    assert json.loads((tmp_path / "s.jsonl.sampling.json").read_text())["fingerprint"] == weights
    assert support(out, out2)["fingerprints"] == {"base": weights, "tuned": weights}
    assert passk([out, out2])["crossover"]["fingerprints"] == {"base": weights, "tuned": weights}
    # samples given as rows (not a file) have no record to read: None, as for samples drawn before #20
    rows = [json.loads(x) for x in out2.read_text().splitlines()]
    assert support(out, rows)["fingerprints"] == {"base": weights, "tuned": None}
    # a resume from other weights saved in the same folder is refused before anything is drawn
    build_tiny_llama(tokenizer=tok, seed=1).save_pretrained(tmp_path / "tiny")
    with pytest.raises(DeltalensError, match="s.jsonl: its samples were drawn from other weights"):
        sample(tmp_path / "tiny", PROBLEMS, out=out, **{**kw, "n": 3})
    assert len(out.read_text().splitlines()) == 6


def test_right_padding_tokenizer_gives_the_same_samples(tok, random_model):
    kw = dict(tokenizer=tok, n=3, max_new_tokens=4, seed=2)
    left = sample(random_model, PROBLEMS, **kw)
    tok.padding_side = "right"
    try:
        right = sample(random_model, PROBLEMS, **kw)
    finally:
        tok.padding_side = "left"
    assert [r["completion"] for r in left] == [r["completion"] for r in right]


def test_limit_samples_the_first_problems_of_each_task_and_resumes(tmp_path, tok, random_model):
    """--limit N: the first N problems of each task; a later run without it adds only the rest, and
    a limited run over a file holding every problem's samples adds nothing (issue 16 §9)."""
    problems = [{"id": f"{t}{i}", "prompt": f"{i}+{i}=", "answer": str(2 * i), "task": t}
                for t in ("x", "y") for i in range(3)]
    kw = dict(tokenizer=tok, max_new_tokens=3, seed=1, n=2, model_name="m")
    out = tmp_path / "s.jsonl"
    rows = sample(random_model, problems, out=out, limit=1, **kw)
    assert sorted({r["id"] for r in rows}) == ["x0", "y0"] and len(rows) == 4
    full = sample(random_model, problems, out=out, **kw)
    assert len(full) == 12 and out.read_text().splitlines()[:4] == [json.dumps(r) for r in rows]
    before = out.read_text()
    assert len(sample(random_model, problems, out=out, limit=2, **kw)) == 12 and out.read_text() == before
    fresh = sample(random_model, problems, **kw)
    key = lambda rs: sorted((r["id"], r["sample_index"], r["completion"]) for r in rs)  # noqa: E731
    assert key(full) == key(fresh)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(DeltalensError, match="--limit: expected a positive number"):
            sample(random_model, problems, limit=bad, **kw)
