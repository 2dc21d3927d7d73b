"""Task generators, answer checking and checkpoint schedules."""

from __future__ import annotations

import re

import pytest

from deltalens.lab.release import checkpoint_steps
from deltalens.lab.tasks import (
    ALL_TASKS,
    extract_answer,
    generate_problems,
    is_correct,
    teacher_completion,
)


def reference_answer(prompt: str) -> str:
    """Independent solver from the prompt text alone."""
    if m := re.fullmatch(r"(\d+)\+(\d+)=", prompt):
        return str(int(m.group(1)) + int(m.group(2)))
    if m := re.fullmatch(r"m:(\d+),(\d+)=", prompt):
        return str(max(int(m.group(1)), int(m.group(2))))
    if m := re.fullmatch(r"c:([a-j]+)=", prompt):
        return m.group(1)
    if m := re.fullmatch(r"r:([a-j]+)=", prompt):
        return m.group(1)[::-1]
    raise AssertionError(prompt)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_generated_answers_are_right_distinct_and_seeded(task):
    probs = generate_problems(task, 200, seed=3, digits=3, split="test")
    assert all(set(p) == {"id", "prompt", "answer", "task"} for p in probs)
    assert all(p["answer"] == reference_answer(p["prompt"]) for p in probs)
    assert len({p["prompt"] for p in probs}) == 200 and len({p["id"] for p in probs}) == 200
    assert probs == generate_problems(task, 200, seed=3, digits=3, split="test")
    assert probs != generate_problems(task, 200, seed=4, digits=3, split="test")
    assert generate_problems(task, 50, seed=3, digits=3, split="test") == probs[:50]  # prefix-stable pools


def test_exclusion_and_exhaustion():
    first = generate_problems("add", 10, seed=0, digits=1, split="a")
    other = generate_problems("add", 10, seed=0, digits=1, split="a", exclude={p["prompt"] for p in first})
    assert not {p["prompt"] for p in first} & {p["prompt"] for p in other}
    with pytest.raises(ValueError, match="cannot supply"):
        generate_problems("add", 101, seed=0, digits=1)  # only 100 one-digit pairs exist


def test_both_solution_styles_verify_and_wrong_answers_do_not():
    p = {"prompt": "123+45=", "answer": "168", "task": "add"}
    assert teacher_completion(p) == "861>168"
    assert is_correct(p, "168") and is_correct(p, "861>168") and is_correct(p, " 168<eos>junk")
    assert not is_correct(p, "169") and not is_correct(p, "168>861") and not is_correct(p, "")
    assert extract_answer("add", "abc") is None
    assert is_correct({"answer": "ba", "task": "reverse"}, "ba") and not is_correct({"answer": "ba", "task": "reverse"}, "ab")


def test_checkpoint_schedule():
    assert checkpoint_steps(120, 10) == list(range(12, 121, 12))
    assert checkpoint_steps(16, 4) == [4, 8, 12, 16]
    assert checkpoint_steps(3, 10) == [1, 2, 3]
    assert checkpoint_steps(7, 3)[-1] == 7


def test_noisy_pretraining_answers_differ_in_exactly_one_digit_at_the_configured_rate():
    import random

    from deltalens.lab.pretrain import PretrainConfig, corrupt_digit, mixture_batch

    rng = random.Random(0)
    for answer in ("7", "10", "168", "1998"):
        for _ in range(50):
            bad = corrupt_digit(answer, rng)
            assert len(bad) == len(answer) and sum(a != b for a, b in zip(answer, bad)) == 1
            assert not (len(bad) > 1 and bad[0] == "0")
    cfg = PretrainConfig(batch_size=4000, answer_noise=0.3, mixture=(("add", 1.0),))
    batch = mixture_batch(random.Random(1), cfg, set())
    wrong = sum(str(eval(p[:-1])) != c for p, c in batch)  # the prompt "a+b=" is the sum's own reference
    assert abs(wrong / len(batch) - 0.3) < 0.03
