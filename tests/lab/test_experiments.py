"""The lab's experiments (``deltalens lab --experiment``): their pieces against independent
references (closed forms, numpy/scipy in float64, planted answers), the CLI's errors, and one
slow end-to-end ``--experiment all --quick`` checked for the claim format (never the verdicts)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from deltalens.lab.claims import CONTRADICTED, HOLDS, INCONCLUSIVE, VERDICTS, evaluate_claims
from deltalens.lab.experiments import common, kl_penalty, long, optimizer, per_batch


def test_log_slope_recovers_a_planted_power_law():
    x = np.geomspace(0.01, 3.0, 7)
    for exponent in (0.5, 1.0, 1.7):
        got = long.log_slope(list(x), list(2.3 * x ** exponent))
        assert got == pytest.approx(exponent, rel=1e-9)
    assert long.log_slope([1.0, 2.0], [1.0, 2.0]) is None  # fewer than 3 points
    assert long.log_slope([1.0, 2.0, 3.0, 4.0], [None, 0.0, 1.0, 2.0]) is None  # only 2 usable


def test_explained_matches_numpy_least_squares_and_scipy_r():
    rng = np.random.default_rng(0)
    x = rng.normal(0.2, 1.0, 200)
    y = 1.5 * x + 0.3 + rng.normal(0, 0.5, 200)
    got = per_batch.explained(list(y), list(x))
    slope, intercept = np.polyfit(x, y, 1)
    assert got["slope"] == pytest.approx(slope, rel=1e-9)
    assert got["r_squared"] == pytest.approx(stats.pearsonr(x, y)[0] ** 2, rel=1e-9)
    assert got["explained_share"] == pytest.approx(slope * x.mean() / y.mean(), rel=1e-9)


def test_equal_norm_update_norm_and_adam_first_step_is_a_sign_step():
    g = torch.tensor([[3.0, -2.0], [0.5, -1e-3]])
    sgd = per_batch.equal_norm_update(g, 0.7, adam=False)
    assert float(sgd.norm()) == pytest.approx(0.7, rel=1e-12)
    assert torch.allclose(sgd, -0.7 * g.double() / math.sqrt(float((g.double() ** 2).sum())))
    adam = per_batch.equal_norm_update(g, 2.0, adam=True)
    # g/(|g| + 1e-8) is ±1 up to 1e-5 here: four entries of size 2/√4 = 1 with the sign of −g
    assert torch.allclose(adam, -torch.sign(g).double(), atol=1e-4)
    assert per_batch.equal_norm_update(torch.zeros(2, 2), 1.0, adam=False) is None


def test_matrix_values_against_a_float64_svd():
    torch.manual_seed(0)
    w0 = torch.randn(24, 16)
    delta = 1e-2 * torch.randn(24, 16)
    v = common.matrix_values(w0, w0 + delta)
    u, s, vh = np.linalg.svd(w0.double().numpy())
    d = (w0 + delta).double().numpy() - w0.double().numpy()
    k = max(1, math.ceil(0.01 * 16))  # the library's default k on a 24×16 matrix
    qq = u[:, k:].T @ d @ vh[k:, :].T
    assert v["top_share"] == pytest.approx(1 - (qq ** 2).sum() / (d ** 2).sum(), rel=1e-6)
    dd = u[:, :16].T @ d @ vh.T
    assert v["rescale"] == pytest.approx((np.diag(dd) ** 2).sum() / (d ** 2).sum(), rel=1e-6)
    assert v["fro"] == pytest.approx(np.linalg.norm(d), rel=1e-6)
    # principal angles between the top-k left/right singular subspaces, scipy's subspace_angles
    from scipy.linalg import subspace_angles

    u1, _, vh1 = np.linalg.svd((w0 + delta).double().numpy())
    left = np.degrees(subspace_angles(u[:, :k], u1[:, :k])).mean()
    right = np.degrees(subspace_angles(vh[:k].T, vh1[:k].T)).mean()
    assert v["angle"] == pytest.approx((left + right) / 2, rel=1e-4, abs=1e-6)
    # bf16 visibility: |Δ| ≥ half a bf16 ULP of w0, ULP from the exponent in float64
    w = w0.double().numpy()
    half = 2.0 ** (np.floor(np.log2(np.abs(w))) - 8)
    assert v["visible"] == pytest.approx(float((np.abs(d) >= half).mean()), abs=1 / d.size)


def test_bf16_unchanged_counts_bitwise_equal_roundings():
    w0 = torch.tensor([1.0, 1.0, 1.0, 2.0])
    w1 = torch.tensor([1.0 + 2 ** -12, 1.0 + 2 ** -6, 1.0, 2.0 - 2 ** -3])  # bf16 ULP at 1 is 2^-7
    assert common.bf16_unchanged(w0, w1) == pytest.approx(0.5)


@pytest.mark.parametrize("verdicts,expected", [
    ((HOLDS, HOLDS), HOLDS), ((HOLDS, INCONCLUSIVE), HOLDS), ((HOLDS, CONTRADICTED), CONTRADICTED),
    ((INCONCLUSIVE, INCONCLUSIVE), INCONCLUSIVE), ((CONTRADICTED, HOLDS), CONTRADICTED),
    ((INCONCLUSIVE, CONTRADICTED), CONTRADICTED)])
def test_kl_penalty_rule(verdicts, expected):
    assert kl_penalty.decide(verdicts) == expected


def _items(values_by_arm: dict, metric: str = "principal_angle_deg") -> dict:
    return {metric: {"item_set": "matrices", "unit": "degrees", "weights": None, "excluded": {},
                     "arms": values_by_arm}}


def test_kl_penalty_claim_on_planted_angles():
    rng = np.random.default_rng(1)
    base = rng.uniform(1, 2, 30)

    def arm(level):
        return [list(base * level + rng.normal(0, 0.01, 30)) for _ in range(3)]

    # β = 0 rotates like SFT and far more than β = 0.4: holds
    items = _items({"sft": arm(1.0), kl_penalty.B0: arm(1.0), kl_penalty.BS: arm(0.8), kl_penalty.BL: arm(0.5)})
    rec = evaluate_claims(items, {}, 500, kl_penalty.CLAIMS, kl_penalty.METRICS)[0]
    assert rec["verdict"] == HOLDS
    # β = 0 already rotates far less than SFT: contradicted whatever β does
    items = _items({"sft": arm(3.0), kl_penalty.B0: arm(1.0), kl_penalty.BS: arm(0.8), kl_penalty.BL: arm(0.5)})
    rec = evaluate_claims(items, {}, 500, kl_penalty.CLAIMS, kl_penalty.METRICS)[0]
    assert rec["verdict"] == CONTRADICTED
    # a failed gate makes it inconclusive and names the gate
    gates = {kl_penalty.BL: {"0": {"passed": False, "metric": "dev mean reward"}}}
    items = _items({"sft": arm(1.0), kl_penalty.B0: arm(1.0), kl_penalty.BS: arm(0.8), kl_penalty.BL: arm(0.5)})
    rec = evaluate_claims(items, gates, 500, kl_penalty.CLAIMS, kl_penalty.METRICS)[0]
    assert rec["verdict"] == INCONCLUSIVE and "grpo-beta0.4 seed 0" in rec["note"]


def test_unknown_experiment_and_unsupported_base_fail_with_one_line(run_cli, tmp_path):
    code, _, err = run_cli("lab", "--experiment", "nope", "--out", tmp_path / "a")
    assert code != 0 and "--experiment must be one of optimizer, kl-penalty, per-batch, long, narrow-sft, subliminal, all" in err
    code, _, err = run_cli("lab", "--experiment", "long", "--base", "smollm2", "--out", tmp_path / "b")
    assert code != 0 and "not supported for this experiment yet" in err
    code, _, err = run_cli("lab", "--experiment", "long", "--until", "base", "--out", tmp_path / "c")
    assert code != 0 and "--until applies to the main lab run" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


CLAIM_KEYS = {"id", "claim", "rule", "verdict", "direction", "effect", "parts", "numbers", "excluded", "note"}


@pytest.mark.slow
def test_all_quick_writes_claims_in_the_main_format(run_cli, tmp_path):
    out = tmp_path / "exp"
    code, stdout, stderr = run_cli("lab", "--experiment", "all", "--quick", "--threads", "1", "--out", out)
    assert code == 0, stderr[-2000:]
    combined = json.loads((out / "claims.json").read_text())
    assert set(combined["experiments"]) == {"optimizer", "kl-penalty", "per-batch", "long"}
    ids = [c["id"] for c in combined["claims"]]
    expected = [c.id for m in (optimizer, kl_penalty, per_batch, long) for c in m.CLAIMS]
    assert ids == expected
    for name in combined["experiments"]:
        doc = json.loads((out / name / "claims.json").read_text())
        assert doc["experiment"] == name and doc["quick"] is True and doc["seeds"] >= 2
        assert doc["machine"]["cpus"] and doc["interval"]["level"] == 0.95
        for c in doc["claims"]:
            assert CLAIM_KEYS <= set(c), c["id"]
            assert c["verdict"] in VERDICTS and c["direction"] in ("positive", "negative")
            assert set(c["effect"]) == {"estimate", "ci", "unit"} and len(c["effect"]["ci"]) == 2
            est, (lo, hi) = c["effect"]["estimate"], c["effect"]["ci"]
            if None not in (est, lo, hi):
                assert lo <= hi
        assert (out / name / "report.html").is_file() and (out / name / "curves.json").is_file()
    page = (out / "report.html").read_text()
    for name in combined["experiments"]:
        assert f'id="experiment-{name}"' in page
