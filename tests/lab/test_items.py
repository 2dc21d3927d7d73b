"""The per-item values the analyses hand to the claims, against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import comb

from deltalens.lab.analyses import at_size, problem_items, tensor_items
from deltalens.lab.gates import gate, paired_change


def test_problem_items_match_the_binomial_formula_and_support_classes():
    rng = np.random.default_rng(0)
    n = 8
    base = {f"p{i}": list(rng.random(n) < q) for i, q in enumerate([0.0, 0.1, 0.5, 0.9, 0.0])}
    arm = {f"p{i}": list(rng.random(n) < q) for i, q in enumerate([0.0, 0.6, 0.0, 0.9, 0.3])}
    arm["p4"][0] = True  # the arm finds p4, which the base never does
    got = problem_items(base, arm, n)
    for i, pid in enumerate(got["ids"]):
        c = sum(arm[pid])
        assert got["pass_at_1"][i] == pytest.approx(c / n)
        assert got["pass_at_kmax"][i] == pytest.approx(1 - comb(n - c, n) / comb(n, n))
        b, t = any(base[pid]), any(arm[pid])
        assert (got["support_kept"][i], got["support_gained"][i], got["support_lost"][i]) == (
            float(b and t), float(t and not b), float(b and not t))
    assert got["support_gained"][4] == 1.0


def _row(name, angle=None, limited=False, nss=0.01, scope="full", erank=5.0, srank=2.0, frac=1.0, numel=4):
    row = {"name": name, "numel": numel, "unchanged_bitwise": 0.5}
    if angle is not None:
        row.update(by_k={"2": {"angle_mean_left_deg": angle - 1, "angle_mean_right_deg": angle + 1,
                               "gap_limited": limited}},
                   nss=nss, nss_scope=scope, effective_rank=erank, stable_rank=srank, numerical_rank_fraction=frac)
    return row


def test_tensor_items_exclude_gap_limited_and_unresolved_and_count_them():
    rows = [_row("a.w", 3.0), _row("b.norm"), _row("c.w", 4.0, limited=True), _row("d.w", 5.0, scope="top-8"),
            _row("e.w", 6.0, erank=None, srank=None, frac=None)]
    got = tensor_items(rows)
    assert got["names"] == ["a.w", "b.norm", "c.w", "d.w", "e.w"] and got["matrices"] == ["a.w", "c.w", "d.w", "e.w"]
    angles, exc = got["principal_angle_deg"]
    assert angles == [3.0, None, 5.0, 6.0] and exc == {"gap-limited (Wedin bound > 1)": 1}
    nss, exc = got["nss"]
    assert nss == [0.01, None, None, 0.01] and sum(exc.values()) == 2
    ranks, exc = got["log_effective_rank"]
    assert ranks[0] == pytest.approx(math.log(5.0)) and ranks[3] is None and sum(exc.values()) == 1


def test_at_size_interpolates_like_numpy_along_the_path():
    fro = [0.5, 1.0, 2.0]
    angle = [1.0, 3.0, 4.0]
    path = [{"w": {"fro": f, "angle": a, "gap_limited": i == 2, "nss": None}} for i, (f, a) in enumerate(zip(fro, angle))]
    for size in (0.25, 0.75, 1.5, 2.0):
        value, limited = at_size(path, "w", "angle", size)
        assert value == pytest.approx(np.interp(size, [0.0, *fro], [0.0, *angle]))
        assert limited == (size > 1.0)
    assert at_size(path, "w", "angle", 3.0) == (None, False)  # the path never gets that far


def test_gates_pass_on_a_planted_rise_and_fail_without_one():
    rng = np.random.default_rng(1)
    before = list(rng.random(100) * 0.5)
    after = [b + 0.1 + rng.normal(0, 0.05) for b in before]
    assert gate("grpo", before, after)["passed"] is True
    assert gate("grpo", after, before)["passed"] is False
    assert gate("sft", after, before, fmt=1.0)["passed"] is True  # loss fell
    assert gate("sft", after, before, fmt=0.5)["passed"] is False  # format not adopted
    noise = [b + rng.normal(0, 0.05) for b in before]
    ch = paired_change(before, noise)
    assert ch["ci"][0] < 0 < ch["ci"][1]
    assert ch["change"] == pytest.approx(np.mean(noise) - np.mean(before))


def test_each_objective_is_gated_and_tuned_on_its_own_dev_metric():
    from deltalens.lab.gates import dev_kind, dev_targets

    assert [dev_kind(o) for o in ("grpo", "sft", "rft")] == ["reward", "loss", "loss"]
    assert [dev_kind(o, "smollm2") for o in ("grpo", "sft", "rft")] == ["reward", "loss", "reward"]
    # the loss kind's targets are the SFT demonstrations: the bare answer on the tiny lab, the
    # teacher's worked solution on the chat task (the SFT arm never trains on the bare number there)
    add = {"task": "add", "prompt": "12+30=", "answer": "42"}
    word = {"task": "word-arith", "prompt": "Mia has 23 ...", "answer": "42", "work": "23 + 19"}
    assert dev_targets([add, word]) == ["42", "23 + 19 = 42. The answer is 42."]
    rng = np.random.default_rng(2)
    before = list(rng.random(50))
    after = [b - 0.2 for b in before]
    assert gate("rft", before, after, kind="reward")["passed"] is False  # a reward that fell
    assert gate("rft", before, after)["passed"] is True  # a loss that fell


def test_grpo_shape_is_searched_after_the_rate_and_ties_keep_the_configured_shape(monkeypatch, tmp_path):
    from deltalens.lab import arms, tuning
    from deltalens.lab.arms import ArmConfig

    planted = {(5e-5, 0.0, 8): 0.30, (1e-4, 0.0, 8): 0.40, (2e-4, 0.0, 8): 0.35,
               (1e-4, 0.04, 8): 0.40, (1e-4, 0.0, 16): 0.45}  # β ties the rate's best; g = 16 wins
    trained = []

    def fake_train(arm, *, cfg, **kw):
        trained.append((arm, cfg.learning_rate, cfg.beta, cfg.num_generations))
        return cfg, []

    monkeypatch.setattr(arms, "train_arm", fake_train)
    monkeypatch.setattr(tuning, "dev_metric", lambda obj, cfg, *a, **k: planted[(cfg.learning_rate, cfg.beta,
                                                                                  cfg.num_generations)])
    rec = tuning.select("grpo", rows=[{}], dev=[], base_dir=tmp_path, tokenizer=None,
                        arm_cfg=ArmConfig(beta=0.0, num_generations=8), device="cpu")
    assert rec["chosen"] == {"learning_rate": 1e-4, "num_generations": 16}
    assert [t[1:] for t in trained] == [(5e-5, 0.0, 8), (1e-4, 0.0, 8), (2e-4, 0.0, 8), (1e-4, 0.04, 8),
                                        (1e-4, 0.0, 16)]
    planted[(1e-4, 0.0, 16)] = 0.40  # now every shape ties: the configured one stays
    assert tuning.select("grpo", rows=[{}], dev=[], base_dir=tmp_path, tokenizer=None,
                         arm_cfg=ArmConfig(), device="cpu")["chosen"] == {"learning_rate": 1e-4}
    assert tuning.shapes("grpo", quick=True) == () and tuning.shapes("grpo", False, "smollm2") == ()
    assert tuning.shapes("sft", quick=False) == ()
