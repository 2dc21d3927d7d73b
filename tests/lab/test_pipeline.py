"""The lab pipeline on a micro configuration: determinism, resume, layout, contracts, CLI.

The micro configuration runs the same code path as ``--quick`` (same stages, same trainers,
same callbacks) with a 1-layer model and a few steps, so running it twice stays cheap.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors import safe_open

from deltalens.lab.arms import ArmConfig
from deltalens.lab.claims import CLAIMS
from deltalens.lab.config import LabConfig
from deltalens.lab.pipeline import run_lab, stage_names
from deltalens.lab.pretrain import PretrainConfig
from deltalens.lab.tiny_model import TinyConfig
from deltalens.results import read_json, read_jsonl
from deltalens.tracking import TRACKING_FIELDS

MICRO = LabConfig(n_dev=16,
    model=TinyConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=2, max_position_embeddings=64),
    pretrain=PretrainConfig(steps=3, batch_size=8),
    arm=ArmConfig(steps=2, batch_size=8, num_generations=4, n_checkpoints=2),
    arms=("sft", "grpo", "grpo-random"),  # rft needs a base that can already solve something
    seeds=1, n_train=16, n_test=4, n_heldout=2, eval_samples=4, kl_samples=1, n_probes=4, quick=True,
)


def digests(root: Path) -> dict[str, str]:
    skip = {"stages", "lab.json"}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] not in skip
            and p.name != "log_history.json"}  # log_history holds wall-clock runtimes


#: the tuning stage's code path with fewer candidates (each is one more TRL training)
MICRO_GRID = {"sft": (1e-4,), "rft": (1e-4,), "grpo": (1e-4, 2e-4)}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from deltalens.lab import tuning

    a, b = tmp_path_factory.mktemp("a") / "lab", tmp_path_factory.mktemp("b") / "lab"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tuning, "QUICK_GRID", MICRO_GRID)  # MICRO is a quick configuration
        ra = run_lab(a, config=MICRO, cache_dir=None, show_progress=False)
        rb = run_lab(b, config=MICRO, cache_dir=None, until="arms", show_progress=False)
    return a, b, ra, rb


def test_training_twice_gives_bitwise_identical_checkpoints(two_runs):
    a, b, _, _ = two_runs
    da, db = digests(a), digests(b)
    trained = [k for k in db if "checkpoints" in k or "masters" in k or k.startswith("base/")]
    assert any(k.endswith("model.safetensors") and "masters" in k for k in trained)
    assert {k: da[k] for k in db} == db


def test_layout_and_dtypes(two_runs):
    a, *_ = two_runs
    for name in ("target_train", "target_test", "heldout_test"):
        assert read_jsonl(a / "problems" / f"{name}.jsonl", required=("id", "prompt", "answer", "task"))
    for folder, dtype in ((a / "base/master", "F32"), (a / "base/release", "BF16"),
                          (a / "arms/sft/seed0/checkpoints/step-000002", "BF16"),
                          (a / "arms/grpo/seed0/masters/step-000001", "F32")):
        assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
        with safe_open(folder / "model.safetensors", "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {dtype}
    rows = read_jsonl(a / "arms/grpo-random/seed0/tracking.jsonl", required=TRACKING_FIELDS)
    assert sorted({r["step"] for r in rows}) == [1, 2]
    assert any("deltalens/update_fro" in h for h in read_json(a / "arms/sft/seed0/log_history.json"))


def test_claims_follow_the_contract(two_runs):
    a, _, ra, _ = two_runs
    doc = read_json(a / "claims.json")
    assert doc["arms"] == list(MICRO.arms) and doc["seeds"] == 1 and doc["quick"] is True
    assert len(doc["claims"]) == len(CLAIMS) and ra["claims"] == doc
    for rec in doc["claims"]:
        assert rec["verdict"] in ("holds", "contradicted", "inconclusive")
        assert {"id", "claim", "rule", "numbers", "direction", "effect", "excluded", "published"} <= set(rec)
    for arm in MICRO.arms:  # every analysis wrote its outputs for every arm (contracts in docs/)
        got = {p.name for p in (a / "analysis" / f"{arm}-seed0").iterdir()}
        assert {"diff.json", "passk.json", "support.json", "divergence.json", "kernel.json", "eval.json"} <= got
        gate = doc["gates"][arm]["0"]
        assert {"passed", "metric", "before", "after", "ci"} <= set(gate)
    # two optimizer steps cannot pass the GRPO gate: every claim needing grpo says so
    assert doc["gates"]["grpo"]["0"]["passed"] is False
    by_id = {r["id"]: r for r in doc["claims"]}
    assert by_id["rl_raises_pass1"]["verdict"] == "inconclusive"
    assert "training gate failed: grpo seed 0" in by_id["rl_raises_pass1"]["note"]
    items = read_json(a / "metrics.json")["items"]
    assert {"bf16_unchanged", "principal_angle_deg", "pass_at_1", "forward_kl", "heldout_correct",
            "matched_angle_deg"} <= set(items)
    assert len(items["pass_at_1"]["arms"]["grpo"][0]) == MICRO.n_test
    # the curvature analysis: one probe group of 4 (n_probes = 4), every model; one seed: inconclusive by rule
    assert len(items["curv_margin_h_gn_deg"]["arms"]["base"][0]) == 1
    assert set(items["curv_rotation_gauss_newton_deg"]["arms"]) == set(MICRO.arms)
    assert all((a / "analysis" / f"{arm}-seed0" / "curvature.json").is_file() for arm in MICRO.arms)
    assert "needs ≥ 2 seeds" in by_id["curvature_agree"]["note"]
    assert set(read_json(a / "tuning.json")) == {"sft", "grpo"}
    assert (a / "report.html").is_file()


def test_per_prompt_kl_averages_to_the_divergence_json(two_runs):
    """The claims' per-prompt forward KL against the library's divergence() on the same samples."""
    a, *_ = two_runs
    items = read_json(a / "metrics.json")["items"]["forward_kl"]["arms"]["sft"][0]
    dv = read_json(a / "analysis" / "sft-seed0" / "divergence.json")
    assert sum(items) / len(items) == pytest.approx(dv["forward_kl"]["token_mean"], rel=1e-6)


def test_resume_skips_finished_stages_and_redoes_a_removed_one(two_runs):
    a, *_ = two_runs
    again = run_lab(a, config=MICRO, cache_dir=None, show_progress=False)
    assert set(again["stages"].values()) == {"cached"} and list(again["stages"]) == stage_names(MICRO)
    before = digests(a)
    (a / "stages" / "arm-grpo-seed0.json").unlink()
    third = run_lab(a, config=MICRO, cache_dir=None, show_progress=False, until="arms")
    assert [k for k, v in third["stages"].items() if v != "cached"] == ["arm-grpo-seed0"]
    assert {k: v for k, v in digests(a).items() if "grpo/" in k} == {k: v for k, v in before.items() if "grpo/" in k}


def test_a_new_analysis_plugs_into_stage_5(two_runs, monkeypatch):
    a, *_ = two_runs
    from deltalens.lab import pipeline

    def planted(run):  # replaces the kernel analysis's values
        run.items.doc.pop("kernel_rescale_share", None)
        run.items.put("kernel_rescale_share", "grpo", [0.6], item_set="kernel", unit="share")
        run.items.put("kernel_rescale_share", "sft", [0.2], item_set="kernel", unit="share")
        return {}

    monkeypatch.setitem(pipeline.ANALYSES, "planted-kernel", planted)
    res = run_lab(a, config=MICRO, cache_dir=None, show_progress=False)
    assert [k for k, v in res["stages"].items() if v != "cached"] == ["analyses", "claims"]
    rec = {r["id"]: r for r in res["claims"]["claims"]}["kernel_rescale"]
    assert rec["effect"]["estimate"] == pytest.approx(0.4)
    assert rec["verdict"] == "inconclusive" and "gate failed" in rec["note"]
    assert [p.name for p in pipeline.LabRun(a, MICRO, None).checkpoints("grpo", 0)] == ["step-000001", "step-000002"]


def test_base_cache_is_reused(tmp_path):
    cache = tmp_path / "cache"
    cfg = replace(MICRO, arms=("sft",))
    first = run_lab(tmp_path / "x", config=cfg, cache_dir=cache, until="base", show_progress=False)
    second = run_lab(tmp_path / "y", config=cfg, cache_dir=cache, until="base", show_progress=False)
    assert read_json(tmp_path / "x/stages/base.json")["from_cache"] is None
    assert read_json(tmp_path / "y/stages/base.json")["from_cache"]
    assert digests(tmp_path / "x")["base/master/model.safetensors"] == digests(tmp_path / "y")["base/master/model.safetensors"]
    assert first["claims"] is None and second["claims"] is None


def test_cli_refuses_a_folder_made_with_another_configuration(run_cli, tmp_path):
    out = tmp_path / "lab"
    code, _, err = run_cli("lab", "--quick", "--no-cache", "--out", out, "--until", "problems")
    assert code == 0, err
    assert json.loads((out / "lab.json").read_text())["config"]["quick"] is True
    code, _, err = run_cli("lab", "--no-cache", "--out", out, "--until", "problems")
    assert code == 2 and "different configuration" in err and "Traceback" not in err
    code, _, err = run_cli("lab", "--quick", "--no-cache", "--out", tmp_path / "z", "--until", "nope")
    assert code == 2 and "unknown stage" in err


def test_terminal_table_renders_stages_and_claims(two_runs, capsys):
    from deltalens.cli.lab import _render

    _, _, ra, _ = two_runs
    _render(ra)
    out = capsys.readouterr().out
    assert "claims (1 seed(s), quick" in out and "arm-grpo-seed0" in out and "training gates" in out
    assert out.count("inconclusive") + out.count("holds") >= len(ra["claims"]["claims"])


def test_fixed_rates_are_recorded_and_used_without_tuning(tmp_path):
    """tune=False (the quick preset): each objective's recorded rate, grpo-random with grpo's."""
    from deltalens.lab import pipeline
    from deltalens.lab.config import QUICK_RATES, quick_config

    cfg = replace(quick_config(), fixed_rates=(("sft", 3e-5), ("rft", 1e-4), ("grpo", 2e-4)))
    run = pipeline.LabRun(tmp_path, cfg, None)
    pipeline.stage_tune(run)
    rates = {arm: pipeline.arm_config(run, arm).learning_rate for arm in cfg.arms}
    assert rates == {"sft": 3e-5, "rft": 1e-4, "grpo": 2e-4, "grpo-random": 2e-4}
    assert "tuning rule" in read_json(tmp_path / "tuning.json")["sft"]["source"]
    assert quick_config().tune is False and dict(quick_config().fixed_rates) == dict(QUICK_RATES)
