"""The lab's sections: update statistics over training (tracking.jsonl) and the claims table (claims.json)."""

from __future__ import annotations

import math
import statistics

from deltalens.report.html import Raw, Section, esc, figure_or_note, fmt, missing_notes, paragraph, table, verdict_badge
from deltalens.report.inputs import Run, as_float
from deltalens.report.plotting import describe_range, figure_legend, finite_xy, integer_ticks, new_figure, render

#: The per-step statistics plotted from tracking.jsonl, with their axis labels.
TRACKED = (("bf16_visible_fraction", "bf16-visible update fraction"),
           ("update_fro", "‖update‖_F"),
           ("angle_to_prev_deg", "top-k angle to previous step (°)"),
           ("angle_to_base_deg", "top-k angle to base (°)"))
#: Tracked matrices drawn per run (the rest are named in the caption).
MAX_TRACKED_TENSORS = 8


def build_training(runs: list[Run]) -> Section:
    section = Section(
        "training", "Training trajectory",
        "Per-step update statistics recorded during training by deltalens.tracking.UpdateStatsCallback: how much of "
        "each step survives a bf16 save, how large it is, and how far the top-k subspace has turned.")
    missing_notes(section, runs, "tracking.jsonl", "training trajectories",
                  "deltalens lab --out DIR")
    for i, run in enumerate(runs):
        if run.get("tracking.jsonl"):
            section.add(figure_or_note(_tracking_plot, [(i, run)]))
    return section


def _tracking_plot(have):
    (_, run), = have
    rows = run.get("tracking.jsonl")
    tensors: list[str] = []
    for r in rows:
        if str(r.get("tensor")) not in tensors:
            tensors.append(str(r.get("tensor")))
    shown = tensors[:MAX_TRACKED_TENSORS]
    fig, axes = new_figure(2, 2, width=10, height=6.4)
    alt = []
    ks = sorted({str(r.get("k")) for r in rows if r.get("k") is not None})
    for idx, (key, label) in enumerate(TRACKED):
        ax = axes[idx // 2][idx % 2]
        for t in shown:
            pts = sorted((as_float(r.get("step")), as_float(r.get(key))) for r in rows if str(r.get("tensor")) == t)
            xs, ys = finite_xy([p[0] for p in pts], [p[1] for p in pts])
            ax.plot(xs, ys, marker=".", linewidth=1, label=t)
        ax.set(title=label, xlabel="optimizer step", ylabel=label)
        ax.grid(alpha=0.3)
        values = [as_float(r.get(key)) for r in rows]
        alt.append(f"{label} {describe_range(values)}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    integer_ticks(*[ax for row in axes for ax in row])
    figure_legend(fig, handles, labels, title="tracked matrix")
    steps = [as_float(r.get("step")) for r in rows]
    more = f"; {len(tensors) - len(shown)} more tracked matrices not drawn" if len(tensors) > len(shown) else ""
    return render(fig, title=f"Update statistics over training: {run.label}",
                  alt=f"Four line charts over optimizer steps, one line per tracked matrix ({', '.join(shown)}): "
                      + "; ".join(alt) + ".",
                  provenance=f"tracking.jsonl of {run.label}; {len(rows)} lines, steps {describe_range(steps)}, "
                             f"{len(tensors)} tracked matrices, k = {', '.join(ks) or '?'}{more}.")


def build_claims(runs: list[Run]) -> Section:
    from deltalens.lab.tables import GATE_HEADER, effect_text, excluded_text, gate_rows, published_text

    section = Section(
        "claims", "Claims",
        "The lab's verdict on each claim of the seed, decided by the rule written next to it: holds when the 95% "
        "interval of the claimed effect (bootstrap over training seeds and items) excludes 0 in the claimed "
        "direction, contradicted when it excludes 0 the other way, inconclusive otherwise or when an arm the claim "
        "needs failed its training gate.")
    with_claims = [r for r in runs if "claims.json" in r.data]
    lacking_everywhere = not with_claims
    if lacking_everywhere or any(name == "claims.json" for r in runs for name in r.unreadable):
        missing_notes(section, [r for r in runs if "claims.json" not in r.data], "claims.json", "lab claims",
                      "deltalens lab --out DIR")
    for run in with_claims:
        doc = run.get("claims.json")
        arms = [str(a) for a in doc.get("arms") or []]
        claims = [c for c in doc.get("claims") or [] if isinstance(c, dict)]
        names = ("holds", "contradicted", "does not hold", "inconclusive")
        counts = {v: sum(1 for c in claims if c.get("verdict") == v) for v in names}
        against = counts["contradicted"] + counts["does not hold"]
        section.add(paragraph(
            f"<strong>{esc(run.label)}</strong>: arms {esc(', '.join(arms) or '—')}; {esc(doc.get('seeds', '?'))} seed(s); "
            f"{'quick' if doc.get('quick') else 'full'} run; {counts['holds']} hold, {against} contradicted, "
            f"{counts['inconclusive']} inconclusive."))
        gates = doc.get("gates")
        if isinstance(gates, dict) and gates:
            try:
                section.add(table(GATE_HEADER, gate_rows(doc), numeric_from=4,
                                  caption=f"Training gates of {esc(run.label)}: each arm's own dev metric before and "
                                          "after training."))
            except (KeyError, TypeError, IndexError):
                section.add(paragraph("gates: unreadable entries in claims.json"))
        rows = []
        new_format = any(isinstance(c.get("effect"), dict) for c in claims)
        for c in claims:
            numbers = c.get("numbers") if isinstance(c.get("numbers"), dict) else {}
            if numbers and all(isinstance(v, dict) for v in numbers.values()):
                numbers = next(iter(numbers.values()))  # per metric: show the first metric's arm values
            row = [str(c.get("id", "—")), str(c.get("claim", "—")), verdict_badge(c.get("verdict", "—")),
                   str(c.get("rule", "—")), *(_arm_cell(numbers.get(a)) for a in arms)]
            if new_format:
                effect = c.get("effect") if isinstance(c.get("effect"), dict) else {}
                row += [effect_text(effect) if effect else "—", published_text(c.get("published")),
                        excluded_text(c.get("excluded")), str(c.get("note") or "—")]
            rows.append(row)
        extra = ["effect [95% CI]", "published (SPEC §8)", "excluded", "note"] if new_format else []
        section.add(table(["id", "claim", "verdict", "rule", *arms, *extra], rows, numeric_from=4,
                          caption=f"claims.json of {esc(run.label)}: per arm the mean over seeds, then every seed's value "
                                  "(the claim's first metric)."))
    return section


def _arm_cell(values: object) -> Raw:
    if not isinstance(values, list):
        values = [values] if values is not None else []
    finite = [as_float(v) for v in values if math.isfinite(as_float(v))]
    if not finite:
        return Raw("—")
    mean = statistics.fmean(finite)
    if len(values) == 1:
        return Raw(esc(fmt(mean)))
    seeds = ", ".join(fmt(as_float(v)) for v in values)
    return Raw(f"{esc(fmt(mean))}<br><small>({esc(seeds)})</small>")
