"""One column per (base, tuned) pair: the folders a report reads, grouped by the models they compare.

A producer (``deltalens diff``, ``passk``, ``support``, ``divergence``, ``kernel``, the lab's
analyses) writes into its own OUT, so one pair's weight, behaviour and kernel outputs may sit in
three folders. Each folder states in its files which models it compares: ``diff.json``
``base``/``tuned`` (paths as given), ``kernel.json`` ``base.source``/``tuned.source``,
``support.json``/``divergence.json`` ``base``/``tuned`` and ``passk.json``'s ``crossover``
(model names, by default the checkpoint folder's name), and, from files written since issue #20,
each model's content fingerprint (``fingerprints``: the SHA-256 of its weight files,
:mod:`deltalens.fingerprint`). Folders are merged into one :class:`Pair` when both models match
and they hold no file in common:

- two models whose records both carry a fingerprint match when the fingerprints are equal, and
  only then: two copies of one checkpoint in different folders match, two checkpoints of other
  weights under one folder name do not; and two folders whose files give a model's fingerprint
  and share none for it are never merged, whatever their other files say;
- otherwise two paths match when they resolve to the same existing folder or file
  (``os.path.samefile``; otherwise when their absolute forms are equal);
- a bare name matches a path whose last component is that name, or the same name.

Folders that hold only lab-level files (``claims.json``, ``forgetting.json``) are not pairs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltalens.report.inputs import INPUT_FILES, LAB_LEVEL_FILES, Run

#: One colour per group of pairs (an arm of the lab, or a pair of its own), in order.
GROUP_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
                "#7f7f7f", "#bcbd22")
#: Line styles of the pairs inside one group (seeds of an arm).
GROUP_DASHES = ("-", "--", ":", "-.")
#: What produces each per-pair input (named once per pair in the Pairs table when absent).
PRODUCERS = {
    "diff.json": "deltalens diff BASE TUNED --out DIR",
    "passk.json": "deltalens passk S_BASE.jsonl S_TUNED.jsonl --out DIR",
    "support.json": "deltalens support S_BASE.jsonl S_TUNED.jsonl --out DIR",
    "divergence.json": "deltalens divergence BASE TUNED --problems P.jsonl --out DIR",
    "kernel.json": "deltalens kernel BASE TUNED --probes PROBES.jsonl --out DIR",
    "tracking.jsonl": "deltalens.tracking.UpdateStatsCallback during training (deltalens lab)",
}
#: Per-pair inputs that are optional (slower, deeper analyses): shown when present, not listed as missing.
OPTIONAL_FILES = ("curvature.json",)
PAIR_FILES = tuple(n for n in INPUT_FILES if n not in LAB_LEVEL_FILES and n not in OPTIONAL_FILES)


@dataclass(frozen=True)
class ModelRef:
    """A model as a file names it: the text recorded, the resolved path when it is one, and the
    content fingerprint's SHA-256 when the file records one."""

    text: str
    path: str | None
    sha256: str | None = None

    @property
    def name(self) -> str:
        return Path(self.path).name if self.path else self.text

    def matches(self, other: ModelRef) -> bool:
        if self.sha256 and other.sha256:
            return self.sha256 == other.sha256
        if self.path and other.path:
            if self.path == other.path:
                return True
            try:
                return os.path.samefile(self.path, other.path)
            except OSError:
                return False
        return self.name == other.name


def model_ref(value: Any, fingerprint: Any = None) -> ModelRef | None:
    if not isinstance(value, str) or not value:
        return None
    sha = fingerprint.get("sha256") if isinstance(fingerprint, dict) else None
    sha = sha if isinstance(sha, str) and sha else None
    looks_like_path = "/" in value or os.sep in value or Path(value).exists()
    if looks_like_path and not value.startswith(("hf://", "http://", "https://")):
        p = Path(value)
        return ModelRef(value, str(p.resolve()) if p.exists() else os.path.abspath(value), sha)
    return ModelRef(value, None, sha)


def stated_models(run: Run) -> list[tuple[str, ModelRef, ModelRef]]:
    """(file, base, tuned) for every file of ``run`` that names the models it compares."""
    out = []

    def add(name, base, tuned, holder):
        prints = holder.get("fingerprints") if isinstance(holder.get("fingerprints"), dict) else {}
        b, t = model_ref(base, prints.get("base")), model_ref(tuned, prints.get("tuned"))
        if b and t:
            out.append((name, b, t))

    for name in ("diff.json", "support.json", "divergence.json"):
        doc = run.data.get(name)
        if isinstance(doc, dict):
            add(name, doc.get("base"), doc.get("tuned"), doc)
    curvature = run.data.get("curvature.json")
    if isinstance(curvature, dict) and isinstance(curvature.get("models"), dict):
        add("curvature.json", curvature["models"].get("base"), curvature["models"].get("tuned"), curvature)
    kernel = run.data.get("kernel.json")
    if isinstance(kernel, dict):
        side = [kernel.get(s) if isinstance(kernel.get(s), dict) else {} for s in ("base", "tuned")]
        add("kernel.json", side[0].get("source"), side[1].get("source"), kernel)
    cross = (run.data.get("passk.json") or {}).get("crossover")
    if isinstance(cross, dict):
        add("passk.json", cross.get("base"), cross.get("tuned"), cross)
    return out


@dataclass
class Pair:
    """The outputs of one (base, tuned) pair, from one or more folders; reads like a :class:`Run`."""

    label: str
    runs: list[Run]
    models: list[tuple[str, ModelRef, ModelRef]] = field(default_factory=list)
    group: str = ""
    color: str = GROUP_COLORS[0]
    dash: str = "-"

    @property
    def data(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for run in self.runs:
            for name, doc in run.data.items():
                merged.setdefault(name, doc)
        return merged

    @property
    def unreadable(self) -> dict[str, str]:
        return {n: r for run in self.runs for n, r in run.unreadable.items()}

    def get(self, name: str) -> Any:
        for run in self.runs:
            if name in run.data:
                return run.data[name]
        return None

    def folder_of(self, name: str) -> str:
        return next((r.label for r in self.runs if name in r.data or name in r.unreadable), "—")

    @property
    def missing(self) -> list[str]:
        have = set(self.data) | set(self.unreadable)
        return [n for n in PAIR_FILES if n not in have]

    @property
    def base_and_tuned(self) -> tuple[str | None, str | None]:
        """The models compared, as the first file that states them records them."""
        if not self.models:
            return None, None
        _, b, t = self.models[0]
        return b.text, t.text

    def fingerprints(self, role: int) -> set[str]:
        """The SHA-256 fingerprints the pair's files record for the base (``role`` 1) or tuned (2)."""
        return {m[role].sha256 for m in self.models if m[role].sha256}

    def same_models(self, other: Pair) -> bool:
        for role in (1, 2):
            mine, theirs = self.fingerprints(role), other.fingerprints(role)
            if mine and theirs and not mine & theirs:
                return False  # the weights differ, whatever names or paths say
        return any(b.matches(ob) and t.matches(ot) for _, b, t in self.models for _, ob, ot in other.models)


def group_pairs(runs: list[Run]) -> list[Pair]:
    """The pairs among ``runs`` (lab-level folders left out), in the order first seen; folders
    whose files name the same two models and hold no file in common share one pair."""
    pairs: list[Pair] = []
    for run in runs:
        if run.lab_only:
            continue
        new = Pair(label=run.label, runs=[run], models=stated_models(run))
        files = set(run.data) | set(run.unreadable)
        for pair in pairs:
            if new.models and pair.same_models(new) and not files & (set(pair.data) | set(pair.unreadable)):
                pair.runs.append(run)
                pair.models.extend(new.models)
                pair.label = f"{pair.label} + {run.label}"
                break
        else:
            pairs.append(new)
    _shorten_labels(pairs)
    return pairs


def _shorten_labels(pairs: list[Pair]) -> None:
    """Drop the folder prefix every pair shares (``lab/analysis/sft-seed0`` → ``sft-seed0``)."""
    if len(pairs) < 2 or any(len(p.runs) > 1 for p in pairs):
        return
    parts = [p.label.split("/") for p in pairs]
    common = 0
    while all(len(x) > common + 1 for x in parts) and len({x[common] for x in parts}) == 1:
        common += 1
    if common:
        for p, x in zip(pairs, parts):
            p.label = "/".join(x[common:])


def assign_groups(pairs: list[Pair], arms: list[str]) -> list[str]:
    """Group pairs by lab arm (a pair labelled ``<arm>-seed<s>``, the lab's analysis folders),
    else each pair is its own group; give each group a colour and each pair in it a dash.
    Returns the group names in order."""
    groups: list[str] = []
    for pair in pairs:
        name = pair.label.rsplit("/", 1)[-1]
        arm = next((a for a in sorted(arms, key=len, reverse=True) if name.startswith(f"{a}-seed")), None)
        pair.group = arm or pair.label
        if pair.group not in groups:
            groups.append(pair.group)
    ordered = [a for a in arms if a in groups] + [g for g in groups if g not in arms]
    counts: dict[str, int] = {}
    for pair in pairs:
        pair.color = GROUP_COLORS[ordered.index(pair.group) % len(GROUP_COLORS)]
        pair.dash = GROUP_DASHES[counts.get(pair.group, 0) % len(GROUP_DASHES)]
        counts[pair.group] = counts.get(pair.group, 0) + 1
    return ordered


def group_color(pairs: list[Pair], group: str) -> str:
    return next((p.color for p in pairs if p.group == group), GROUP_COLORS[0])
