"""``deltalens curvature`` end to end on tiny Llama folders: the output contract, the pair mode, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

KINDS = ("hessian", "gauss_newton", "entk_weighted", "entk_logits", "entk_logprob")
ANGLE_KEYS = {"hessian_vs_gauss_newton", "gauss_newton_vs_entk_weighted", "gauss_newton_vs_entk_logits",
              "gauss_newton_vs_entk_logprob"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from deltalens.lab.tiny_model import TinyConfig, build_tiny_llama
    from deltalens.lab.tokenizer import build_char_tokenizer

    root = tmp_path_factory.mktemp("curvature_cli")
    tok = build_char_tokenizer()
    cfg = TinyConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, max_position_embeddings=32)
    paths = []
    for i, scale in enumerate((0.0, 0.02)):
        model = build_tiny_llama(cfg, tokenizer=tok, seed=0)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(scale * torch.randn(p.shape, generator=gen))
        model.save_pretrained(root / f"m{i}")
        tok.save_pretrained(root / f"m{i}")
        paths.append(root / f"m{i}")
    probes = write_jsonl(root / "probes.jsonl", [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(6)])
    return root, paths, probes


def test_single_model_contract(folders, run_cli):
    root, (base, _), probes = folders
    out = root / "single"
    code, stdout, stderr = run_cli("curvature", base, "--probes", probes, "--out", out, "--top", "3",
                                   "--vocab", "8", "--blocks", r"layers\.\d+\.", "--blocks", "lm_head")
    assert code == 0, stderr
    report = json.loads((out / "curvature.json").read_text())
    for key in ("loss", "n_params", "n_probes", "top", "vocab", "angles_deg", "blocks", *KINDS):
        assert key in report
    assert report["n_probes"] == 6 and report["top"] == 3 and report["vocab"] == 8
    assert set(report["angles_deg"]) == ANGLE_KEYS == set(report["angles_baseline_deg"])
    for key, angles in report["angles_deg"].items():
        assert len(angles) == 3 and angles == sorted(angles)
    arrays = np.load(out / "curvature.npz")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    n_params = sum(p.numel() for _, p in model.named_parameters())
    assert report["n_params"] == n_params
    for kind in KINDS:
        row = report[kind]
        assert len(row["eigenvalues"]) == 3 and len(row["residuals"]) == 3
        assert [abs(x) for x in row["eigenvalues"]] == sorted((abs(x) for x in row["eigenvalues"]), reverse=True)
        vectors = arrays[kind]
        assert vectors.shape == (n_params, 3) and vectors.dtype == np.float64
        np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-6)
    # the GN directions are eigenvectors of G: their Rayleigh quotients from the residual term are the eigenvalues
    rayleigh = report["residual_term"]["along_gauss_newton"]["rayleigh_gauss_newton"]
    np.testing.assert_allclose(rayleigh, report["gauss_newton"]["eigenvalues"], rtol=1e-4)
    assert set(report["blocks"]) == {"layers.0.", "lm_head"}
    assert report["blocks"]["lm_head"]["n_params"] == model.lm_head.weight.numel()
    assert "pp_share" in report and "lm_head.weight" in report["pp_share"]["hessian"]["matrices"]
    assert "hessian_vs_gauss_newton" in stdout
    # per-block directions in the npz, each an orthonormal basis over the block's own parameters
    head = arrays["block/lm_head/gauss_newton"]
    assert head.shape == (model.lm_head.weight.numel(), 3)
    np.testing.assert_allclose(head.T @ head, np.eye(3), atol=1e-6)
    assert {f"block/layers.0./{kind}" for kind in KINDS} <= set(arrays.files)
    for kind in KINDS:  # each spectrum carries its gap and its subspace error bound
        assert report[kind]["gap"] is not None and 0.0 <= report[kind]["subspace_error_bound_deg"] <= 90.0
    assert set(report["angles_error_bound_deg"]) == ANGLE_KEYS


def test_pair_of_identical_models_has_no_rotation(folders, run_cli):
    root, (base, _), probes = folders
    out = root / "same"
    code, _, stderr = run_cli("curvature", base, base, "--probes", probes, "--out", out, "--top", "2", "--vocab", "4")
    assert code == 0, stderr
    pair = json.loads((out / "curvature.json").read_text())["pair"]["model"]
    for kind in KINDS:
        assert max(pair[kind]["angles_deg"]) < 1e-6
        assert pair[kind]["update_share"]["share"] is None  # Δθ = 0
    assert pair["hessian"]["curvature_change"]["rescale_share"] is None


def test_pair_contract(folders, run_cli):
    root, (base, tuned), probes = folders
    out = root / "pair"
    code, _, stderr = run_cli("curvature", base, tuned, "--probes", probes, "--out", out, "--top", "2", "--vocab", "4",
                              "--blocks", "model")
    assert code == 0, stderr
    report = json.loads((out / "curvature.json").read_text())
    assert set(report["pair"]["blocks"]) == {"model"}  # a block may be named like the whole model: kept apart
    assert report["pair"]["blocks"]["model"]["hessian"]["angles_deg"] != report["pair"]["model"]["hessian"]["angles_deg"]
    arrays = np.load(out / "curvature.npz")
    assert {*KINDS, *(f"tuned_{k}" for k in KINDS)} <= set(arrays.files)
    row = report["pair"]["model"]["gauss_newton"]
    assert len(row["angles_deg"]) == 2 and max(row["angles_deg"]) > 0
    assert 0.0 <= row["curvature_change"]["rescale_share"] <= 1.0
    assert 0.0 <= row["update_share"]["share"] <= 1.0
    v0, v1 = arrays["gauss_newton"], arrays["tuned_gauss_newton"]
    cos = np.linalg.svd(v0.T @ v1, compute_uv=False)
    np.testing.assert_allclose(np.sort(np.degrees(np.arccos(np.clip(cos, -1, 1)))), row["angles_deg"], atol=1e-3)
    assert report["models"] == {"base": str(base), "tuned": str(tuned)}
    assert report["fingerprints"]["base"]["sha256"] != report["fingerprints"]["tuned"]["sha256"]
    assert row["curvature_change"]["rotation_bound_deg"] >= 0


def test_report_shows_a_curvature_pair(folders, run_cli):
    """``deltalens report`` on a curvature pair's folder: the curvature section holds its numbers."""
    import re

    from deltalens.numbers import fmt
    from deltalens.report import build_report

    root, (base, tuned), probes = folders
    out = root / "pair_for_report"
    code, _, stderr = run_cli("curvature", base, tuned, "--probes", probes, "--out", out, "--top", "2", "--vocab", "4")
    assert code == 0, stderr
    page = build_report(out, root / "pair.html").read_text()
    section = re.search(r'<section id="curvature".*?</section>', page, re.S).group(0)
    report = json.loads((out / "curvature.json").read_text())
    assert fmt(report["gauss_newton"]["eigenvalues"][0]) in section
    angles = report["pair"]["model"]["hessian"]["angles_deg"]
    assert f"{fmt(max(angles))} / {fmt(sum(angles) / len(angles))}" in section
    assert "<figure" in section and "class=\"absent\"" not in section
    # the lab's per-probe-group files are not this contract: ignored (its claims summarize them)
    from deltalens.errors import DeltalensError
    from deltalens.report.inputs import discover_runs

    lab_style = root / "lab_style"
    lab_style.mkdir(exist_ok=True)
    (lab_style / "curvature.json").write_text(json.dumps({"top": 4, "group_size": 4, "groups": []}))
    with pytest.raises(DeltalensError, match="no deltalens outputs found"):
        discover_runs([lab_style])


def test_streamed_function_space_run_matches_the_in_memory_one(folders, run_cli):
    """A memory budget of 0.05 MiB sends G to the function-space route and the directions to disk:
    same eigenvalues and subspaces as the parameter-space, in-memory run (float64), the npz holds
    P × r float64 arrays, no temporary is left; the pair mode streams too."""
    root, (base, tuned), probes = folders
    common = ["--probes", probes, "--top", "3", "--dtype", "float64", "--operators", "gauss_newton,entk_logprob",
              "--tol", "1e-10", "--blocks", "lm_head"]
    code, _, stderr = run_cli("curvature", base, "--out", root / "in_memory", *common)
    assert code == 0, stderr
    code, _, stderr = run_cli("curvature", base, "--out", root / "streamed", *common, "--memory-budget-mb", "0.05")
    assert code == 0, stderr
    memory = json.loads((root / "in_memory" / "curvature.json").read_text())
    streamed = json.loads((root / "streamed" / "curvature.json").read_text())
    assert memory["plan"]["gauss_newton_route"] == "parameter space" and not memory["plan"]["directions_streamed_to_disk"]
    assert streamed["plan"]["gauss_newton_route"] == "function space" and streamed["plan"]["directions_streamed_to_disk"]
    assert memory["operators"] == streamed["operators"] == ["gauss_newton", "entk_logprob"]
    assert "hessian" not in streamed and streamed["residual_term"] is None
    for report in (memory, streamed, streamed["blocks"]["lm_head"]):
        assert set(report["angles_deg"]) == {"gauss_newton_vs_entk_logprob"}
    # HF Llama in float64 still runs parts of RMSNorm and softmax in float32: 1e-6, not 1e-10
    np.testing.assert_allclose(streamed["gauss_newton"]["eigenvalues"], memory["gauss_newton"]["eigenvalues"], rtol=1e-6)
    np.testing.assert_allclose(streamed["angles_deg"]["gauss_newton_vs_entk_logprob"],
                               memory["angles_deg"]["gauss_newton_vs_entk_logprob"], atol=1e-4)
    np.testing.assert_allclose(streamed["pp_share"]["gauss_newton"]["pooled"], memory["pp_share"]["gauss_newton"]["pooled"],
                               rtol=1e-6)
    a, b = np.load(root / "in_memory" / "curvature.npz"), np.load(root / "streamed" / "curvature.npz")
    assert set(a.files) == set(b.files) == {"gauss_newton", "entk_logprob", "block/lm_head/gauss_newton",
                                            "block/lm_head/entk_logprob"}
    for name in a.files:
        assert b[name].dtype == np.float64 and b[name].shape == a[name].shape
        cos = np.linalg.svd(a[name].T @ b[name], compute_uv=False)
        assert np.degrees(np.arccos(np.clip(cos.min(), -1, 1))) < 0.01
    assert sorted(p.name for p in (root / "streamed").iterdir()) == ["curvature.json", "curvature.npz"]
    code, _, stderr = run_cli("curvature", base, tuned, "--out", root / "streamed_pair", *common,
                              "--memory-budget-mb", "0.05")
    assert code == 0, stderr
    pair = json.loads((root / "streamed_pair" / "curvature.json").read_text())["pair"]["model"]["gauss_newton"]
    assert max(pair["angles_deg"]) > 0 and pair["curvature_change"] is None and "streamed" in pair["curvature_change_reason"]
    assert set(np.load(root / "streamed_pair" / "curvature.npz").files) >= {"gauss_newton", "tuned_gauss_newton"}
    # identical models through the streamed, function-space route: no rotation (angles from disk, sine-accurate)
    code, _, stderr = run_cli("curvature", base, base, "--out", root / "streamed_same", *common,
                              "--memory-budget-mb", "0.05")
    assert code == 0, stderr
    same = json.loads((root / "streamed_same" / "curvature.json").read_text())["pair"]["model"]
    assert max(same["gauss_newton"]["angles_deg"]) < 1e-6 and max(same["entk_logprob"]["angles_deg"]) < 1e-6


def test_streamed_run_without_the_disk_for_it_is_one_line_before_any_work(folders, monkeypatch):
    """A streamed run writes its directions twice (temporaries, then the npz): with too little
    free disk it stops before computing anything, and leaves no curvature.json."""
    import shutil
    from collections import namedtuple

    from deltalens.curvature import run as curvature_run
    from deltalens.errors import DeltalensError

    root, (base, _), probes = folders
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
    calls = []
    monkeypatch.setattr(curvature_run, "curvature_block", lambda *a, **k: calls.append(1))
    out = root / "no_disk"
    with pytest.raises(DeltalensError, match="GB of disk"):
        curvature_run.run_curvature(base, probes, out=out, top=2, operators="gauss_newton", memory_budget_mb=0.01)
    assert not calls and not (out / "curvature.json").exists()


@pytest.mark.parametrize("args,message", [
    (["--probes", "missing.jsonl"], "file not found"),
    (["--probes", "bad.jsonl"], "malformed JSON"),
    (["--top", "100000"], "--top 100000"),
    (["--top", "0"], "--top"),
    (["--top", "7"], "probes"),
    (["--vocab", "100000"], "--vocab 100000"),
    (["--blocks", "("], "not a valid regular expression"),
    (["--blocks", "no_such_parameter"], "no parameter name matches"),
    (["--dtype", "float16"], "--dtype"),
    (["--operators", "curvy"], "unknown operator 'curvy'"),
    (["--operators", ","], "--operators"),
    (["--operators", "hessian", "--memory-budget-mb", "0.01"], "--operators hessian"),
    (["--memory-budget-mb", "0"], "--memory-budget-mb"),
    (["--memory-budget-mb", "inf"], "--memory-budget-mb"),
    (["--jvp", "fast"], "--jvp"),
])
def test_bad_input_is_one_line(folders, run_cli, args, message):
    root, (base, _), probes = folders
    (root / "bad.jsonl").write_text('{"prompt": "1", "completion": "2"}\n{not json\n')
    argv = ["curvature", base, "--out", root / "bad_out", "--probes", probes, "--top", "2", *args]
    argv = [a if a not in ("missing.jsonl", "bad.jsonl") else root / a for a in argv]
    code, _, stderr = run_cli(*argv)
    assert code != 0
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (root / "bad_out" / "curvature.json").exists()


def test_missing_model_folder_and_another_model(folders, run_cli, tmp_path):
    root, (base, _), probes = folders
    code, _, stderr = run_cli("curvature", root / "nope", "--probes", probes, "--out", tmp_path / "o")
    assert code == 2 and "does not exist" in stderr and len(stderr.strip().splitlines()) == 1
    from deltalens.lab.tiny_model import TinyConfig, build_tiny_llama

    build_tiny_llama(TinyConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=1)).save_pretrained(tmp_path / "other")
    code, _, stderr = run_cli("curvature", base, tmp_path / "other", "--probes", probes, "--out", tmp_path / "o")
    assert code == 2 and "other" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_three_models_and_a_file_as_output(folders, run_cli):
    root, (base, tuned), probes = folders
    code, _, stderr = run_cli("curvature", base, tuned, base, "--probes", probes, "--out", root / "x")
    assert code != 0 and "expected MODEL or BASE TUNED" in stderr
    (root / "file_out").write_text("")
    code, _, stderr = run_cli("curvature", base, "--probes", probes, "--out", root / "file_out")
    assert code != 0 and "is a file" in stderr
