"""End to end: diff.json/tensors.parquet contract, NaN reporting, resume after an interrupt,
overlap of planted masks, the library functions and the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from tests.fingerprints import folder_sha256

CONTRACT_FIELDS = ("name", "shape", "dtype", "numel", "unchanged_bitwise", "unchanged_relative", "unchanged_absolute",
                   "nonfinite", "delta_fro", "delta_rel", "delta_max_abs", "delta_spectral", "numerical_rank",
                   "effective_rank", "stable_rank", "energy_rank_90", "energy_rank_99", "rank1_share", "module", "layer")


def _pair(tmp_path, n_layers=3, nan=False):
    g = torch.Generator().manual_seed(0)
    base, tuned = {}, {}
    for i in range(n_layers):
        for proj, shape in (("self_attn.q_proj", (24, 16)), ("mlp.up_proj", (32, 16)), ("input_layernorm", (16,))):
            name = f"model.layers.{i}.{proj}.weight"
            w = torch.randn(shape, generator=g).to(torch.bfloat16)
            base[name] = w
            t = w.clone()
            flat = t.view(torch.int16).reshape(-1)
            flat[: (i + 1) * 5] ^= 1  # (i+1)*5 changed entries per tensor
            tuned[name] = t
    if nan:
        tuned["model.layers.0.mlp.up_proj.weight"].reshape(-1)[7] = float("nan")
    (tmp_path / "b").mkdir()
    (tmp_path / "t").mkdir()
    save_file(base, str(tmp_path / "b" / "model.safetensors"))
    save_file(tuned, str(tmp_path / "t" / "model.safetensors"))
    return tmp_path / "b", tmp_path / "t"


def test_cli_diff_writes_contract(run_cli, tmp_path):
    b, t = _pair(tmp_path)
    code, out, err = run_cli("diff", b, t, "--out", tmp_path / "o", "--quiet", "--tol", "1e-5", "--tol", "0.1")
    assert code == 0, err
    assert "all" in out and "q" in out
    doc = json.loads((tmp_path / "o" / "diff.json").read_text())
    assert set(doc) >= {"base", "tuned", "options", "summary", "skipped", "unmatched", "tensors"}
    # each side's content fingerprint: SHA-256 of the sorted SHA-256s of its weight files, by hashlib here
    assert doc["fingerprints"] == {"base": {"sha256": folder_sha256(b)}, "tuned": {"sha256": folder_sha256(t)}}
    assert doc["fingerprints"]["base"] != doc["fingerprints"]["tuned"]
    for row in doc["tensors"]:
        assert set(CONTRACT_FIELDS) <= set(row)
    q0 = next(r for r in doc["tensors"] if r["name"] == "model.layers.0.self_attn.q_proj.weight")
    assert q0["module"] == "q" and q0["layer"] == 0 and q0["unchanged_bitwise"] == 1 - 5 / 384
    assert set(q0["unchanged_absolute"]) == {"1e-05", "0.1"}
    s = doc["summary"]
    changed = sum((i + 1) * 5 for i in range(3)) * 3
    assert s["numel"] == 3 * (384 + 512 + 16)
    assert s["unchanged_bitwise"] == pytest.approx(1 - changed / s["numel"])
    assert s["by_layer"]["2"]["unchanged_bitwise"] == pytest.approx(1 - 45 / 912)
    frame = pd.read_parquet(tmp_path / "o" / "tensors.parquet")
    assert list(frame["name"]) == [r["name"] for r in doc["tensors"]]
    np.testing.assert_allclose(frame["unchanged_bitwise"], [r["unchanged_bitwise"] for r in doc["tensors"]])


def test_nan_counted_and_said(run_cli, tmp_path):
    b, t = _pair(tmp_path, nan=True)
    code, out, err = run_cli("diff", b, t, "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    doc = json.loads((tmp_path / "o" / "diff.json").read_text())
    row = next(r for r in doc["tensors"] if r["name"] == "model.layers.0.mlp.up_proj.weight")
    assert row["nonfinite"] == 1 and doc["summary"]["nonfinite"] == 1
    assert "non-finite" in out and "model.layers.0.mlp.up_proj.weight" in out


def test_resume_after_interrupt_gives_identical_results(tmp_path):
    from deltalens.weights.diff import run_diff

    b, t = _pair(tmp_path)
    full = run_diff(b, t, out=tmp_path / "full")
    seen = []

    def interrupt(row):
        seen.append(row["name"])
        if len(seen) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_diff(b, t, out=tmp_path / "cut", on_row=interrupt)
    assert not (tmp_path / "cut" / "diff.json").exists()
    recomputed = []
    resumed = run_diff(b, t, out=tmp_path / "cut", on_row=lambda r: recomputed.append(r["name"]))
    assert len(recomputed) == len(full.rows) - 4 and not set(recomputed) & set(seen)
    a = json.loads((tmp_path / "full" / "diff.json").read_text())
    c = json.loads((tmp_path / "cut" / "diff.json").read_text())
    assert a["tensors"] == c["tensors"] and a["summary"] == c["summary"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "full" / "tensors.parquet"),
                                  pd.read_parquet(tmp_path / "cut" / "tensors.parquet"))
    assert resumed.summary == full.summary


def test_resume_after_a_kill_mid_line(tmp_path):
    from deltalens.weights.diff import run_diff

    b, t = _pair(tmp_path)
    full = run_diff(b, t, out=tmp_path / "o")
    rows_path = tmp_path / "o" / ".cache" / "rows.jsonl"
    lines = rows_path.read_text().splitlines(keepends=True)
    rows_path.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])  # killed while writing row 4
    (tmp_path / "o" / "diff.json").unlink()
    recomputed = []
    again = run_diff(b, t, out=tmp_path / "o", on_row=lambda r: recomputed.append(r["name"]))
    assert len(recomputed) == len(full.rows) - 3
    assert again.rows == full.rows
    assert len(rows_path.read_text().splitlines()) == len(full.rows)


def test_library_api_is_lazy_and_returns_frame(tmp_path):
    code = "import sys, deltalens; print(','.join(m for m in ('torch', 'transformers', 'pandas') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == ""
    import deltalens

    b, t = _pair(tmp_path)
    r = deltalens.diff(b, t, metrics=["sparsity"])
    assert isinstance(r.summary, dict) and isinstance(r.tensors, pd.DataFrame) and len(r.tensors) == 9
    assert r.tensors["delta_fro"].isna().all() if "delta_fro" in r.tensors else True


def test_overlap_of_planted_masks(run_cli, tmp_path):
    n = 1000
    w0 = torch.randn(n).to(torch.bfloat16)
    (tmp_path / "b").mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": w0}, str(tmp_path / "b" / "model.safetensors"))
    runs = []
    for name, idx in (("r1", range(0, 400)), ("r2", range(300, 500))):
        w = w0.clone()
        w.view(torch.int16)[list(idx)] ^= 1
        (tmp_path / name).mkdir()
        save_file({"model.layers.0.mlp.up_proj.weight": w}, str(tmp_path / name / "model.safetensors"))
        runs.append(tmp_path / name)
    code, out, err = run_cli("overlap", tmp_path / "b", *runs, "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    doc = json.loads((tmp_path / "o" / "overlap.json").read_text())
    o = doc["pairs"][0]["overall"]
    assert o["o1"] == pytest.approx(100 / 400) and o["o1_baseline"] == pytest.approx(0.2)
    assert o["o2"] == pytest.approx(100 / 200) and o["o2_baseline"] == pytest.approx(0.4)
    assert o["jaccard"] == pytest.approx(100 / 500)
    assert doc["tensors"][0]["changed_both"] == 100


def test_demo_runs(run_cli, tmp_path):
    code, out, err = run_cli("demo", "--out", tmp_path / "demo", "--quiet")
    assert code == 0, err
    for name in ("sft", "rl", "lora"):
        assert (tmp_path / "demo" / f"{name}-vs-base" / "diff.json").is_file()
    rl = json.loads((tmp_path / "demo" / "rl-vs-base" / "diff.json").read_text())["summary"]
    sft = json.loads((tmp_path / "demo" / "sft-vs-base" / "diff.json").read_text())["summary"]
    assert rl["unchanged_bitwise"] > 0.7 > 0.3 > sft["unchanged_bitwise"]
    assert (tmp_path / "demo" / "overlap" / "overlap.json").is_file()


def test_one_pooling_everywhere(run_cli, tmp_path, monkeypatch):
    """The rescale share pooled over a run is one number, ‖Δ‖²-weighted, in diff.json's summary
    (whole model and per module), the terminal table, the report's pooling and the plots' per-layer
    pooling: each checked against a numpy Σ s·‖Δ‖²/Σ ‖Δ‖² of the tensor rows (independent)."""
    from deltalens.report import aggregate as report_agg
    from deltalens.weights.aggregate import pool

    monkeypatch.setenv("COLUMNS", "300")  # a table wide enough that no cell is cut
    b, t = _pair(tmp_path)
    code, out, err = run_cli("diff", b, t, "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    doc = json.loads((tmp_path / "o" / "diff.json").read_text())
    mats = [r for r in doc["tensors"] if len(r["shape"]) == 2 and r.get("rescale_share") is not None]
    share = np.array([r["rescale_share"] for r in mats])
    energy = np.array([r["delta_fro"] for r in mats]) ** 2
    want = float((share * energy).sum() / energy.sum())
    s = doc["summary"]
    assert s["rescale_share_energy_weighted"] == pytest.approx(want, rel=1e-12)
    assert "rescale_share_mean" not in s  # no second, unweighted definition under the same label
    q = [r for r in mats if r["module"] == "q"]
    want_q = sum(r["rescale_share"] * r["delta_fro"] ** 2 for r in q) / sum(r["delta_fro"] ** 2 for r in q)
    assert s["by_module"]["q"]["rescale_share_energy_weighted"] == pytest.approx(want_q, rel=1e-12)
    assert report_agg.pool(doc["tensors"], "rescale_share", "energy").value == pytest.approx(want, rel=1e-12)
    layer1 = [r for r in mats if r["layer"] == 1]
    want_l1 = sum(r["rescale_share"] * r["delta_fro"] ** 2 for r in layer1) / sum(r["delta_fro"] ** 2 for r in layer1)
    assert pool(layer1, "rescale_share", "energy").value == pytest.approx(want_l1, rel=1e-12)
    all_row = next(line for line in out.splitlines() if line.strip("│ ").startswith("all"))
    assert f"{want:.3g}" in all_row
