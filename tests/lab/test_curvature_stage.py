"""The lab's curvature analysis: reductions in closed form, a planted self-pair, the skip rule."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from deltalens.lab import claims as C
from deltalens.lab import curvature as K
from deltalens.lab.analyses import Items
from deltalens.lab.config import LabConfig, default_config, quick_config
from deltalens.results import read_json

CURVATURE_CLAIMS = ("curvature_agree", "curvature_pp_capture", "curvature_rotation")


def test_model_items_are_the_baseline_minus_angle_means_and_the_pp_log_ratio():
    report = {"angles_deg": {key: [10.0, 20.0, 30.0, 60.0] for key in K.LINKS.values()},
              "angles_baseline_deg": {key: [88.0, 89.0, 90.0, 91.0] for key in K.LINKS.values()},
              "pp_share": {kind: {"pooled": [0.02, 0.04], "pooled_baseline": [0.001, 0.003]} for kind in K.PP_KINDS}}
    report["pp_share"]["hessian"] = {"pooled": None, "pooled_baseline": None}  # no 2-D matrix: excluded
    got = K.model_items(report)
    assert got["curv_margin_h_gn_deg"] == pytest.approx(89.5 - 30.0)
    assert got["curv_pp_log_ratio_gauss_newton"] == pytest.approx(math.log(0.03 / 0.002))
    assert got["curv_pp_log_ratio_hessian"] is None
    pair = {"gauss_newton": {"angles_deg": [1.0, 2.0, 6.0]}, "hessian": {"angles_deg": [0.0, 4.0]}}
    assert K.pair_items(pair) == {"curv_rotation_gauss_newton_deg": 3.0, "curv_rotation_hessian_deg": 2.0}


def test_probe_groups_of_the_presets():
    def groups(cfg):
        run = SimpleNamespace(cfg=cfg, problems=lambda name: [{"prompt": f"{i}+1=", "answer": str(i + 1)}
                                                             for i in range(cfg.n_test)])
        return K.probe_groups(run)

    for cfg, n in ((quick_config(), K.QUICK_GROUPS), (default_config(), K.MAX_GROUPS)):
        got = groups(cfg)
        assert len(got) == n and all(len(g) == K.GROUP_SIZE >= K.TOP for g in got)
        assert [p["prompt"] for g in got for p in g] == [f"{i}+1=" for i in range(n * K.GROUP_SIZE)]
    assert len(groups(replace(quick_config(), n_probes=6))) == 1  # a partial group is dropped


def test_skip_rule_and_skipped_claims_say_why(tmp_path):
    assert K.skip_reason(LabConfig()) is None
    assert K.skip_reason(replace(default_config("smollm2", "cuda"))) is None
    reason = K.skip_reason(default_config("smollm2"))
    assert reason.startswith("not run: --base smollm2 on cpu")
    cfg = replace(LabConfig(), seeds=2)
    run = SimpleNamespace(cfg=cfg, out=tmp_path, items=Items(), seeds=lambda: range(2))
    assert K._skip(run, reason) == {}
    recs = {r["id"]: r for r in C.evaluate_claims(run.items.doc, n_boot=200)}
    for cid in CURVATURE_CLAIMS:
        rec = recs[cid]
        assert rec["verdict"] == C.INCONCLUSIVE and rec["effect"]["estimate"] is None
        assert any(reason in per_arm["total"] for per in rec["excluded"].values() for per_arm in per.values()), cid
    assert read_json(tmp_path / "analysis" / "curvature-skipped.json")["reason"] == reason


@pytest.fixture(scope="module")
def self_pair(tmp_path_factory):
    """A run whose one arm's final master *is* the base: planted rotation 0 and ‖Δθ‖ = 0."""
    from deltalens.lab.release import save_hf_folder
    from deltalens.lab.tasks import generate_problems
    from deltalens.lab.tiny_model import TinyConfig, build_tiny_llama
    from deltalens.lab.tokenizer import build_char_tokenizer

    root = tmp_path_factory.mktemp("curv")
    tok = build_char_tokenizer(model_max_length=32)
    model = build_tiny_llama(TinyConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32),
                             seed=0, tokenizer=tok)
    save_hf_folder(model, tok, root / "base")
    problems = generate_problems("add", 8, seed=0, digits=2, split="test")
    cfg = replace(LabConfig(), arms=("sft",), seeds=1, n_probes=8)
    run = SimpleNamespace(cfg=cfg, out=root / "out", items=Items(), tokenizer=tok, base_master=root / "base",
                          final_master=lambda arm, seed: root / "base", seeds=lambda: range(1),
                          problems=lambda name: problems, task=lambda *a: None, advance=lambda *a: None)
    numbers = K.curvature_analysis(run)
    return run, numbers


def test_self_pair_has_no_rotation_and_the_base_numbers(self_pair):
    run, numbers = self_pair
    items = run.items.doc
    for metric in K.PAIR_METRICS:
        assert np.max(np.abs(items[metric]["arms"]["sft"][0])) < 1e-3, metric  # degrees
    for metric in K.MODEL_METRICS:
        assert items[metric]["arms"]["sft"] == items[metric]["arms"]["base"], metric
        assert len(items[metric]["arms"]["base"][0]) == 2 and items[metric]["item_set"] == K.ITEM_SET
    assert items["curv_log_update_norm"]["arms"]["sft"] == [[None]]  # log ‖Δθ‖ of Δθ = 0: excluded
    assert items["curv_log_update_norm"]["excluded"]["sft"] == [{"Δθ = 0": 1}]
    assert numbers["curv_rotation_gauss_newton_deg"]["sft"][0] < 1e-3


def test_items_are_the_written_reports_reduced(self_pair):
    run, _ = self_pair
    doc = read_json(run.out / "analysis" / "base" / "curvature.json")
    assert doc["top"] == K.TOP and len(doc["groups"]) == 2
    for g, group in enumerate(doc["groups"]):
        rep = group["report"]
        angles = rep["angles_deg"]["hessian_vs_gauss_newton"]
        assert len(angles) == K.TOP and all(0 <= a <= 90 for a in angles)
        want = np.mean(rep["angles_baseline_deg"]["hessian_vs_gauss_newton"]) - np.mean(angles)
        assert run.items.doc["curv_margin_h_gn_deg"]["arms"]["base"][0][g] == pytest.approx(want, abs=1e-9)
        pp = rep["pp_share"]["gauss_newton"]
        want = np.log(np.mean(pp["pooled"]) / np.mean(pp["pooled_baseline"]))
        assert run.items.doc["curv_pp_log_ratio_gauss_newton"]["arms"]["base"][0][g] == pytest.approx(want, abs=1e-9)
    pair = read_json(run.out / "analysis" / "sft-seed0" / "curvature.json")["groups"][0]["pair"]
    assert pair["gauss_newton"]["update_share"]["share"] is None  # Δθ = 0
