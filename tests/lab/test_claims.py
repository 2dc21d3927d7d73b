"""The claim rules on planted numbers with known verdicts."""

from __future__ import annotations

import pytest
from scipy import stats

from deltalens.lab import claims as C


def planted(rl_good: bool) -> dict:
    """Numbers where every claim holds (rl_good) or every claim fails, 3 seeds, no overlap."""
    g = rl_good
    return {
        "bf16_unchanged_fraction": {"grpo": [0.9, 0.85, 0.88] if g else [0.1, 0.12, 0.11],
                                    "sft": [0.2, 0.25, 0.22] if g else [0.5, 0.55, 0.6],
                                    "rft": [0.8, 0.82, 0.84] if g else [0.5, 0.52, 0.58]},
        "principal_angle_mean_deg": {"grpo": [1.0, 1.2, 1.1] if g else [9, 8, 10],
                                     "sft": [5.0, 6.0, 5.5] if g else [2, 3, 2.5],
                                     "rft": [1.5, 1.4, 1.3] if g else [2.1, 3.1, 2.6]},
        "nss": {"grpo": [0.01, 0.02, 0.015] if g else [0.3, 0.4, 0.35], "sft": [0.1, 0.2, 0.15] if g else [0.01, 0.02, 0.03]},
        "pass_at_1": {"grpo": [0.6, 0.65, 0.7] if g else [0.1, 0.12, 0.11], "base": [0.3]},
        "pass_at_kmax": {"grpo": [0.7, 0.72, 0.71] if g else [0.95, 0.96, 0.97], "base": [0.9]},
        "srr": {"grpo": [0.97, 0.95, 0.99] if g else [0.5, 0.6, 0.7]},
        "nscr": {"grpo": [-0.02, -0.01, 0.0] if g else [0.2, 0.1, 0.3]},
        "forward_kl": {"grpo": [0.01, 0.02, 0.015] if g else [0.5, 0.6, 0.55],
                       "sft": [0.5, 0.6, 0.55] if g else [0.01, 0.02, 0.015],
                       "grpo-random": [0.005, 0.004, 0.006] if g else [0.0, 0.0, 0.0],
                       "rft": [0.02, 0.03, 0.025] if g else [0.011, 0.021, 0.016]},
        "forgetting": {"grpo": [0.01, 0.02, 0.015] if g else [0.3, 0.2, 0.1],
                       "sft": [0.3, 0.35, 0.32] if g else [0.4, 0.5, 0.45],
                       "grpo-random": [0.0, 0.01, 0.005] if g else [0.3, 0.35, 0.2],
                       "rft": [0.02, 0.03, 0.02] if g else [0.5, 0.5, 0.4]},
        "kernel_rescale_share": {"grpo": [0.5, 0.55, 0.6] if g else [0.1, 0.1, 0.1], "sft": [0.1, 0.12, 0.11] if g else [0.4, 0.5, 0.45]},
    }


def test_compare_separated_overlapping_and_single_seed():
    assert C.compare([3, 4], [1, 2], "greater") == C.HOLDS
    assert C.compare([1, 2], [3, 4], "greater") == C.DOES_NOT_HOLD
    assert C.compare([1, 3], [2, 4], "greater") == C.INCONCLUSIVE  # inside the spread
    assert C.compare([1, 2], [3, 4], "less") == C.HOLDS
    assert C.compare([0.5], [0.4], "greater") == C.HOLDS
    assert C.compare([0.4], [0.4], "greater") == C.INCONCLUSIVE
    with pytest.raises(ValueError):
        C.compare([1], [2], "bigger")


def test_every_claim_holds_on_planted_good_numbers():
    verdicts = {r["id"]: r["verdict"] for r in C.evaluate_claims(planted(True))}
    assert set(verdicts) == {c.id for c in C.CLAIMS} and len(verdicts) == 10
    assert all(v == C.HOLDS for v in verdicts.values()), verdicts


def test_every_claim_fails_on_planted_bad_numbers():
    verdicts = {r["id"]: r["verdict"] for r in C.evaluate_claims(planted(False))}
    assert all(v == C.DOES_NOT_HOLD for v in verdicts.values()), verdicts


def test_overlap_across_seeds_is_inconclusive():
    numbers = planted(True)
    numbers["bf16_unchanged_fraction"]["sft"] = [0.2, 0.95, 0.22]  # one sft seed above grpo's range
    numbers["srr"]["grpo"] = [0.97, 0.5, 0.99]  # seeds disagree
    verdicts = {r["id"]: r["verdict"] for r in C.evaluate_claims(numbers)}
    assert verdicts["bf16_sparsity"] == C.INCONCLUSIVE
    assert verdicts["rl_keeps_support"] == C.INCONCLUSIVE
    assert verdicts["principal_rotation"] == C.HOLDS


def test_missing_metrics_are_inconclusive_with_a_note():
    records = C.evaluate_claims({"pass_at_1": {"grpo": [0.5], "base": [0.2]}})
    by_id = {r["id"]: r for r in records}
    assert by_id["rl_raises_pass1"]["verdict"] == C.HOLDS
    assert by_id["bf16_sparsity"]["verdict"] == C.INCONCLUSIVE
    assert "not measured" in by_id["bf16_sparsity"]["note"]
    assert by_id["rl_raises_pass1"]["numbers"] == {"grpo": [0.5], "base": [0.2]}


def test_nonfinite_values_count_as_missing():
    records = C.evaluate_claims({"pass_at_1": {"grpo": [float("nan")], "base": [0.2]}})
    assert {r["id"]: r["verdict"] for r in records}["rl_raises_pass1"] == C.INCONCLUSIVE


def test_correlation_part_decides_when_kl_part_holds():
    numbers = planted(True)
    numbers["forgetting"] = {arm: list(reversed(sorted(v))) for arm, v in numbers["forward_kl"].items()}
    numbers["forgetting"]["sft"] = [0.0, 0.0, 0.0]  # high KL, no forgetting: negative correlation
    rec = {r["id"]: r for r in C.evaluate_claims(numbers)}["kl_forgetting"]
    assert rec["verdict"] == C.DOES_NOT_HOLD and "Pearson" in rec["note"]


def test_pearson_matches_scipy():
    x = [0.1, 0.5, 0.3, 0.9, 0.7]
    y = [1.0, 2.5, 1.1, 3.9, 2.0]
    assert C.pearson_r(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)


def test_unknown_metric_is_rejected():
    with pytest.raises(ValueError, match="unknown metrics"):
        C.evaluate_claims({"pass_at_one": {"grpo": [1.0]}})


def test_claims_document_follows_the_contract():
    doc = C.claims_document(planted(True), arms=["sft", "grpo", "grpo-random", "rft"], seeds=3, quick=False)
    assert set(doc) == {"arms", "seeds", "quick", "claims"}
    for rec in doc["claims"]:
        assert {"id", "claim", "verdict", "rule", "numbers"} <= set(rec)
        assert rec["verdict"] in (C.HOLDS, C.DOES_NOT_HOLD, C.INCONCLUSIVE)
        assert all(isinstance(v, list) for v in rec["numbers"].values())
