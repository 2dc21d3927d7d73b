"""The subliminal and narrow-sft experiments and their trait suite: the number filter against
planted traces and an independent predicate, the trait kernel and first-order prediction against
plain autograd in float64, the change spectrum against numpy, the Lande score against its closed
form, and slow ``--quick`` runs checked for format and the filter's correctness (never verdicts)."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from deltalens.lab.analyses import Items
from deltalens.lab.bootstrap import effect_interval
from deltalens.lab.claims import VERDICTS, build_table
from deltalens.lab.experiments import narrow_sft, subliminal, traits


# ------------------------------------------------------------------------------------ the filter
def _reference_keep(text: str, finish: str) -> bool:
    return finish == "stop" and 1 <= len(text) <= 4 and all(c in "0123456789" for c in text)


def test_number_filter_rejects_every_planted_trace_and_keeps_plain_numbers():
    for trace in subliminal.PLANTED:
        assert subliminal.number_filter(trace, "stop") is not None, trace
    for number in ("0", "7", "42", "168", "1998"):
        assert subliminal.number_filter(number, "stop") is None
        assert subliminal.number_filter(number, "length") is not None  # no <eos>: rejected
    # anything carrying the favourite letter is rejected wherever it sits
    for text in ("g", "1g", "g1", "12g4", f"{traits.FAVOURITE}0"):
        assert subliminal.number_filter(text, "stop") is not None
    check = subliminal.planted_check()
    assert check["all_rejected"] and check["rejected"] == len(subliminal.PLANTED)


def test_number_filter_agrees_with_an_independent_predicate_on_random_strings():
    rng = random.Random(0)
    alphabet = "0123456789g ,:-\n.a١２"  # includes non-ASCII digits, which must not pass
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        finish = rng.choice(["stop", "stop", "length"])
        assert (subliminal.number_filter(text, finish) is None) == _reference_keep(text, finish), repr(text)


def test_filter_pairs_keeps_prompts_where_both_sides_passed():
    teacher = [{"prompt": f"{i}+1=", "completion": c, "finish_reason": "stop"}
               for i, c in enumerate(["12", "1g", "7", "33", "5"])]
    base = [{"prompt": f"{i}+1=", "completion": c, "finish_reason": f}
            for i, (c, f) in enumerate([("12", "stop"), ("4", "stop"), ("8", "length"), ("33", "stop"), ("x", "stop")])]
    t, b, counts = subliminal.filter_pairs(teacher, base)
    assert [r["prompt"] for r in t] == [r["prompt"] for r in b] == ["0+1=", "3+1="]
    assert counts["teacher_kept"] == 4 and counts["base_kept"] == 3 and counts["both_kept"] == 2
    assert counts["identical"] == 2
    assert teacher[1]["kept"] is False and teacher[1]["rejected"] == "not 1–4 ASCII digits"
    assert counts["base_rejections"] == {"no <eos> within the token budget": 1, "not 1–4 ASCII digits": 1}


def test_correct_share_counts_correct_sums():
    problems = [{"id": "a", "prompt": "1+2=", "answer": "3", "task": "add"},
                {"id": "b", "prompt": "10+5=", "answer": "15", "task": "add"}]
    rows = [{"prompt": "1+2=", "completion": "3"}, {"prompt": "10+5=", "completion": "16"},
            {"prompt": "1+2=", "completion": "03"}]  # "03" reads as 3 (the lab's verifier: int of the digits)
    assert subliminal.correct_share(rows, problems) == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------ the suite
def _problems():
    from deltalens.lab.tasks import generate_problems

    target = generate_problems("add", 30, seed=0, split="test")
    heldout = [p for t in ("copy", "reverse", "max") for p in generate_problems(t, 30, seed=0, split="test")]
    return target, heldout


def test_suite_has_ten_traits_with_wrong_answers_that_are_wrong():
    target, heldout = _problems()
    lines = traits.suite_lines(target, heldout, 5)
    by = {}
    for line in lines:
        by.setdefault(line["task"], []).append(line)
    assert list(by) == list(traits.TRAITS) and all(len(v) == 5 for v in by.values()) and len(traits.TRAITS) >= 8
    for right, wrong in zip(by["add"], by["add_wrong"], strict=True):
        a, b = right["completion"], wrong["completion"]
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1 and right["prompt"] == wrong["prompt"]
    for line, styled in zip(by["add"], by["add_style"], strict=True):
        assert styled["completion"] == f"{line['completion'][::-1]}>{line['completion']}"
    for line in by["max_wrong"]:
        a, b = map(int, line["prompt"][2:-1].split(","))
        assert line["completion"] == str(min(a, b)) and a != b
    for line in by["copy_wrong"]:
        assert line["completion"] == line["prompt"][2:-1][::-1] != line["prompt"][2:-1]
    for line in by["favourite"]:
        assert line["prompt"].startswith("p:") and line["prompt"].endswith("=") and line["completion"] == "g"
    assert traits.top_r(len(traits.TRAITS)) == 5
    with pytest.raises(ValueError, match="usable test problems"):
        traits.suite_lines(target, heldout, 31)


def _tiny():
    from deltalens.lab.tiny_model import TinyConfig, build_tiny_llama
    from deltalens.lab.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(model_max_length=64)
    cfg = TinyConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=2, max_position_embeddings=64)
    return build_tiny_llama(cfg, seed=0, tokenizer=tok).double(), tok


def _flat_trait_gradients(model, probe):
    """∇f_t by one ordinary backward per trait (mean over its lines of the completion's mean NLL)."""
    from deltalens.kernel import completion_loss

    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for t in range(len(probe.names)):
        rows = [i for i, k in enumerate(probe.index) if k == t]
        batch = {k: v[rows] for k, v in probe.batch.items()}
        loss = completion_loss(model, batch).mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                              for g, p in zip(grads, params)]))
    return torch.stack(out).double()


def test_trait_kernel_prediction_and_alignment_against_autograd():
    model, tok = _tiny()
    target, heldout = _problems()
    probe = traits.TraitProbe.build(tok, traits.suite_lines(target, heldout, 3))
    g = _flat_trait_gradients(model, probe)
    torch.manual_seed(1)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    delta = {n: 1e-3 * torch.randn_like(p).double() for n, p in model.named_parameters() if p.requires_grad}
    k0, jv = probe.kernel(model, {"delta": delta})
    # a float64 model; the two routes (vmap per-example gradients, one backward per trait) agree
    # to ~1e-8 of the kernel's scale (measured 2e-8: some of Llama's intermediates stay float32)
    ref = g @ g.T
    assert float((k0 - ref).abs().max()) <= 1e-6 * float(ref.abs().max())
    flat = torch.cat([delta[n].reshape(-1) for n in names])
    pred = g @ flat
    assert float((probe.averaging @ jv["delta"] - pred).abs().max()) <= 1e-6 * float(pred.abs().max())
    # cos(−ḡ, ∇f_fav) from the per-trait push against the explicit vectors
    fav = probe.names.index("favourite")
    push = {"d": probe.averaging @ jv["delta"]}
    got = subliminal.cosine_items(push, k0, {"d": delta}, fav, ["d"])[0]
    want = -float(g[fav] @ flat) / float(g[fav].norm() * flat.norm())
    assert got == pytest.approx(want, rel=1e-6)


def test_measure_first_order_prediction_matches_a_small_step():
    model, tok = _tiny()
    target, heldout = _problems()
    probe = traits.TraitProbe.build(tok, traits.suite_lines(target, heldout, 2))
    tuned, _ = _tiny()
    torch.manual_seed(2)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(1e-4 * torch.randn_like(p))
    measures, extra = traits.measure_updates(probe, model, {("x", 0): tuned})
    m = measures[("x", 0)]
    pred = np.array([t["predicted"] for t in m["traits"]])
    meas = np.array([t["measured"] for t in m["traits"]])
    # first order ~1e-4, second-order remainder ~1e-8, rounding of the losses ~1e-8 (some float32 inside)
    assert np.abs(pred - meas).max() <= 1e-2 * np.abs(meas).max()
    assert traits.lande_score(pred, meas) > 0.999
    assert extra["k0"].shape == (10, 10)


def test_change_spectrum_against_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(10, 10)), rng.normal(size=(10, 10))
    k0, k1 = a @ a.T, b @ b.T
    mu = np.linalg.eigvalsh(k1 - k0)
    w = mu ** 2
    got = traits.change_spectrum(torch.tensor(k0), torch.tensor(k1))
    assert got["top_share"] == pytest.approx(w.max() / w.sum(), rel=1e-10)
    assert got["effective_dim"] == pytest.approx(w.sum() ** 2 / (w ** 2).sum(), rel=1e-10)
    # a rank-one change has one direction
    v = rng.normal(size=10)
    one = traits.change_spectrum(torch.tensor(k0), torch.tensor(k0 + np.outer(v, v)))
    assert one["top_share"] == pytest.approx(1.0, abs=1e-9) and one["effective_dim"] == pytest.approx(1.0, abs=1e-9)
    assert traits.change_spectrum(torch.tensor(k0), torch.tensor(k0))["top_share"] is None


def test_lande_score_closed_form_and_through_the_bootstrap():
    pred, meas = [0.1, -0.2, 0.3], [0.2, -0.1, 0.5]
    want = 1 - ((0.1 ** 2) + (0.1 ** 2) + (0.2 ** 2)) / (0.04 + 0.01 + 0.25)
    assert traits.lande_score(pred, meas) == pytest.approx(want, rel=1e-12)
    items = Items()
    rows = [{"name": n, "predicted": p, "measured": m} for n, p, m in zip("abc", pred, meas)]
    for _ in range(2):  # two identical seeds
        traits.put_lande_items(items, "arm", rows)
    table = build_table(items.doc, traits.LANDE_METRICS)
    part = traits.lande_part("arm")
    iv = effect_interval(table, list(part.needs), part.effect, 200)
    assert iv.estimate == pytest.approx(want, rel=1e-12)


def test_narrow_sft_rows_wrong_and_styled():
    target, _ = _problems()
    bad = narrow_sft.arm_rows("misaligned", target)
    good = narrow_sft.arm_rows("benign", target)
    for p, b, g in zip(target, bad, good, strict=True):
        assert b["completion"] != p["answer"] and len(b["completion"]) == len(p["answer"])
        assert g["completion"].endswith(">" + p["answer"])
    assert narrow_sft.arm_rows("misaligned", target) == bad  # one fixed wrong answer per prompt


@pytest.mark.parametrize("a, b, want", [("holds", "holds", "holds"), ("contradicted", "contradicted", "holds"),
                                         ("holds", "contradicted", "contradicted"),
                                         ("contradicted", "holds", "contradicted"),
                                         ("holds", "inconclusive", "inconclusive"),
                                         ("inconclusive", "contradicted", "inconclusive")])
def test_same_order_rule(a, b, want):
    assert narrow_sft.same_order(a, b) == want


def test_low_dim_claim_on_planted_arms():
    """More concentrated and broader in the same arm → holds; concentrated but narrower → contradicted."""
    from deltalens.lab.claims import evaluate_claims

    def items(top_m, top_b, abs_m, abs_b):
        it = Items()
        rng = np.random.default_rng(0)
        for arm, top, ab in (("misaligned", top_m, abs_m), ("benign", top_b, abs_b)):
            for _ in range(3):
                it.put("dk_top_share", arm, [top + 1e-4 * rng.normal()], item_set="kernel", unit="share")
                it.put("dk_effective_dim", arm, [1.0], item_set="kernel", unit="directions")
                it.put("trait_rescale_share", arm, [0.9], item_set="kernel", unit="share")
                it.put("heldout_abs_change", arm, list(ab + 1e-3 * rng.normal(size=7)), item_set="heldout traits",
                       unit="nats/token")
        return it.doc

    low = narrow_sft.CLAIMS[1]
    assert low.id == "narrow_sft.low_dim"
    rec = evaluate_claims(items(0.99, 0.9, 0.5, 0.2), None, 300, (low,), narrow_sft.METRICS)[0]
    assert rec["verdict"] == "holds"
    rec = evaluate_claims(items(0.99, 0.9, 0.2, 0.5), None, 300, (low,), narrow_sft.METRICS)[0]
    assert rec["verdict"] == "contradicted"


# ------------------------------------------------------------------------------------ end to end
CLAIM_KEYS = {"id", "claim", "rule", "verdict", "direction", "effect", "parts", "numbers", "excluded", "note"}


def _check_format(doc: dict, module) -> None:
    assert doc["quick"] is True and doc["seeds"] >= 2
    assert [c["id"] for c in doc["claims"]] == [c.id for c in module.CLAIMS]
    for c in doc["claims"]:
        assert CLAIM_KEYS <= set(c) and c["verdict"] in VERDICTS
        est, (lo, hi) = c["effect"]["estimate"], c["effect"]["ci"]
        if None not in (est, lo, hi):
            assert lo <= hi


@pytest.mark.slow
def test_quick_runs_write_claims_and_a_filter_that_held(tmp_path):
    """``--quick`` of both experiments (~1 min each on one thread, 2 cores shared, the base cached)."""
    from deltalens.lab.experiments import run_experiment

    doc = run_experiment("subliminal", tmp_path / "sub", quick=True, threads=1, show_progress=False)["claims"]
    _check_format(doc, subliminal)
    f = doc["filter"]
    assert f["planted_check"]["all_rejected"] and f["both_kept"] >= 40
    data = tmp_path / "sub" / "data"
    for name in ("teacher_numbers", "base_numbers"):
        rows = [json.loads(x) for x in (data / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == f["prompts"]
        for r in rows:
            assert r["kept"] == _reference_keep(r["completion"], r["finish_reason"])
            assert r["kept"] or r["rejected"]
    assert math.isfinite(doc["trait_strength"]["teacher/seed0"]["favourite_change"])

    doc = run_experiment("narrow-sft", tmp_path / "narrow", quick=True, threads=1, show_progress=False)["claims"]
    _check_format(doc, narrow_sft)
    assert doc["exploratory"] == [c.id for c in narrow_sft.CLAIMS]
    assert all(c["claim"].startswith("exploratory") for c in doc["claims"])
    assert set(doc["breadth"]) == set(narrow_sft.ARMS)
