"""The claim rules (SPEC §10): intervals against scipy, A/A data, planted effects, gates."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from deltalens.lab import bootstrap as B
from deltalens.lab import claims as C

ARMS = ("base", "sft", "grpo", "grpo-random", "rft")
N_PROBLEMS, N_MATRICES, N_TENSORS, N_HELDOUT = 40, 12, 16, 30


def test_items_only_interval_matches_scipy_paired_bootstrap_and_t_interval():
    rng = np.random.default_rng(0)
    a = rng.normal(0.3, 1.0, 400)
    b = a - 0.2 + rng.normal(0, 0.5, 400)
    t = B.Table()
    t.add("m", "a", [a], "items")
    t.add("m", "b", [b], "items")
    iv = B.effect_interval(t, [("m", "a"), ("m", "b")], lambda v: v[("m", "a")] - v[("m", "b")], n_boot=4000)
    ref = stats.bootstrap((a, b), lambda x, y: np.mean(x) - np.mean(y), paired=True, method="percentile",
                          n_resamples=4000, random_state=1).confidence_interval
    assert iv.estimate == pytest.approx(np.mean(a - b), abs=1e-12)
    assert (iv.lo, iv.hi) == pytest.approx((ref.low, ref.high), abs=0.01)
    tci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (iv.lo, iv.hi) == pytest.approx((tci.low, tci.high), abs=0.015)


def test_weighted_means_and_excluded_items():
    t = B.Table()
    t.add("m", "a", [[1.0, np.nan, 3.0]], "items", weights=[1.0, 5.0, 3.0])
    assert B.point(t.get("m", "a")) == pytest.approx((1 + 9) / 4)


def test_seed_level_interval_is_at_least_the_student_interval_width():
    # one item, seeds only: the interval on a mean of 5 seeds against a fixed value should be about
    # the t interval (the bootstrap of 5 points with the Student widening)
    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 0.3, 5)
    t = B.Table()
    t.add("m", "a", x[:, None], "one")
    iv = B.effect_interval(t, [("m", "a")], lambda v: v[("m", "a")], n_boot=8000)
    half = stats.t.ppf(0.975, 4) * x.std(ddof=1) / np.sqrt(5)
    assert iv.hi - iv.lo == pytest.approx(2 * half, rel=0.3)


def test_verdict_directions():
    iv = B.Interval(1.0, 0.5, 1.5, 10)
    assert B.verdict(iv, "positive") == C.HOLDS and B.verdict(iv, "negative") == C.CONTRADICTED
    iv = B.Interval(-1.0, -1.5, -0.5, 10)
    assert B.verdict(iv, "negative") == C.HOLDS and B.verdict(iv, "positive") == C.CONTRADICTED
    assert B.verdict(B.Interval(0.1, -0.2, 0.4, 10), "positive") == C.INCONCLUSIVE
    with pytest.raises(ValueError):
        B.verdict(iv, "up")


# --------------------------------------------------------------------------- simulated items
def item_writer(items: dict):
    """``put(metric, arm, rows, item_set, weights=None)`` into an ``items`` section."""

    def put(metric, arm, rows, item_set, weights=None):
        spec = items.setdefault(metric, {"item_set": item_set, "unit": "", "weights": weights, "arms": {},
                                         "excluded": {}})
        spec["arms"][arm] = [list(map(float, r)) for r in rows]

    return put


def simulate(rng, shift: dict | None = None, seeds: int = 3) -> dict:
    """Items for every metric; every arm from one distribution plus ``shift[(metric, arm)]``.

    Per-item effects are shared by all arms (items are paired), each trained seed adds a seed
    effect (not the base: every arm starts from this one base), each value adds noise. pass@k and support come from simulated per-problem success
    probabilities and Bernoulli samples, the rest from normals."""
    shift = shift or {}
    items: dict = {}

    put = item_writer(items)
    difficulty = rng.normal(0, 1.5, N_PROBLEMS)
    n = 16
    flags = {}
    for arm in ARMS:
        ns = 1 if arm == "base" else seeds
        seed_effect = 0.0 if arm == "base" else rng.normal(0, 0.3, (ns, 1))  # the base is the fixed reference
        logit = difficulty[None, :] + seed_effect + shift.get(("logit", arm), 0.0)
        p = 1 / (1 + np.exp(-logit))
        flags[arm] = rng.random((ns, N_PROBLEMS, n)) < p[..., None]
        put("pass_at_1", arm, flags[arm].mean(-1), "problems")
        put("pass_at_kmax", arm, flags[arm].any(-1).astype(float) + shift.get(("kmax", arm), 0.0), "problems")
    base_found = flags["base"][0].any(-1)
    for arm in ARMS[1:]:
        found = flags[arm].any(-1)
        put("support_base", arm, np.broadcast_to(base_found, found.shape).astype(float), "problems")
        put("support_kept", arm, (found & base_found).astype(float), "problems")
        put("support_gained", arm, (found & ~base_found).astype(float), "problems")
        put("support_lost", arm, (~found & base_found).astype(float), "problems")
        put("support_any", arm, (found | base_found).astype(float), "problems")
    for metric, item_set, n_items, scale in (
            ("bf16_unchanged", "tensors", N_TENSORS, 0.1), ("principal_angle_deg", "matrices", N_MATRICES, 2.0),
            ("nss", "matrices", N_MATRICES, 0.01), ("matched_angle_deg", "matched", N_MATRICES, 1.0),
            ("matched_nss", "matched", N_MATRICES, 0.01), ("log_effective_rank", "matrices", N_MATRICES, 0.3),
            ("log_stable_rank", "matrices", N_MATRICES, 0.3), ("numerical_rank_fraction", "matrices", N_MATRICES, 0.0),
            ("forward_kl", "problems", N_PROBLEMS, 0.05), ("heldout_correct", "heldout", N_HELDOUT, 0.0),
            ("kernel_rescale_share", "kernel", 1, 0.1)):
        common = rng.normal(0, scale, n_items)
        for arm in ARMS:
            if arm == "base" and metric != "heldout_correct":
                continue
            ns = 1 if arm == "base" else seeds
            if metric == "heldout_correct":
                rows = (rng.random((ns, n_items)) < 0.7 + shift.get((metric, arm), 0.0)).astype(float)
            elif metric == "numerical_rank_fraction":
                rows = np.ones((ns, n_items))
            else:
                rows = (1.0 + common[None, :] + rng.normal(0, scale, (ns, 1)) + rng.normal(0, scale, (ns, n_items))
                        + shift.get((metric, arm), 0.0))
            put(metric, arm, rows, item_set, [1.0 + i for i in range(n_items)] if metric == "bf16_unchanged" else None)
    simulate_curvature(rng, put, shift, seeds)
    return items


#: probe groups per model in the lab's curvature analysis (deltalens.lab.curvature.MAX_GROUPS)
N_GROUPS = 4


def simulate_curvature(rng, put, shift: dict, seeds: int, n_groups: int = N_GROUPS) -> None:
    """The curvature items: margins and PP log ratios centred on 0 (measured = random baseline)
    for every model, rotations and ‖Δθ‖ from one distribution for every arm, plus ``shift``.
    Items (probe groups) are shared by all models, each trained seed adds a seed effect."""
    for metric, scale in (("curv_margin_h_gn_deg", 5.0), ("curv_margin_gn_entk_weighted_deg", 1.0),
                          ("curv_margin_gn_entk_logits_deg", 5.0), ("curv_margin_gn_entk_logprob_deg", 5.0),
                          ("curv_pp_log_ratio_gauss_newton", 0.5), ("curv_pp_log_ratio_hessian", 0.5),
                          ("curv_pp_log_ratio_entk_logprob", 0.5), ("curv_rotation_gauss_newton_deg", 3.0),
                          ("curv_rotation_hessian_deg", 3.0)):
        common = rng.normal(0, scale, n_groups)
        for arm in ARMS:
            if arm == "base" and metric.startswith("curv_rotation"):
                continue
            ns = 1 if arm == "base" else seeds
            seed_effect = 0.0 if arm == "base" else rng.normal(0, scale, (ns, 1))
            rows = (common[None, :] + seed_effect + rng.normal(0, scale, (ns, n_groups))
                    + shift.get((metric, arm), 0.0) + (30.0 if metric.startswith("curv_rotation") else 0.0))
            put(metric, arm, rows, "curvature-probes")
    for arm in ARMS[1:]:
        put("curv_log_update_norm", arm, rng.normal(0, 0.2, (seeds, 1)), "curvature-update")


#: claims with a threshold rather than a comparison of arms: no A/A version
THRESHOLD = {"support_inside", "update_rank"}


def test_aa_data_rarely_gives_a_decisive_verdict():
    """200 draws, every arm from one distribution: each claim decisive in at most 10% of them."""
    rng = np.random.default_rng(2025)
    decisive: dict[str, int] = {}
    for _ in range(200):
        for rec in C.evaluate_claims(simulate(rng), n_boot=200):
            decisive[rec["id"]] = decisive.get(rec["id"], 0) + (rec["verdict"] != C.INCONCLUSIVE)
    rates = {k: v / 200 for k, v in decisive.items() if k not in THRESHOLD}
    assert rates and all(r <= 0.10 for r in rates.values()), rates


def test_aa_curvature_rules_in_the_quick_shape():
    """--quick: 2 probe groups and 2 seeds; the curvature claims decisive in at most 10% of 200 A/A draws."""
    rng = np.random.default_rng(2026)
    ids = ("curvature_agree", "curvature_pp_capture", "curvature_rotation")
    claims = [c for c in C.CLAIMS if c.id in ids]
    decisive = dict.fromkeys(ids, 0)
    for _ in range(200):
        items: dict = {}
        simulate_curvature(rng, item_writer(items), {}, seeds=2, n_groups=2)
        for rec in C.evaluate_claims(items, n_boot=200, claims=claims):
            decisive[rec["id"]] += rec["verdict"] != C.INCONCLUSIVE
    assert all(v / 200 <= 0.10 for v in decisive.values()), decisive


GOOD = {("logit", "grpo"): 1.5, ("kmax", "base"): 0.4, ("kmax", "sft"): 0.6, ("logit", "grpo-random"): 1.0,
        ("bf16_unchanged", "grpo"): 0.5, ("principal_angle_deg", "grpo"): -15.0, ("nss", "grpo"): -0.05,
        ("matched_angle_deg", "grpo"): -4.0, ("matched_nss", "grpo"): -0.05, ("log_effective_rank", "grpo"): -1.5,
        ("log_stable_rank", "grpo"): -1.5, ("forward_kl", "grpo"): -0.3, ("forward_kl", "rft"): -0.3,
        ("forward_kl", "grpo-random"): -0.2, ("heldout_correct", "sft"): -0.5,
        ("kernel_rescale_share", "grpo"): 1.0, ("bf16_unchanged", "rft"): 0.5, ("principal_angle_deg", "rft"): -15.0,
        **{(m, arm): v for arm in ARMS for m, v in (("curv_margin_h_gn_deg", 40.0),
                                                    ("curv_pp_log_ratio_gauss_newton", 3.0))},
        ("curv_rotation_gauss_newton_deg", "grpo"): -15.0}


def verdicts(items, gates=None) -> dict:
    return {r["id"]: r for r in C.evaluate_claims(items, gates, n_boot=1000)}


def test_planted_effects_hold():
    recs = verdicts(simulate(np.random.default_rng(7), GOOD, seeds=4))
    for cid in ("rl_raises_pass1", "crossover", "distillation_expands", "bf16_sparsity", "principal_rotation",
                "principal_rotation_matched", "spectrum_drift", "spectrum_drift_matched", "update_rank",
                "kl_rl_below_sft", "forgetting_rl_below_sft", "random_reward_raises_pass1", "kernel_rescale",
                "curvature_agree", "curvature_pp_capture", "curvature_rotation"):
        assert recs[cid]["verdict"] == C.HOLDS, (cid, recs[cid]["parts"])
    assert recs["rft_like_rl"]["finding"] == "like RL" and recs["rft_like_rl"]["verdict"] == C.HOLDS


def test_planted_reversed_effects_are_contradicted():
    bad = {k: -v for k, v in GOOD.items() if k[0] != "kmax"}
    bad[("kmax", "grpo")] = 0.5
    bad[("logit", "grpo")] = -1.5
    recs = verdicts(simulate(np.random.default_rng(8), bad, seeds=4))
    for cid in ("rl_raises_pass1", "crossover", "bf16_sparsity", "principal_rotation", "spectrum_drift",
                "update_rank", "kl_rl_below_sft", "forgetting_rl_below_sft", "random_reward_raises_pass1",
                "kernel_rescale", "curvature_agree", "curvature_pp_capture", "curvature_rotation"):
        assert recs[cid]["verdict"] == C.CONTRADICTED, (cid, recs[cid]["parts"])


def test_support_rules_separate_staying_inside_from_expanding():
    rng = np.random.default_rng(9)
    items = simulate(rng)
    n = N_PROBLEMS
    base = np.zeros(n)
    base[: n // 2] = 1  # the base finds half the problems
    arm = base.copy()
    arm[n // 2:] = 1  # the arm keeps all of them and finds every other one too: expands
    for name, rows in (("support_base", base), ("support_kept", base * arm), ("support_gained", (1 - base) * arm),
                       ("support_lost", base * (1 - arm)), ("support_any", np.maximum(base, arm))):
        items[name]["arms"]["grpo"] = [list(rows)] * 3
    recs = verdicts(items)
    assert recs["support_inside"]["verdict"] == C.HOLDS  # SRR = 1
    assert recs["support_no_expansion"]["verdict"] == C.CONTRADICTED  # NSCR = 0.5 > 0
    assert recs["support_no_expansion"]["effect"]["estimate"] == pytest.approx(0.5)


def test_crossover_needs_both_parts():
    # RL above the base at k = 1 but also at large k: no crossover, not "holds"
    shift = {("logit", "grpo"): 1.5, ("kmax", "grpo"): 0.5}
    rec = verdicts(simulate(np.random.default_rng(10), shift, seeds=4))["crossover"]
    assert rec["parts"][0]["verdict"] == C.HOLDS and rec["verdict"] == C.CONTRADICTED


def test_failed_gate_makes_dependent_claims_inconclusive_and_names_it():
    items = simulate(np.random.default_rng(7), GOOD, seeds=4)
    gates = {"grpo": {"0": {"passed": True, "metric": "dev mean reward"},
                      "1": {"passed": False, "metric": "dev mean reward"}},
             "sft": {"0": {"passed": True, "metric": "dev loss"}}}
    recs = verdicts(items, gates)
    assert recs["rl_raises_pass1"]["verdict"] == C.INCONCLUSIVE
    assert "grpo seed 1: dev mean reward" in recs["rl_raises_pass1"]["note"]
    assert recs["random_reward_raises_pass1"]["verdict"] == C.HOLDS  # does not need grpo


def test_excluded_values_are_left_out_and_counted():
    items = simulate(np.random.default_rng(11), GOOD, seeds=3)
    spec = items["principal_angle_deg"]
    for arm in ("grpo", "sft"):
        for row in spec["arms"][arm]:
            row[0] = None
        spec["excluded"][arm] = [{"gap-limited (Wedin bound > 1)": 1}] * 3
    spec["arms"]["grpo"][0][1] = None
    rec = verdicts(items)["principal_rotation"]
    assert rec["excluded"]["principal_angle_deg"]["grpo"]["total"] == {"gap-limited (Wedin bound > 1)": 3}
    rows = np.array([[np.nan if v is None else v for v in r] for r in spec["arms"]["grpo"]])
    assert rec["numbers"]["principal_angle_deg"]["grpo"][0] == pytest.approx(np.nanmean(rows[0]), rel=1e-5)


def test_missing_metric_is_inconclusive_with_a_note():
    items = simulate(np.random.default_rng(12), GOOD)
    del items["nss"]
    rec = verdicts(items)["spectrum_drift"]
    assert rec["verdict"] == C.INCONCLUSIVE and "not measured" in rec["note"]


def test_unknown_metric_is_rejected():
    with pytest.raises(ValueError, match="unknown metric"):
        C.evaluate_claims({"pass_at_one": {"item_set": "p", "arms": {"grpo": [[1.0]]}}})


def test_claims_document_follows_the_contract():
    gates = {"grpo": {"0": {"passed": True, "metric": "dev mean reward", "before": 0.2, "after": 0.4,
                            "ci": [0.1, 0.3]}}}
    doc = C.claims_document(simulate(np.random.default_rng(13), GOOD), gates=gates, arms=list(ARMS[1:]), seeds=3,
                            quick=False, n_boot=200)
    assert {"arms", "seeds", "quick", "gates", "claims", "interval"} <= set(doc)
    assert doc["gates"]["grpo"]["0"]["passed"] is True
    for rec in doc["claims"]:
        assert {"id", "claim", "verdict", "direction", "effect", "numbers", "excluded", "published", "rule"} <= set(rec)
        assert rec["verdict"] in C.VERDICTS and rec["direction"] in ("positive", "negative")
        assert set(rec["effect"]) == {"estimate", "ci", "unit"} and len(rec["effect"]["ci"]) == 2
        for per_arm in rec["numbers"].values():
            assert all(isinstance(v, (list, float, type(None))) for v in per_arm.values())
    by_id = {r["id"]: r for r in doc["claims"]}
    assert by_id["bf16_sparsity"]["published"]["grpo"] == [0.36, 0.92]
    assert by_id["support_no_expansion"]["published"]["nscr"] == [-0.06, -0.01]


def test_published_tables_are_spliced_from_a_claims_file(tmp_path):
    from deltalens.lab.tables import document, splice

    doc = C.claims_document(simulate(np.random.default_rng(14), GOOD), gates={}, arms=list(ARMS[1:]), seeds=3,
                            quick=False, n_boot=200)
    page = tmp_path / "page.md"
    page.write_text("before\n<!-- t:begin -->\nSTALE TABLE\n<!-- t:end -->\nafter\n")
    splice(str(page), "t", document(doc, "title"))
    text = page.read_text()
    assert text.startswith("before\n<!-- t:begin -->\ntitle") and text.endswith("<!-- t:end -->\nafter\n")
    assert "STALE TABLE" not in text and text.count("| RL raises pass@1 | holds |") == 1


def test_curvature_claims_need_two_seeds():
    """With one seed the curvature rules rest on 4 probe groups alone (A/A: decisive in about a third of
    draws): inconclusive whatever the interval, and the note says why; with two seeds the interval decides."""
    ids = ("curvature_agree", "curvature_pp_capture", "curvature_rotation")
    one = verdicts(simulate(np.random.default_rng(15), GOOD, seeds=1))
    two = verdicts(simulate(np.random.default_rng(15), GOOD, seeds=2))
    for cid in ids:
        assert one[cid]["verdict"] == C.INCONCLUSIVE and "needs ≥ 2 seeds" in one[cid]["note"], cid
        assert one[cid]["parts"][0]["verdict"] == C.HOLDS  # the interval alone would have decided
        assert "needs ≥ 2 seeds" not in (two[cid]["note"] or "")
    assert two["curvature_agree"]["verdict"] == two["curvature_pp_capture"]["verdict"] == C.HOLDS


def test_curvature_rotation_needs_both_gates_and_agreement_needs_none():
    items = simulate(np.random.default_rng(16), GOOD, seeds=3)
    gates = {"sft": {"0": {"passed": False, "metric": "dev loss on targets"}}}
    recs = verdicts(items, gates)
    assert recs["curvature_rotation"]["verdict"] == C.INCONCLUSIVE
    assert "training gate failed: sft seed 0: dev loss on targets" in recs["curvature_rotation"]["note"]
    assert recs["curvature_agree"]["verdict"] == C.HOLDS and recs["curvature_pp_capture"]["verdict"] == C.HOLDS
    # the verdict's effect is the mean over the five models of their own margins (numbers: per model, per seed)
    nums = recs["curvature_agree"]["numbers"]["curv_margin_h_gn_deg"]
    want = np.mean([np.mean(nums[m]) for m in C.CURVATURE_MODELS])
    assert recs["curvature_agree"]["effect"]["estimate"] == pytest.approx(want, rel=1e-4)
    assert [p["label"] for p in recs["curvature_agree"]["secondary"]][:5] == [
        f"{m}: H vs G margin" for m in C.CURVATURE_MODELS]
