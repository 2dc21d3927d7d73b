"""End to end through the CLI on tiny Llama folders saved in a temporary directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.fingerprints import folder_sha256

CONTRACT_COMPARISON = {
    "top_r", "eigenvalue_log_ratios", "angles_deg", "gap", "wedin_bound", "gap_limited",
    "alignment", "rescale_share", "rescale_baseline",
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from deltalens.lab.tiny_model import TinyConfig, build_tiny_llama
    from deltalens.lab.tokenizer import build_char_tokenizer

    root = tmp_path_factory.mktemp("kernel_cli")
    tok = build_char_tokenizer()
    cfg = TinyConfig(max_position_embeddings=32)
    paths = []
    for i, scale in enumerate((0.0, 0.01, 0.03)):
        model = build_tiny_llama(cfg, tokenizer=tok, seed=0)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(scale * torch.randn(p.shape, generator=gen))
        path = root / f"m{i}"
        model.save_pretrained(path)
        tok.save_pretrained(path)
        paths.append(path)
    probes = write_jsonl(root / "probes.jsonl", [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(6)])
    return root, paths, probes


def test_kernel_command_writes_the_contract(folders, run_cli):
    root, (base, tuned, _), probes = folders
    out = root / "out_exact"
    code, stdout, stderr = run_cli("kernel", base, tuned, "--probes", probes, "--out", out, "--top-r", "3")
    assert code == 0, stderr
    report = json.loads((out / "kernel.json").read_text())
    for key in ("mode", "dim", "seed", "n_probes", "output", "base", "tuned", "comparison", "error_estimate"):
        assert key in report
    assert report["mode"] == "exact" and report["n_probes"] == 6 and report["output"] == "logprob"
    assert CONTRACT_COMPARISON <= set(report["comparison"])
    assert len(report["comparison"]["angles_deg"]) == 3
    values = report["base"]["eigenvalues"]
    assert len(values) == 6 and values == sorted(values, reverse=True)
    arrays = np.load(out / "kernels.npz")
    assert arrays["base"].shape == (6, 6) and arrays["tuned"].shape == (6, 6)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(arrays["base"]))[::-1], values, rtol=1e-9)
    assert "rescale share" in stdout
    assert report["fingerprints"] == {"base": {"sha256": folder_sha256(base)}, "tuned": {"sha256": folder_sha256(tuned)}}


def test_sketch_traits_and_trajectory(folders, run_cli):
    root, (base, tuned, last), probes = folders
    suite = write_jsonl(
        root / "suite.jsonl",
        [{"task": t, "prompt": f"{t} {i}:", "completion": str(i)} for t in ("a", "b", "c") for i in range(2)],
    )
    out = root / "out_sketch"
    code, _, stderr = run_cli(
        "kernel", base, tuned, "--probes", probes, "--out", out, "--mode", "sketch", "--dim", "512", "--traits", suite
    )
    assert code == 0, stderr
    report = json.loads((out / "kernel.json").read_text())
    assert report["mode"] == "sketch" and report["dim"] == 512 and report["seed"] == 0
    assert 0 < report["error_estimate"] < 1
    traits = report["traits"]
    assert [t["name"] for t in traits["traits"]] == ["a", "b", "c"]
    assert CONTRACT_COMPARISON <= set(traits["comparison"])

    out = root / "out_traj"
    code, stdout, stderr = run_cli("kernel", "--trajectory", base, tuned, last, "--probes", probes, "--out", out)
    assert code == 0, stderr
    report = json.loads((out / "kernel.json").read_text())
    steps = report["trajectory"]
    assert [s["checkpoint"] for s in steps] == [str(tuned), str(last)]
    assert CONTRACT_COMPARISON <= set(steps[0]["vs_base"]) and CONTRACT_COMPARISON <= set(steps[1]["vs_previous"])
    assert steps[0]["vs_base"] == steps[0]["vs_previous"]
    assert set(np.load(out / "kernels.npz").files) == {"base", "tuned", "checkpoint_1", "checkpoint_2"}


def test_align_command(folders, run_cli):
    root, (base, tuned, _), probes = folders
    data = write_jsonl(root / "data.jsonl", [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(3)])
    out = root / "out_align"
    code, stdout, stderr = run_cli("align", base, "--data", data, "--probes", probes, "--out", out, "--top-r", "2")
    assert code == 0, stderr
    report = json.loads((out / "align.json").read_text())
    assert report["alignment"]["baseline"] == pytest.approx(2 / 6)
    assert 0 <= report["alignment"]["share"] <= 1
    assert "baseline" in stdout


@pytest.mark.parametrize(
    "case, expected",
    [
        ("long", "longer than the model's context of 32"),
        ("empty", "no probes"),
        ("dim", "larger than the parameter count"),
        ("count", "expected BASE and TUNED"),
    ],
)
def test_bad_input_is_one_line(folders, run_cli, case, expected):
    root, (base, tuned, _), probes = folders
    out = root / f"bad_{case}"
    args = ["kernel", base, tuned, "--probes", probes, "--out", out]
    if case == "long":
        args[4] = write_jsonl(root / "long.jsonl", [{"prompt": "x" * 40, "completion": "y"}])
    elif case == "empty":
        args[4] = write_jsonl(root / "empty.jsonl", [])
    elif case == "dim":
        args += ["--mode", "sketch", "--dim", "100000000"]
    else:
        args = ["kernel", base, "--probes", probes, "--out", out]
    code, _, stderr = run_cli(*args)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deltalens: error:") and expected in lines[0]
    assert not (out / "kernel.json").exists()


def test_trajectory_with_traits_matches_the_pair_run(folders):
    """One trajectory call yields run_kernel's base-vs-last comparison and trait block exactly (the
    lab now makes only this call, so each kernel is computed once)."""
    from deltalens.kernel.run import run_kernel, run_trajectory

    root, (base, tuned, last), probes = folders
    suite = [{"task": t, "prompt": f"{t} {i}:", "completion": str(i)} for t in ("a", "b") for i in range(2)]
    pair, pair_arrays = run_kernel(base, last, probes, traits=suite)
    traj, traj_arrays = run_trajectory([base, tuned, last], probes, traits=suite)
    assert traj["comparison"] == pair["comparison"] and traj["traits"] == pair["traits"]
    for name in ("base", "tuned", "traits_base", "traits_tuned"):
        assert torch.equal(traj_arrays[name], pair_arrays[name]), name


def test_multi_output_kernels_through_the_cli(folders, run_cli):
    """--output logits-full / logits-trace: rows per (probe, position, token), or their trace; the
    trace equals the full kernel summed over each probe pair's diagonal output block."""
    root, (base, tuned, _), probes = folders
    full, trace = root / "out_full", root / "out_trace"
    code, _, stderr = run_cli("kernel", base, tuned, "--probes", probes, "--out", full, "--top-r", "3",
                              "--output", "logits-full", "--top-v", "3")
    assert code == 0, stderr
    code, _, stderr = run_cli("kernel", base, tuned, "--probes", probes, "--out", trace, "--top-r", "3",
                              "--output", "logits-trace", "--top-v", "3", "--implementation", "structured")
    assert code == 0, stderr
    rf, rt = (json.loads((d / "kernel.json").read_text()) for d in (full, trace))
    assert rf["kernel_rows"] == 18 and rt["kernel_rows"] == 6 and rf["n_outputs"] == 3
    assert rf["output_token_ids"] == rt["output_token_ids"] and rf["output_positions"] == [0]
    assert rt["structured_layers"] > 0 and rf["memory_budget_mb"] >= 256
    kf, kt = np.load(full / "kernels.npz")["tuned"], np.load(trace / "kernels.npz")["tuned"]
    summed = np.einsum("iojo->ij", kf.reshape(6, 3, 6, 3))
    np.testing.assert_allclose(kt, summed, rtol=1e-5, atol=1e-6 * np.abs(kt).max())
    code, _, stderr = run_cli("kernel", base, tuned, "--probes", probes, "--out", root / "bad", "--output", "logits-full",
                              "--positions", "0,3")
    assert code != 0 and "--positions needs index 3" in stderr and "Traceback" not in stderr


def test_trajectory_and_traits_together_through_the_cli(folders, run_cli):
    """Issue 16 §9: --traits with --trajectory gives the trajectory and the trait block of the base
    vs the last checkpoint, the same block a pair run of those two gives."""
    root, (base, tuned, last), probes = folders
    suite = write_jsonl(root / "suite_tt.jsonl",
                        [{"task": t, "prompt": f"{t} {i}:", "completion": str(i)} for t in ("a", "b") for i in range(2)])
    code, stdout, stderr = run_cli("kernel", "--trajectory", base, tuned, last, "--probes", probes, "-o",
                                   root / "tt", "--traits", suite)
    assert code == 0, stderr
    code, _, stderr = run_cli("kernel", base, last, "--probes", probes, "-o", root / "tt_pair", "--traits", suite)
    assert code == 0, stderr
    both = json.loads((root / "tt" / "kernel.json").read_text())
    pair = json.loads((root / "tt_pair" / "kernel.json").read_text())
    assert [s["checkpoint"] for s in both["trajectory"]] == [str(tuned), str(last)]
    assert both["traits"] == pair["traits"] and "trait a: predicted" in stdout


def test_probes_in_the_problem_format_and_limit(folders, run_cli):
    """--probes takes problems {id, prompt, answer, task?} (the answer, a number too, is the
    completion); --limit N keeps the first N of each task: the kernel equals the one of the
    equivalent {prompt, completion} probes."""
    root, (base, tuned, _), _ = folders
    problems = write_jsonl(root / "problems.jsonl",
                           [{"id": f"{t}{i}", "prompt": f"{i}+{t}=", "answer": i + 1, "task": t}
                            for t in ("1", "2") for i in range(4)])
    kept = write_jsonl(root / "kept.jsonl", [{"prompt": f"{i}+{t}=", "completion": str(i + 1)}
                                             for t in ("1", "2") for i in range(2)])
    code, _, stderr = run_cli("kernel", base, tuned, "--probes", problems, "-o", root / "lim", "--limit", "2")
    assert code == 0, stderr
    code, _, stderr = run_cli("kernel", base, tuned, "--probes", kept, "-o", root / "kept")
    assert code == 0, stderr
    a, b = np.load(root / "lim" / "kernels.npz"), np.load(root / "kept" / "kernels.npz")
    assert a["base"].shape == (4, 4)
    np.testing.assert_array_equal(a["base"], b["base"])
    np.testing.assert_array_equal(a["tuned"], b["tuned"])
