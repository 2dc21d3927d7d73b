"""Assemble the report page from the runs found and write it atomically.

The page leads with the answer (:mod:`deltalens.report.answer`: the lab's claims and the papers'
figures), then the pairs compared (:mod:`deltalens.report.pairs`: one column per (base, tuned)
pair), then one section per level (weights, behaviour, kernel, curvature, training) and the claims in full.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from markupsafe import Markup

import deltalens.report.answer as answer
import deltalens.report.behaviour as behaviour
import deltalens.report.curvature as curvature
import deltalens.report.kernel as kernel
import deltalens.report.lab as lab
import deltalens.report.weights as weights
from deltalens.report.html import Section, html, table
from deltalens.report.inputs import INPUT_FILES, Run, discover_runs, is_claims_doc
from deltalens.report.pairs import PRODUCERS, Pair, assign_groups, group_pairs
from deltalens.results import check_output_file, write_text

#: Section ids in page order; every page has all of them, saying what is absent where needed.
SECTION_IDS = ("answer", "pairs", "weights", "behaviour", "kernel", "curvature", "training", "claims")


def render_html(runs: list[Run], *, title: str = "deltalens report") -> str:
    """The whole page for ``runs`` as one self-contained HTML string."""
    from deltalens import __version__
    from deltalens.report.html import page

    pairs = group_pairs(runs)
    arms = [str(a) for r in runs if is_claims_doc(r.get("claims.json")) for a in r.get("claims.json").get("arms") or []]
    groups = assign_groups(pairs, list(dict.fromkeys(arms)))
    pairs.sort(key=lambda p: groups.index(p.group))  # arms in the lab's order, seeds in order within each
    sections = [answer.build(runs, pairs, groups), _pairs_section(runs, pairs), weights.build(pairs),
                behaviour.build(pairs), kernel.build(pairs), curvature.build(pairs), lab.build_training(pairs),
                lab.build_claims(runs)]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = (f"{len(pairs)} pair(s) from {len(runs)} folder(s). Generated {stamp} by deltalens {__version__}. "
            "Self-contained: nothing is loaded from the network.")
    return page(title=title, meta=meta, sections=sections)


def _pairs_section(runs: list[Run], pairs: list[Pair]) -> Section:
    section = Section("pairs", "Pairs compared",
                      "Each column of the tables below is one (base, tuned) pair. Outputs in different folders that "
                      "name the same two models share one pair: the same weights where the files record both models' "
                      "content fingerprints (SHA-256 of the weight files, shown below a model's name), else the same "
                      "paths or names; what a pair lacks is said here once.")
    rows = []
    models = [m for p in pairs for m in p.base_and_tuned if m]
    prefix = _common_dir(models)
    for p in pairs:
        base, tuned = p.base_and_tuned
        found = [n for n in INPUT_FILES if n in p.data]
        found = ["all"] if not p.missing and not p.unreadable else found
        absent = [html("<code>{}</code> ({})", n, PRODUCERS.get(n, "")) for n in p.missing]
        unreadable = [html("<code>{}</code>: {}", n, why) for n, why in p.unreadable.items()]
        rows.append([p.label, p.group, _with_fingerprint(_short_model(base, prefix), p.fingerprints(1)),
                     _with_fingerprint(_short_model(tuned, prefix), p.fingerprints(2)),
                     ", ".join(r.label for r in p.runs), ", ".join(found) or "—",
                     Markup("<br>").join(absent) if absent else "—",
                     Markup("<br>").join(unreadable) if unreadable else "—"])
    section.add(table(["pair", "group", "base", "tuned", "folder(s)", "found", "absent (made by)", "unreadable"],
                      rows, numeric_from=99,
                      caption="Base and tuned as the files record them" + (f", below {prefix}/" if prefix else "") + "."))
    labs = [r for r in runs if r.lab_only]
    if labs:
        section.add(html("<p>Lab-level folders (not pairs): {}.</p>",
                         "; ".join(f"{r.label} ({', '.join(sorted(r.data))})" for r in labs)))
    return section


def _common_dir(paths: list[str]) -> str:
    """The folder every absolute path in ``paths`` lies under ('' when they share none or are names)."""
    import os

    absolute = [p for p in paths if os.path.isabs(p)]
    if len(absolute) < 2 or len(absolute) != len(paths):
        return ""
    common = os.path.commonpath(absolute)
    return "" if common == os.sep else common


def _with_fingerprint(name: str, fingerprints: set[str]) -> str | Markup:
    """A model's cell: its name, and below it the start of each content fingerprint recorded."""
    if not fingerprints:
        return name
    return html("{}<br><small>sha256 {}</small>", name, ", ".join(f[:12] for f in sorted(fingerprints)))


def _short_model(text: str | None, prefix: str) -> str:
    """A model as recorded, without the folder all the pairs' models share."""
    if not text:
        return "—"
    return text[len(prefix) + 1:] if prefix and text.startswith(prefix + "/") else text


def build_report(run_dirs: list[str | Path] | str | Path, out: str | Path, *, title: str | None = None) -> Path:
    """Build one self-contained HTML report from ``run_dirs`` and write it atomically to ``out``.

    Each RUN_DIR and its direct subfolders are searched for the files in :data:`INPUT_FILES`;
    parts that are absent are named on the page. Raises :class:`~deltalens.errors.DeltalensError`
    when a RUN_DIR holds none of them. Returns the path written.
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
