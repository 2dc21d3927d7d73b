"""The lab's task family: seeded generators whose answers are checked exactly.

Problems follow SPEC §7: ``{"id", "prompt", "answer", "task"}``. Every prompt ends in ``=``;
a completion is the text the model writes after it, up to ``<eos>``.

- ``add`` (the target task): ``"123+45="`` → ``"168"``; operands have 1..``digits`` digits.
- ``copy``, ``reverse``, ``max`` (held out of all fine-tuning, to measure forgetting):
  ``"c:abcd="`` → ``"abcd"``, ``"r:abcd="`` → ``"dcba"``, ``"m:312,97="`` → ``"312"``.

Two solution styles exist for ``add``: the base style writes the sum (``"168"``; the tiny lab's
SFT arm trains on it, so SFT and RL differ in objective, not in style); the teacher style (a
different but correct solution, kept for experiments on style) first writes the sum's digits
reversed, then ``>``, then the sum (``"861>168"``). The verifier accepts both: the answer is
the last run of digits in the completion.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable

from deltalens.lab import word_tasks

TARGET_TASK = "add"
HELDOUT_TASKS = ("copy", "reverse", "max")
ALL_TASKS = (TARGET_TASK, *HELDOUT_TASKS)
LETTERS = "abcdefghij"

_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)", re.DOTALL)


def _operand(rng: random.Random, digits: int) -> int:
    """An integer with a uniformly chosen number of digits in 1..``digits``."""
    n = rng.randint(1, digits)
    low = 0 if n == 1 else 10 ** (n - 1)
    return rng.randint(low, 10**n - 1)


def make_problem(task: str, rng: random.Random, *, digits: int) -> dict:
    """One problem ``{prompt, answer, task}`` of ``task`` drawn from ``rng`` (no id yet)."""
    if task == "add":
        a, b = _operand(rng, digits), _operand(rng, digits)
        return {"prompt": f"{a}+{b}=", "answer": str(a + b), "task": task}
    if task in ("copy", "reverse"):
        word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, digits + 2)))
        prefix = "c" if task == "copy" else "r"
        answer = word if task == "copy" else word[::-1]
        return {"prompt": f"{prefix}:{word}=", "answer": answer, "task": task}
    if task == "max":
        a, b = _operand(rng, digits), _operand(rng, digits)
        return {"prompt": f"m:{a},{b}=", "answer": str(max(a, b)), "task": task}
    if task in word_tasks.ALL_TASKS:
        raise ValueError(f"task {task!r} is a chat task: generate it with a render function")
    raise ValueError(f"unknown task {task!r}; expected one of {ALL_TASKS + word_tasks.ALL_TASKS}")


def task_family(base: str) -> tuple[str, tuple[str, ...]]:
    """``(target task, held-out tasks)`` of the lab on ``base`` (``tiny`` or ``smollm2``)."""
    if base == "smollm2":
        return word_tasks.TARGET_TASK, word_tasks.HELDOUT_TASKS
    if base == "tiny":
        return TARGET_TASK, HELDOUT_TASKS
    raise ValueError(f"unknown lab base {base!r}; expected tiny or smollm2")


def _chat_problem(task: str, rng: random.Random, render: Callable[[str], str], digits: int) -> dict:
    problem = word_tasks.make_question(task, rng, digits)
    return {"prompt": render(problem["question"]), "task": task, **problem}


def generate_problems(
    task: str, n: int, *, seed: int, digits: int = 3, exclude: Iterable[str] = (), split: str = "x",
    render: Callable[[str], str] | None = None,
) -> list[dict]:
    """``n`` distinct problems of ``task``, deterministic in ``seed``; prompts in ``exclude`` are skipped.

    Chat tasks (:mod:`deltalens.lab.word_tasks`) need ``render``, which turns the question into
    the model's prompt (its chat template); their problems also carry the plain ``question``
    (and, for the target task, the ``work`` the teacher writes out).
    Ids are ``"{task}-{split}-{i:05d}"``. Raises ``ValueError`` when the task cannot supply
    ``n`` distinct prompts.
    """
    rng = random.Random(f"{task}/{split}/{seed}")
    seen = set(exclude)
    out: list[dict] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"task {task!r} with digits={digits} cannot supply {n} distinct problems")
        problem = _chat_problem(task, rng, render, digits) if render is not None else make_problem(task, rng, digits=digits)
        if problem["prompt"] in seen:
            continue
        seen.add(problem["prompt"])
        out.append({"id": f"{task}-{split}-{len(out):05d}", **problem})
    return out


def base_completion(problem: dict) -> str:
    """The base style's completion: the answer itself."""
    return problem["answer"]


def teacher_completion(problem: dict) -> str:
    """The teacher style for ``add``: reversed digits of the sum, ``>``, the sum (``"861>168"``);
    chat tasks use :func:`deltalens.lab.word_tasks.teacher_completion`."""
    if problem["task"] in word_tasks.ALL_TASKS:
        return word_tasks.teacher_completion(problem)
    if problem["task"] != "add":
        return problem["answer"]
    return f"{problem['answer'][::-1]}>{problem['answer']}"


def extract_answer(task: str, completion: str) -> str | None:
    """The final answer in ``completion``: for ``add`` and ``max`` the last run of digits, for
    the others the stripped text; ``None`` when nothing is there. Chat tasks use
    :func:`deltalens.lab.word_tasks.extract_answer`."""
    if task in word_tasks.ALL_TASKS:
        return word_tasks.extract_answer(task, completion)
    text = completion.split("<eos>")[0].strip()
    if task in ("add", "max"):
        match = _LAST_NUMBER.search(text)
        return str(int(match.group(1))) if match else None
    return text or None


def is_correct(problem: dict, completion: str) -> bool:
    """Exact check of ``completion`` against the problem's answer (SPEC §7, exact match)."""
    return extract_answer(problem["task"], completion) == problem["answer"]
