"""Verifiers: numeric extraction and exact match, math-verify in a killable process, user functions."""

from __future__ import annotations

import json
import threading
import time

import pytest
from behavior_helpers import write_jsonl

from deltalens.behavior.verify import MathVerifier, extract_number, get_verifier, numeric_verifier, verify
from deltalens.errors import DeltalensError


@pytest.mark.parametrize("text,expected", [
    ("so the answer is 42.", "42."), ("x = -3, y = 7", "7"), ("#### 1,234 done 5", "1,234"),
    (r"thus \boxed{3/4} and 9", "3/4"), ("no digits", None), ("1e3 apples", "1e3"),
])
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_numeric_match_is_exact():
    assert numeric_verifier("it is 0.5", "1/2") == ("0.5", True)
    assert numeric_verifier("it is 1,000", "1000")[1]
    assert not numeric_verifier("it is 0.3333333", "1/3")[1]
    assert numeric_verifier("nothing", "3") == (None, False)
    with pytest.raises(DeltalensError, match="not a number"):
        numeric_verifier("3", "three")


def user_check(completion, answer):
    return completion.strip()[-len(answer):], completion.strip().endswith(answer)


def test_user_function_by_file(tmp_path):
    f = tmp_path / "myverif.py"
    f.write_text("def check(c, a):\n    return ('X', a in c)\n")
    fn = get_verifier(f"{f}:check")
    assert fn("abc", "b") == ("X", True)
    with pytest.raises(DeltalensError, match="no function"):
        get_verifier(f"{f}:missing")
    with pytest.raises(DeltalensError, match="cannot import"):
        get_verifier("no_such_module_xyz:f")


@pytest.fixture(scope="module")
def math_verifier():
    with MathVerifier(timeout=20.0) as mv:
        yield mv


def test_math_verify_gold_first_and_threads(math_verifier):
    assert math_verifier(r"The answer is $\frac{1}{2}$", "0.5")[1]
    assert not math_verifier("The answer is 3", "4")[1]
    # safe inside worker threads (math-verify's own SIGALRM timeouts would raise there)
    results = []
    threads = [threading.Thread(target=lambda: results.append(math_verifier("so $x=2$", "2")[1])) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True, True, True]


def hanging_worker(conn):
    """Answers like math-verify but never returns on the completion 'hang'."""
    while True:
        msg = conn.recv()
        if msg is None:
            return
        if msg[0] == "hang":
            time.sleep(3600)
        conn.send(("ok", msg[0], msg[0] == msg[1], True))


class HangingVerifier(MathVerifier):
    _target = staticmethod(hanging_worker)


def test_time_limit_by_process_kills_and_recovers():
    mv = HangingVerifier(timeout=0.5)
    try:
        assert mv("7", "7") == ("7", True)
        t0 = time.monotonic()
        out = []
        th = threading.Thread(target=lambda: out.append(mv("hang", "1")))  # from a worker thread
        th.start()
        th.join(10)
        assert out == [(None, False)] and time.monotonic() - t0 < 5 and mv.timeouts == 1
        assert mv("1", "1") == ("1", True)  # a fresh worker answers again
    finally:
        mv.close()


def test_verify_cli(tmp_path, run_cli):
    probs = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "1+1=", "answer": "2"},
                                               {"id": "b", "prompt": "2+2=", "answer": "4"}])
    rows = [{"id": "a", "model": "m", "sample_index": 0, "completion": "2"},
            {"id": "a", "model": "m", "sample_index": 1, "completion": "3"},
            {"id": "b", "model": "m", "sample_index": 0, "completion": "so 4.0"}]
    s = write_jsonl(tmp_path / "s.jsonl", rows)
    code, out, err = run_cli("verify", s, "--problems", probs)
    assert code == 0, err
    got = [json.loads(line) for line in s.read_text().splitlines()]
    assert [(r["id"], r["correct"], r["extracted"]) for r in got] == [("a", True, "2"), ("a", False, "3"), ("b", True, "4.0")]
    # user function through the CLI, written elsewhere
    code, out, err = run_cli("verify", s, "--problems", probs, "--method",
                             f"{__file__}:user_check", "--out", tmp_path / "v.jsonl")
    assert code == 0, err
    assert [json.loads(x)["correct"] for x in (tmp_path / "v.jsonl").read_text().splitlines()] == [True, False, False]


def test_verify_bad_inputs(tmp_path, run_cli):
    s = write_jsonl(tmp_path / "s.jsonl", [{"id": "a", "model": "m", "sample_index": 0, "completion": "2"}])
    before = s.read_text()
    cases = {
        "no answer": [{"id": "a", "prompt": "x"}],
        "duplicated problem id 'a'": [{"id": "a", "prompt": "x", "answer": "1"}, {"id": "a", "prompt": "y", "answer": "2"}],
        "not a number": [{"id": "a", "prompt": "x", "answer": "two"}],
        "not in the problems file": [{"id": "b", "prompt": "x", "answer": "2"}],
    }
    for i, (msg, probs) in enumerate(cases.items()):
        p = write_jsonl(tmp_path / f"p{i}.jsonl", probs)
        code, _, err = run_cli("verify", s, "--problems", p)
        assert code == 2 and msg in err and err.count("\n") == 1, err
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"id": "a", "prompt": "x", "answer": "2"}\n\n{"id": "b", "prompt": \n')
    code, _, err = run_cli("verify", s, "--problems", raw)
    assert code == 2 and "raw.jsonl:3: malformed JSON" in err
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "prompt": "x", "answer": "2"}\n\n\n{"id": "a", "prompt": "y", "answer": "2"}\n')
    code, _, err = run_cli("verify", s, "--problems", dup)
    assert code == 2 and "dup.jsonl:4: duplicated problem id 'a' (first at line 1)" in err
    assert s.read_text() == before
