"""pass@k against exact rationals, bootstrap intervals, crossover and the passk command."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from behavior_helpers import samples_rows, write_jsonl

from deltalens.behavior.passk import bootstrap_ci, crossover, crossover_k, k_grid, pass_at_k, pass_at_k_curve, passk
from deltalens.errors import DeltalensError


def exact(n, c, k) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def _check(n, c, k):
    ref = exact(n, c, k)
    got = pass_at_k(n, c, k)
    # relative accuracy on the value and on its complement (no cancellation either side)
    assert abs(Fraction(got) - ref) <= Fraction(1, 10**12) * ref + Fraction(1, 10**300), (n, c, k)
    assert abs(Fraction(1 - got) - (1 - ref)) <= Fraction(1, 10**10) * (1 - ref) + Fraction(1, 10**15), (n, c, k)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 17, 64])
def test_pass_at_k_exact_all_c_k_small_n(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            _check(n, c, k)


def test_pass_at_k_exact_n1024_every_c():
    n = 1024
    ks = [1, 2, 3, 4, 8, 16, 31, 64, 128, 256, 512, 1000, 1024]
    for c in range(n + 1):
        for k in ks:
            _check(n, c, k)


def test_pass_at_k_exact_n1024_every_k_for_some_c():
    n = 1024
    for c in (0, 1, 2, 7, 100, 511, 512, 900, 1023, 1024):
        for k in range(1, n + 1):
            _check(n, c, k)


def test_pass_at_k_tiny_values_keep_relative_accuracy():
    # 1/1024 and 1 - C(1023,1)/C(1024,1): a naive 1 - prod loses digits here
    assert pass_at_k(1024, 1, 1) == pytest.approx(1 / 1024, rel=1e-14)
    assert pass_at_k(10**6, 1, 1) == pytest.approx(1e-6, rel=1e-12)


def test_pass_at_k_bad_arguments():
    for args in [(4, 5, 1), (4, 1, 5), (4, 1, 0), (0, 0, 1)]:
        with pytest.raises(DeltalensError):
            pass_at_k(*args)


def test_k_grid():
    assert k_grid(1) == [1]
    assert k_grid(16) == [1, 2, 4, 8, 16]
    assert k_grid(12) == [1, 2, 4, 8, 12]


def test_curve_mean_and_n_min():
    flags = {"a": [True, False, False, False], "b": [False] * 8, "c": [True] * 4}
    cur = pass_at_k_curve(flags, n_boot=200)
    assert cur["k"] == [1, 2, 4] and cur["n_min"] == 4 and cur["n_problems"] == 3
    for i, k in enumerate(cur["k"]):
        ref = (exact(4, 1, k) + exact(8, 0, k) + exact(4, 4, k)) / 3
        assert cur["pass_at_k"][i] == pytest.approx(float(ref), rel=1e-12)
        assert cur["ci_low"][i] <= cur["pass_at_k"][i] <= cur["ci_high"][i]
    with pytest.raises(DeltalensError, match="'z' has no samples"):
        pass_at_k_curve({"a": [True], "z": []})
    with pytest.raises(DeltalensError, match="k=8"):
        pass_at_k_curve(flags, ks=[8])


def test_bootstrap_matches_numpy_reference():
    rng = np.random.default_rng(3)
    mat = rng.random((50, 3))
    lo, hi = bootstrap_ci(mat, n_boot=500, seed=7)
    # independent reference: explicit loop with the same generator stream
    g = np.random.default_rng(7)
    idx = g.integers(0, 50, size=(500, 50))
    means = np.array([[mat[row, j].mean() for j in range(3)] for row in idx])
    np.testing.assert_allclose(lo, np.percentile(means, 2.5, axis=0))
    np.testing.assert_allclose(hi, np.percentile(means, 97.5, axis=0))
    # a constant column has a zero-width interval
    lo, hi = bootstrap_ci(np.ones((10, 1)), n_boot=50)
    assert lo[0] == hi[0] == 1.0


def test_crossover():
    base = {"k": [1, 2, 4, 8], "pass_at_k": [0.2, 0.5, 0.8, 0.9]}
    tuned = {"k": [1, 2, 4, 8], "pass_at_k": [0.4, 0.5, 0.6, 0.6]}
    assert crossover_k(base, tuned) == 4
    assert crossover_k(tuned, base) is None
    # base ahead at 2 then behind at 4 then ahead at 8: only the final stretch counts
    assert crossover_k({"k": [1, 2, 4, 8], "pass_at_k": [0, .6, .6, .9]}, tuned) == 8


def test_no_crossover_when_the_base_leads_everywhere():
    # the base is ahead at every k: the curves never cross, so no k* (the old rule said k* = 1)
    base = {"k": [1, 2, 4], "pass_at_k": [0.3, 0.5, 0.7]}
    tuned = {"k": [1, 2, 4], "pass_at_k": [0.2, 0.3, 0.4]}
    k, reason = crossover(base, tuned)
    assert k is None and "ahead at every common k" in reason
    k, reason = crossover(tuned, base)
    assert k is None and "not ahead at the largest common k (4)" in reason
    # one shared k with the base ahead: no k below it, so nothing is crossed either
    assert crossover({"k": [1], "pass_at_k": [0.5]}, {"k": [1], "pass_at_k": [0.1]})[0] is None


def test_passk_records_why_there_is_no_crossover(tmp_path, run_cli):
    # base solves every problem with every sample; tuned never solves p0 and half the samples of
    # p1, p2: pass@k base 1, tuned 1/3, 1/2 + ..., 2/3 -> the base leads at k = 1, 2, 4
    base = {f"p{i}": [True] * 4 for i in range(3)}
    tuned = {f"p{i}": [i > 0 and j < 2 for j in range(4)] for i in range(3)}
    b = write_jsonl(tmp_path / "base.jsonl", samples_rows("base", base))
    t = write_jsonl(tmp_path / "tuned.jsonl", samples_rows("tuned", tuned))
    code, out, err = run_cli("passk", b, t, "--out", tmp_path / "o", "--n-boot", "20")
    assert code == 0, err
    cross = json.loads((tmp_path / "o" / "passk.json").read_text())["crossover"]
    assert cross["k"] is None and "ahead at every common k" in cross["reason"]
    assert "no crossover k*" in out


def _files(tmp_path):
    # base: broad (each problem solved by 1 of 8 samples); tuned: sharp (all or nothing)
    base = {f"p{i}": [j == i % 8 for j in range(8)] for i in range(6)}
    tuned = {f"p{i}": [i < 3] * 8 for i in range(6)}
    b = write_jsonl(tmp_path / "base.jsonl", samples_rows("base", base))
    t = write_jsonl(tmp_path / "tuned.jsonl", samples_rows("tuned", tuned))
    return b, t


def test_passk_library_and_crossover(tmp_path):
    b, t = _files(tmp_path)
    res = passk([b, t], n_boot=100)
    mb, mt = res["models"]["base"], res["models"]["tuned"]
    assert mb["k"] == [1, 2, 4, 8]
    assert mb["pass_at_k"][0] == pytest.approx(1 / 8) and mb["pass_at_k"][-1] == 1.0
    assert mt["pass_at_k"] == pytest.approx([0.5] * 4)
    # base: pass@k = k/8 -> above 0.5 from k=8 only (k=4 gives exactly 0.5, not above)
    # files written by hand, without sample's record beside them: no fingerprint to carry
    assert res["crossover"] == {"base": "base", "tuned": "tuned", "k": 8,
                                "fingerprints": {"base": None, "tuned": None}, "rule": res["crossover"]["rule"]}


def test_passk_cli_writes_json_and_plot(tmp_path, run_cli):
    b, t = _files(tmp_path)
    code, out, err = run_cli("passk", b, t, "--out", tmp_path / "o", "--n-boot", "50")
    assert code == 0, err
    data = json.loads((tmp_path / "o" / "passk.json").read_text())
    assert set(data["models"]) == {"base", "tuned"}
    assert set(data["models"]["base"]) >= {"k", "pass_at_k", "ci_low", "ci_high", "n_problems", "n_min"}
    assert data["crossover"]["k"] == 8
    assert (tmp_path / "o" / "passk.png").read_bytes()[:4] == b"\x89PNG"


def test_passk_bad_inputs(tmp_path, run_cli):
    b, t = _files(tmp_path)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "passk.json").write_text("keep")
    # same model name in two files
    t2 = write_jsonl(tmp_path / "t2.jsonl", samples_rows("base", {"p0": [True]}))
    code, _, err = run_cli("passk", b, t2, "--out", tmp_path / "o")
    assert code == 2 and "conflicts" in err and err.count("\n") == 1
    # malformed line, with its line number
    bad = tmp_path / "bad.jsonl"
    bad.write_text(b.read_text().splitlines()[0] + "\n\n{oops\n")
    code, _, err = run_cli("passk", bad, t, "--out", tmp_path / "o")
    assert code == 2 and "bad.jsonl:3" in err
    # two model names inside one file
    mixed = write_jsonl(tmp_path / "mixed.jsonl", samples_rows("a", {"p0": [True]}) + samples_rows("b", {"p1": [True]}))
    code, _, err = run_cli("passk", mixed, "--out", tmp_path / "o")
    assert code == 2 and "conflicts" in err
    # unverified samples
    rows = samples_rows("u", {"p0": [True]})
    rows[0]["correct"] = None
    code, _, err = run_cli("passk", write_jsonl(tmp_path / "u.jsonl", rows), "--out", tmp_path / "o")
    assert code == 2 and "not verified" in err
    # a problem without samples
    probs = write_jsonl(tmp_path / "p.jsonl", [{"id": f"p{i}", "prompt": "x", "answer": "1"} for i in range(7)])
    code, _, err = run_cli("passk", b, t, "--problems", probs, "--out", tmp_path / "o")
    assert code == 2 and "'p6' has no samples" in err
    assert (tmp_path / "o" / "passk.json").read_text() == "keep"
