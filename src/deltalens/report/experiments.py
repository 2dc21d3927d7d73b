"""The report page of the lab's experiments (``deltalens lab --experiment NAME``).

One section per experiment: its settings and machine, its gates and claims (the rows of
:mod:`deltalens.report.claims_text`, so the page, the terminal and the README say the same), and its
figures from ``curves.json``. A curve file holds ``{"figures": [{"title", "panels": [{"title",
"x_label", "y_label", "kind": "line" | "scatter", "series": [{"label", "x": [[per seed]],
"y": [[per seed]]}]}]}]}``: a line series whose seeds share their x values is drawn as the mean
over seeds with a min–max seed band; otherwise every seed is drawn on its own in the series' colour.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from deltalens.report.html import Section, figure, html, page, paragraph, table, verdict_badge
from deltalens.report.pairs import GROUP_COLORS
from deltalens.report.plotting import draw_both, finite_xy, new_figure, render


def _panel(ax, panel: dict) -> None:
    for i, series in enumerate(panel["series"]):
        colour = GROUP_COLORS[i % len(GROUP_COLORS)]
        xs, ys = series["x"], series["y"]
        shared = panel.get("kind", "line") == "line" and all(x == xs[0] for x in xs) and len(xs) > 1
        if shared:
            cols = list(zip(*ys))
            finite = [[v for v in c if v is not None and math.isfinite(v)] for c in cols]
            x, mean = finite_xy(xs[0], [sum(c) / len(c) if c else None for c in finite])
            lo = [min(c) for c in finite if c]
            hi = [max(c) for c in finite if c]
            ax.plot(x, mean, color=colour, label=series["label"], lw=1.5)
            if len(lo) == len(x):
                ax.fill_between(x, lo, hi, color=colour, alpha=0.2, lw=0)
            continue
        for s, (x, y) in enumerate(zip(xs, ys)):
            x, y = finite_xy(x, y)
            label = series["label"] if s == 0 else None
            if panel.get("kind") == "scatter":
                ax.scatter(x, y, color=colour, s=10, alpha=0.7, label=label)
            else:
                ax.plot(x, y, color=colour, lw=1, alpha=0.8, label=label)
    if panel.get("log_x"):
        ax.set_xscale("log")
    if panel.get("log_y"):
        ax.set_yscale("log")
    ax.set_title(panel["title"], fontsize=9)
    ax.set_xlabel(panel["x_label"])
    ax.set_ylabel(panel["y_label"])
    ax.legend(fontsize=7)


def _draw(spec: dict, provenance: str):
    n = len(spec["panels"])
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    fig, axes = new_figure(nrows, ncols, width=4.2 * ncols + 1, height=3.2 * nrows)
    for i, panel in enumerate(spec["panels"]):
        _panel(axes[i // ncols][i % ncols], panel)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    alt = spec["title"] + ": " + "; ".join(f"{p['title']} ({p['y_label']} against {p['x_label']}) for "
                                           + ", ".join(s["label"] for s in p["series"]) for p in spec["panels"])
    return render(fig, title=spec["title"], alt=alt, provenance=provenance)


def experiment_section(doc: dict, curves: dict) -> Section:
    """The section of one experiment's claims document and curves."""
    from deltalens.report.claims_text import GATE_HEADER, claim_rows, gate_rows

    name = doc["experiment"]
    m = doc.get("machine") or {}
    intro = html("{} seeds{}; {} on {} CPUs (load {} → {}); {} s. Settings: <code>{}</code>. Rules and how to read "
                 "them: docs/lab.md, 'Experiments'.", doc.get("seeds"), ", quick" if doc.get("quick") else "",
                 m.get("date"), m.get("cpus"), m.get("load_1min_start"), m.get("load_1min_end"), doc.get("seconds"),
                 json.dumps(doc.get("settings")))
    section = Section(f"experiment-{name}", f"Experiment: {name}", intro)
    rows = claim_rows(doc)
    section.add(table(["claim", "verdict", "effect [95% CI]", "other parts", "rule", "note"],
                      [[r[0], verdict_badge(c["verdict"]), r[2], r[3], c["rule"], r[6]]
                       for r, c in zip(rows, doc["claims"])], numeric_from=99,
                      caption="Claims (95% bootstrap intervals over seeds and items)."))
    for c in doc["claims"]:
        if c.get("explained"):
            section.add(paragraph(c["explained"].get("text", "")))
    gates = gate_rows(doc)
    if gates:
        section.add(table(GATE_HEADER, gates, numeric_from=99, caption="Training gates (each arm's own dev metric)."))
    tuning = doc.get("tuning") or {}
    if tuning:
        section.add(paragraph("Learning rates: " + ("; ".join(
            f"{k} {v['chosen']['learning_rate']:g}" + (" (tuning rule: " + ", ".join(
                f"{c['learning_rate']:g} → {c['dev_score']:.4g}" for c in v.get("candidates", [])) + ")"
                if v.get("candidates") else "") for k, v in tuning.items() if isinstance(v, dict)))))
    for spec in curves.get("figures", []):
        wide, narrow = draw_both(_draw, spec, f"deltalens lab --experiment {name} (curves.json)")
        section.add(figure(wide, narrow))
    return section


def write_experiment_report(out: str | Path, docs: list[dict], curves: list[dict]) -> Path:
    """``OUT/report.html``: one section per experiment (self-contained HTML, written atomically)."""
    import datetime as _dt

    from deltalens import __version__
    from deltalens.results import write_text

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    names = ", ".join(d["experiment"] for d in docs)
    meta = (f"deltalens lab experiments: {names}. Generated {stamp} by deltalens {__version__}. "
            "Self-contained: nothing is loaded from the network.")
    sections = [experiment_section(d, c) for d, c in zip(docs, curves, strict=True)]
    return write_text(Path(out) / "report.html", page(title=f"deltalens lab experiments: {names}", meta=meta,
                                                      sections=sections))
