"""Assemble the report page from the runs found and write it atomically."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from deltalens.report import behaviour, kernel, lab, weights
from deltalens.report.html import Section, esc, page, table
from deltalens.report.inputs import INPUT_FILES, Run, discover_runs
from deltalens.results import check_output_file, write_text

#: Section ids in page order; every page has all of them, saying what is absent where needed.
SECTION_IDS = ("runs", "weights", "behaviour", "kernel", "training", "claims")


def render_html(runs: list[Run], *, title: str = "deltalens report") -> str:
    """The whole page for ``runs`` as one self-contained HTML string."""
    from deltalens import __version__

    sections = [_runs_section(runs), weights.build(runs), behaviour.build(runs), kernel.build(runs),
                lab.build_training(runs), lab.build_claims(runs)]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = (f"{len(runs)} run(s): {esc(', '.join(r.label for r in runs))}. Generated {stamp} by deltalens "
            f"{esc(__version__)}. Self-contained: nothing is loaded from the network.")
    return page(title=title, meta=meta, sections=sections)


def _runs_section(runs: list[Run]) -> Section:
    section = Section("runs", "Runs", "Each folder holding deltalens outputs is one run; runs are shown side by side "
                                      "in every section below.")
    rows = []
    for run in runs:
        base, tuned = run.base_and_tuned
        rows.append([run.label, str(run.path), base or "—", tuned or "—", ", ".join(sorted(run.data, key=INPUT_FILES.index)),
                     "(lab-level folder)" if run.lab_only else (", ".join(run.missing) or "—"),
                     "; ".join(f"{k}: {v}" for k, v in run.unreadable.items()) or "—"])
    section.add(table(["run", "folder", "base", "tuned", "found", "absent", "unreadable"], rows, numeric_from=99,
                      caption="Inputs found per run."))
    return section


def build_report(run_dirs: list[str | Path] | str | Path, out: str | Path, *, title: str | None = None) -> Path:
    """Build one self-contained HTML report from ``run_dirs`` and write it atomically to ``out``.

    Each RUN_DIR and its direct subfolders are searched for diff.json, passk.json, support.json,
    divergence.json, kernel.json, claims.json and tracking.jsonl; parts that are absent are named
    on the page. Raises :class:`~deltalens.errors.DeltalensError` when a RUN_DIR holds none of them.
    Returns the path written.
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    check_output_file(out, what="report file")
    return write_report(discover_runs(list(run_dirs)), out, title=title)


def write_report(runs: list[Run], out: str | Path, *, title: str | None = None) -> Path:
    """Render ``runs`` (from :func:`discover_runs`) and write the page atomically to ``out``."""
    default = "deltalens report: " + ", ".join(dict.fromkeys(r.label.split("/")[0] for r in runs))
    check_output_file(out, what="report file")
    return write_text(out, render_html(runs, title=title or default))  # the umask's mode, like every output


def write_run_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """The report other commands write after finishing (``deltalens diff --report``, ``deltalens lab``).

    Writes ``RUN_DIR/report.html`` unless ``out`` is given and returns its path; the caller prints it.
    """
    run_dir = Path(run_dir)
    return build_report([run_dir], out if out is not None else run_dir / "report.html")
