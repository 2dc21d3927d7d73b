"""Suite accuracy/loss on a hand-set model and the forgetting fit against scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from behavior_helpers import markov_llama, write_jsonl
from scipy import stats

from deltalens.behavior.evaluate import evaluate, forgetting, linear_fit
from deltalens.errors import DeltalensError
from tests.fingerprints import folder_sha256


def _table(tok, top: str):
    table = torch.full((1, len(tok)), -1e4)
    for i, c in enumerate("0123456789"):
        table[0, tok.convert_tokens_to_ids(c)] = 0.1 * i
    table[0, tok.convert_tokens_to_ids(top)] = 3.0
    table[0, tok.eos_token_id] = -1e4
    return table


SUITE = [{"id": "a", "prompt": "x=", "answer": "777", "task": "t1"},
         {"id": "b", "prompt": "y=", "answer": "12", "task": "t1"},
         {"id": "c", "prompt": "zz=", "answer": "777", "task": "t2"}]


def test_evaluate_closed_form(tok):
    table = _table(tok, "7")
    model = markov_llama(tok, table)
    res = evaluate(model, SUITE, tokenizer=tok, max_new_tokens=3, model_name="m")
    lp = torch.log_softmax(table[0].double(), -1)
    nll = lambda ans: -sum(lp[tok.convert_tokens_to_ids(c)].item() for c in ans) / len(ans)  # noqa: E731
    # greedy output is "777": right for a and c, wrong for b
    assert res["tasks"]["t1"] == {"n": 2, "accuracy": 0.5, "mean_loss": pytest.approx((nll("777") + nll("12")) / 2)}
    assert res["tasks"]["t2"]["accuracy"] == 1.0 and res["tasks"]["t2"]["mean_loss"] == pytest.approx(nll("777"))
    assert res["mean_accuracy"] == pytest.approx(0.75)


def test_linear_fit_matches_least_squares():
    # reference: numpy's least-squares polynomial fit and R² = 1 − SS_res/SS_tot written out
    x, y = np.array([0.1, 0.4, 0.35, 0.9, 1.2]), np.array([0.02, 0.09, 0.05, 0.2, 0.31])
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1 - ((y - intercept - slope * x) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    fit = linear_fit(x, y)
    assert fit["slope"] == pytest.approx(slope, rel=1e-12) and fit["intercept"] == pytest.approx(intercept, rel=1e-12)
    assert fit["r2"] == pytest.approx(r2, rel=1e-12)
    assert linear_fit([0, 1, 2], [5, 5, 5])["r2"] is None
    with pytest.raises(DeltalensError):
        linear_fit([1.0, 1.0], [0, 1])


def _ev(name, acc, loss):
    return {"model": name, "tasks": {"t": {"n": 10, "accuracy": acc, "mean_loss": loss}}}


def _div(name, kl):
    return {"base": "b", "tuned": name, "forward_kl": {"token_mean": kl, "sequence_mean": 10 * kl},
            "reverse_kl": {"token_mean": kl, "sequence_mean": kl}}


def test_forgetting_and_cli(tmp_path, tok, run_cli):
    base = _ev("b", 0.8, 1.0)
    evals = [_ev("t1", 0.7, 1.2), _ev("t2", 0.5, 1.5), _ev("t3", 0.75, 1.05)]
    divs = [_div("t1", 0.2), _div("t2", 0.6), _div("t3", 0.1)]
    res = forgetting(base, evals, list(reversed(divs)))
    ref = stats.linregress([0.2, 0.6, 0.1], [0.1, 0.3, 0.05])
    assert [m["model"] for m in res["models"]] == ["t1", "t2", "t3"]
    assert res["fit_accuracy_drop"]["r2"] == pytest.approx(ref.rvalue ** 2)
    assert res["fit_loss_increase"]["slope"] == pytest.approx(stats.linregress([0.2, 0.6, 0.1], [0.2, 0.5, 0.05]).slope)
    with pytest.raises(DeltalensError, match="'t3'"):
        forgetting(base, evals, divs[:2])
    with pytest.raises(DeltalensError, match="conflicts"):
        forgetting(base, evals + [_ev("t1", 0.1, 1)], divs)
    # CLI end to end: evaluate two hand-set models, feed forgetting
    files = {}
    for name, top in (("base", "7"), ("tuned", "1")):
        model = markov_llama(tok, _table(tok, top))
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    suite = write_jsonl(tmp_path / "suite.jsonl", SUITE)
    for name in ("base", "tuned"):
        code, out, err = run_cli("evaluate", tmp_path / name, "--suite", suite, "--out", tmp_path / f"{name}.json",
                                 "--max-new-tokens", "3")
        assert code == 0, err
        files[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert files["base"]["tasks"]["t2"]["accuracy"] == 1.0 and files["tuned"]["tasks"]["t2"]["accuracy"] == 0.0
    assert [files[n]["fingerprint"] for n in ("base", "tuned")] == [{"sha256": folder_sha256(tmp_path / n)}
                                                                   for n in ("base", "tuned")]
    for i, kl in enumerate((0.3, 0.7)):
        (tmp_path / f"d{i}.json").write_text(json.dumps(_div(f"tuned{i}", kl)))
        ev = dict(files["tuned"], model=f"tuned{i}")
        (tmp_path / f"e{i}.json").write_text(json.dumps(ev))
    code, out, err = run_cli("forgetting", "--base-eval", tmp_path / "base.json", "--eval", tmp_path / "e0.json",
                             "--eval", tmp_path / "e1.json", "--divergence", tmp_path / "d0.json",
                             "--divergence", tmp_path / "d1.json", "--out", tmp_path / "f", "--task", "t2")
    assert code == 0, err
    data = json.loads((tmp_path / "f" / "forgetting.json").read_text())
    assert [m["accuracy_drop"] for m in data["models"]] == [1.0, 1.0] and data["fit_accuracy_drop"]["r2"] is None
    assert math.isclose(data["fit_accuracy_drop"]["slope"], 0.0, abs_tol=1e-12)
    code, _, err = run_cli("forgetting", "--base-eval", tmp_path / "base.json", "--eval", tmp_path / "e0.json",
                           "--divergence", tmp_path / "base.json", "--out", tmp_path / "f2")
    assert code == 2 and "divergence result lacks" in err
