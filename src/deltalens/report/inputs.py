"""Finding and reading the outputs a report is built from.

A RUN_DIR holds any mix of the files in :data:`INPUT_FILES`, either directly or one level down
(the lab nests one folder per arm). Every folder that holds at least one of them becomes one
:class:`Run`; runs are shown side by side. A file that exists but cannot be read is recorded
with its reason, so the page can say so instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltalens.errors import DeltalensError
from deltalens.results import read_json, read_jsonl

#: The files a report reads, in the order the page presents them.
INPUT_FILES = (
    "diff.json",
    "passk.json",
    "support.json",
    "divergence.json",
    "kernel.json",
    "curvature.json",
    "claims.json",
    "forgetting.json",
    "tracking.jsonl",
)

#: Files that describe a whole lab rather than one arm; a folder with only these is not an arm.
LAB_LEVEL_FILES = ("claims.json", "forgetting.json")

#: Fields a tracking line must carry (the lab's ``UpdateStatsCallback`` contract).
TRACKING_FIELDS = ("step", "tensor")


@dataclass
class Run:
    """The outputs found in one folder.

    ``data`` maps an input file name to its parsed content (a dict, or a list of dicts for
    ``tracking.jsonl``); ``unreadable`` maps a file name that exists but could not be parsed to
    the one-line reason.
    """

    label: str
    path: Path
    data: dict[str, Any] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        return self.data.get(name)

    @property
    def lab_only(self) -> bool:
        """True for a folder holding only lab-level files (claims.json): not an arm of its own."""
        return set(self.data) | set(self.unreadable) <= set(LAB_LEVEL_FILES)

    @property
    def missing(self) -> list[str]:
        return [n for n in INPUT_FILES if n not in self.data and n not in self.unreadable]


def _read_one(path: Path) -> Any:
    if path.suffix == ".jsonl":
        return read_jsonl(path, required=TRACKING_FIELDS)
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise DeltalensError(f"{path}: expected a JSON object at the top level, got {type(doc).__name__}")
    return doc


def _load_folder(folder: Path, label: str) -> Run | None:
    present = [n for n in INPUT_FILES if (folder / n).is_file()]
    if not present:
        return None
    run = Run(label=label, path=folder)
    for name in present:
        try:
            run.data[name] = _read_one(folder / name)
        except DeltalensError as exc:
            run.unreadable[name] = str(exc)
    for name, is_contract in CONTRACTS.items():
        if name in run.data and not is_contract(run.data[name]):
            del run.data[name]  # another file of the same name: not an input
    if not run.data and not run.unreadable:
        return None
    return run


def discover_runs(run_dirs: list[str | Path]) -> list[Run]:
    """Load every run under ``run_dirs`` (each folder itself and its direct subfolders).

    Raises :class:`DeltalensError` when a RUN_DIR does not exist or holds none of the inputs
    (or only unreadable ones) in itself or one level down.
    """
    if not run_dirs:
        raise DeltalensError("report: give at least one RUN_DIR")
    runs: list[Run] = []
    for raw in run_dirs:
        root = Path(raw)
        if not root.exists():
            raise DeltalensError(f"{root}: run directory not found")
        if not root.is_dir():
            raise DeltalensError(f"{root}: expected a run directory, got a file")
        name = root.resolve().name or str(root)
        found: list[Run] = []
        top = _load_folder(root, name)
        if top is not None:
            found.append(top)
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            run = _load_folder(sub, f"{name}/{sub.name}")
            if run is not None:
                found.append(run)
        if not found:
            raise DeltalensError(
                f"{root}: no deltalens outputs found in it or its subfolders "
                f"(looked for {', '.join(INPUT_FILES)})"
            )
        if not any(run.data for run in found):
            reasons = "; ".join(r for run in found for r in run.unreadable.values())
            raise DeltalensError(f"{root}: every deltalens output found is unreadable: {reasons}")
        seen = {r.path.resolve() for r in runs}
        runs.extend(r for r in found if r.path.resolve() not in seen)  # a folder given twice is read once
    _make_labels_unique(runs)
    return runs


def is_claims_doc(doc: Any) -> bool:
    """A lab's claims.json (a ``claims`` list), not the lab's stage marker of the same name."""
    return isinstance(doc, dict) and isinstance(doc.get("claims"), list)


def is_curvature_doc(doc: Any) -> bool:
    """``deltalens curvature``'s curvature.json (it states its ``loss``), not the lab's per-probe-group
    files of the same name (``OUT/analysis/<model>/curvature.json``: ``top``, ``group_size``,
    ``groups``), which the lab's curvature claims summarize."""
    return isinstance(doc, dict) and "loss" in doc


#: Inputs whose file name other files share: read only when the content is the input's contract.
CONTRACTS = {"claims.json": is_claims_doc, "curvature.json": is_curvature_doc}


def _make_labels_unique(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        count = seen.get(run.label, 0) + 1
        seen[run.label] = count
        if count > 1:
            run.label = f"{run.label} ({count})"


def as_float(value: Any) -> float:
    """A JSON number as float; ``None``, strings and other non-numbers become NaN."""
    from deltalens.weights.aggregate import number

    return number(value)
