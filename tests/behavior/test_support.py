"""Support classes and ratios on crafted samples files with hand-computed counts."""

from __future__ import annotations

import json
import math

import pytest
from behavior_helpers import samples_rows, write_jsonl

from deltalens.behavior.support import support, support_from_flags

T, F = True, False
# hand-made: 4 samples per problem
BASE = {"a": [F, F, T, F], "b": [F, F, F, F], "c": [T, F, F, F], "d": [F, F, F, F],
        "e": [F, F, F, T], "f": [T, T, T, T], "g": [F, F, F, F]}
TUNED = {"a": [T, T, T, T], "b": [F, T, F, F], "c": [F, F, F, F], "d": [F, F, F, F],
         "e": [F, F, F, F], "f": [T, F, F, F], "g": [F, F, T, F]}
# at k=4: a P, b E, c S, d O, e S, f P, g E  -> P=2, E=2, S=2, O=1
# at k=2: a E(base's hit is at index 2), b E, c S, d O, e O, f P, g O -> P=1, E=2, S=1, O=3


def test_counts_and_ratios_k4():
    r = support_from_flags(BASE, TUNED)
    assert r["k"] == 4 and r["counts"] == {"P": 2, "E": 2, "S": 2, "O": 1}
    assert r["SRR"] == pytest.approx(2 / 4) and r["NDR"] == pytest.approx(2 / 4)
    assert r["SDS"] == pytest.approx(0.5) and r["NSCR"] == pytest.approx(0.0)
    assert r["epsilon"] == pytest.approx(math.log(20) / 4)
    assert [p["class"] for p in r["problems"]] == ["P", "E", "S", "O", "S", "P", "E"]


def test_counts_and_ratios_k2():
    r = support_from_flags(BASE, TUNED, k=2)
    assert r["counts"] == {"P": 1, "E": 2, "S": 1, "O": 3}
    srr, ndr = 1 / 2, 2 / 3
    assert r["SRR"] == pytest.approx(srr) and r["NDR"] == pytest.approx(ndr)
    assert r["SDS"] == pytest.approx(2 * srr * ndr / (srr + ndr))
    assert r["NSCR"] == pytest.approx((2 - 1) / 4)


def test_undefined_ratios_are_null():
    r = support_from_flags({"a": [F]}, {"a": [F]})
    assert r["counts"]["O"] == 1 and r["SRR"] is None and r["NDR"] is None and r["NSCR"] is None


def test_support_cli(tmp_path, run_cli):
    b = write_jsonl(tmp_path / "b.jsonl", samples_rows("base", BASE))
    t = write_jsonl(tmp_path / "t.jsonl", samples_rows("tuned", TUNED))
    code, out, err = run_cli("support", b, t, "--out", tmp_path / "o", "--k", "2")
    assert code == 0, err
    data = json.loads((tmp_path / "o" / "support.json").read_text())
    assert data["base"] == "base" and data["tuned"] == "tuned" and data["k"] == 2
    assert data["counts"] == {"P": 1, "E": 2, "S": 1, "O": 3}
    assert set(data) >= {"SRR", "NDR", "SDS", "NSCR", "epsilon", "problems"}
    assert data["problems"][0] == {"id": "a", "base_correct": False, "tuned_correct": True, "class": "E"}


def test_support_bad_inputs(tmp_path, run_cli):
    b = write_jsonl(tmp_path / "b.jsonl", samples_rows("base", BASE))
    t = write_jsonl(tmp_path / "t.jsonl", samples_rows("tuned", {**TUNED, "zz": [T]}))
    code, _, err = run_cli("support", b, t, "--out", tmp_path / "o")
    assert code == 2 and "'zz'" in err
    code, _, err = run_cli("support", b, b, "--out", tmp_path / "o")
    assert code == 2 and "conflicts" in err
    code, _, err = run_cli("support", b, write_jsonl(tmp_path / "t2.jsonl", samples_rows("tuned", TUNED)),
                           "--out", tmp_path / "o", "--k", "9")
    assert code == 2 and "k=9" in err
    assert not (tmp_path / "o" / "support.json").exists()
    with pytest.raises(Exception):
        support(b, b)
