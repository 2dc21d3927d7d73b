"""Problems and samples JSONL files (SPEC §7): reading, validation and grouping.

Problems: one object a line, ``{id, prompt, answer, task?}``.
Samples:  one object a line, ``{id, model, sample_index, completion, extracted, correct,
logprob, n_tokens, finish_reason}``.

Every check raises :class:`~deltalens.errors.DeltalensError` with one line naming the file,
the line or the problem id, and what was expected.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from deltalens.errors import DeltalensError
from deltalens.results import iter_jsonl

PROBLEM_FIELDS = ("id", "prompt", "answer")
SAMPLE_FIELDS = ("id", "model", "sample_index", "completion")


@dataclass
class Problem:
    id: str
    prompt: str
    answer: str | None
    task: str | None = None


@dataclass
class SampleSet:
    """All samples of one model, grouped by problem id (in file order)."""

    model: str
    by_id: dict[str, list[dict]] = field(default_factory=dict)
    source: str = "<memory>"

    def n_per_problem(self) -> dict[str, int]:
        return {pid: len(rows) for pid, rows in self.by_id.items()}


def _norm_id(value, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DeltalensError(f"{where}: field 'id' must be a string or integer, got {value!r}")
    return str(value)


def parse_problems(rows, *, source: str = "<problems>", need_answer: bool = True) -> list[Problem]:
    """Validate problem dicts (or :class:`Problem` objects); ids must be unique.

    ``need_answer=False`` allows prompts without a gold answer (sampling, divergence).
    """
    out: list[Problem] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows, 1):
        if isinstance(row, Problem):
            row = {"id": row.id, "prompt": row.prompt, "answer": row.answer, "task": row.task}
        where = f"{source}:{row.get('_line', i)}"
        for name in ("id", "prompt"):
            if name not in row:
                raise DeltalensError(f"{where}: missing field '{name}'")
        pid = _norm_id(row["id"], where)
        if not isinstance(row["prompt"], str):
            raise DeltalensError(f"{where}: field 'prompt' of problem {pid!r} must be a string")
        answer = row.get("answer")
        if need_answer and (answer is None or (isinstance(answer, str) and not answer.strip())):
            raise DeltalensError(f"{where}: problem {pid!r} has no answer (field 'answer' is required)")
        if pid in seen:
            raise DeltalensError(f"{where}: duplicated problem id {pid!r} (first at line {seen[pid]})")
        seen[pid] = row.get("_line", i)
        task = row.get("task")
        out.append(Problem(pid, row["prompt"], None if answer is None else str(answer),
                           None if task is None else str(task)))
    return out


def read_problems(path: str | os.PathLike, *, need_answer: bool = True) -> list[Problem]:
    """Read and validate a problems JSONL file."""
    rows = list(iter_jsonl(path))
    _attach_line_numbers(path, rows)
    if not rows:
        raise DeltalensError(f"{path}: no problems in file")
    return parse_problems(rows, source=str(path), need_answer=need_answer)


def _attach_line_numbers(path, rows: list[dict]) -> None:
    """``iter_jsonl`` skips blank lines; recover each row's real line number for messages."""
    nonblank = [i for i, line in enumerate(Path(path).read_text().splitlines(), 1) if line.strip()]
    for row, lineno in zip(rows, nonblank):
        row["_line"] = lineno


def as_problems(problems, *, need_answer: bool = True, limit: int | None = None) -> list[Problem]:
    """Accept a path, a list of dicts or a list of :class:`Problem`; return validated problems
    (``limit``: the first N of each task, :func:`deltalens.limits.first_per_task`)."""
    from deltalens.limits import first_per_task

    if isinstance(problems, (str, os.PathLike)):
        return first_per_task(read_problems(problems, need_answer=need_answer), limit)
    return first_per_task(parse_problems(list(problems), need_answer=need_answer), limit)


def parse_samples(rows, *, source: str = "<samples>", model: str | None = None) -> SampleSet:
    """Validate sample dicts of ONE model; group by id; (id, sample_index) must be unique."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    seen: dict[tuple[str, int], int] = {}
    name = model
    for i, row in enumerate(rows, 1):
        where = f"{source}:{row.get('_line', i)}"
        for f in SAMPLE_FIELDS:
            if f not in row:
                raise DeltalensError(f"{where}: missing field '{f}'")
        pid = _norm_id(row["id"], where)
        if name is None:
            name = str(row["model"])
        elif str(row["model"]) != name:
            raise DeltalensError(
                f"{where}: model name {row['model']!r} conflicts with {name!r} earlier in the file "
                "(one samples file holds one model)")
        idx = row["sample_index"]
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise DeltalensError(f"{where}: field 'sample_index' must be a non-negative integer, got {idx!r}")
        if (pid, idx) in seen:
            raise DeltalensError(f"{where}: duplicated sample (id {pid!r}, sample_index {idx}); first at line {seen[(pid, idx)]}")
        seen[(pid, idx)] = row.get("_line", i)
        clean = {k: v for k, v in row.items() if k != "_line"}
        clean["id"] = pid
        by_id[pid].append(clean)
    if name is None:
        raise DeltalensError(f"{source}: no samples in file")
    for rows_ in by_id.values():
        rows_.sort(key=lambda r: r["sample_index"])
    return SampleSet(model=name, by_id=dict(by_id), source=source)


def read_samples(path: str | os.PathLike) -> SampleSet:
    """Read and validate a samples JSONL file."""
    rows = list(iter_jsonl(path))
    _attach_line_numbers(path, rows)
    return parse_samples(rows, source=str(path))


def as_sample_set(samples) -> SampleSet:
    """Accept a path, a :class:`SampleSet` or a list of sample dicts."""
    if isinstance(samples, SampleSet):
        return samples
    if isinstance(samples, (str, os.PathLike)):
        return read_samples(samples)
    return parse_samples(list(samples))


def as_sample_sets(samples_list) -> list[SampleSet]:
    """Several models' samples; model names must be distinct."""
    sets = [as_sample_set(s) for s in samples_list]
    seen: dict[str, str] = {}
    for s in sets:
        if s.model in seen:
            raise DeltalensError(
                f"{s.source}: model name {s.model!r} conflicts with {seen[s.model]} (each samples file must name a different model)")
        seen[s.model] = s.source
    return sets


def correctness(sample_set: SampleSet) -> dict[str, list[bool]]:
    """Per problem id, the verified correctness of each sample (in sample_index order)."""
    out: dict[str, list[bool]] = {}
    for pid, rows in sample_set.by_id.items():
        flags = []
        for r in rows:
            c = r.get("correct")
            if not isinstance(c, bool):
                raise DeltalensError(
                    f"{sample_set.source}: sample (id {pid!r}, sample_index {r['sample_index']}) is not verified "
                    "(field 'correct' must be true/false; run `deltalens verify` first)")
            flags.append(c)
        out[pid] = flags
    return out
