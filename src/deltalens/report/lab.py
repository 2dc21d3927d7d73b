"""The lab's details: update statistics over training (tracking.jsonl) and the claims in full
(claims.json: the rule, per-arm values per seed, exclusions, gates). The verdicts themselves lead
the page (:mod:`deltalens.report.answer`)."""

from __future__ import annotations

import math
import statistics

from markupsafe import Markup

from deltalens.report.html import Section, html, figure_or_note, fmt, missing_notes, paragraph, table, verdict_badge
from deltalens.report.inputs import Run, as_float, is_claims_doc
from deltalens.report.plotting import describe_range, figure_legend, integer_ticks, new_figure, render

#: The per-step statistics plotted from tracking.jsonl, with their axis labels.
TRACKED = (("bf16_visible_fraction", "bf16-visible update fraction"),
           ("update_fro", "‖update‖_F"),
           ("angle_to_prev_deg", "top-k angle to previous step (°)"),
           ("angle_to_base_deg", "top-k angle to base (°)"))


def build_training(pairs: list) -> Section:
    section = Section(
        "training", "Training trajectory",
        "Per-step update statistics recorded during training by deltalens.tracking.UpdateStatsCallback: how much of "
        "each step survives a bf16 save, how large it is, and how far the top-k subspace has turned; per pair the "
        "median over its tracked matrices.")
    missing_notes(section, pairs, "tracking.jsonl", "training trajectories", "deltalens lab --out DIR")
    have = [p for p in pairs if p.get("tracking.jsonl")]
    if have:
        section.add(figure_or_note(_tracking_plot, have))
    return section


def _per_step(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """Median over tracked matrices of ``key`` per optimizer step (non-finite values left out)."""
    by_step: dict[float, list[float]] = {}
    for r in rows:
        step, v = as_float(r.get("step")), as_float(r.get(key))
        if math.isfinite(step) and math.isfinite(v):
            by_step.setdefault(step, []).append(v)
    steps = sorted(by_step)
    return steps, [statistics.median(by_step[s]) for s in steps]


def _tracking_plot(have: list):
    fig, axes = new_figure(2, 2, width=10, height=6.4)
    alt = []
    for idx, (key, label) in enumerate(TRACKED):
        ax = axes[idx // 2][idx % 2]
        for p in have:
            xs, ys = _per_step(p.get("tracking.jsonl"), key)
            ax.plot(xs, ys, linewidth=1, color=p.color, linestyle=p.dash, label=p.label)
            alt.append(f"{p.label} {label} {describe_range(ys)}")
        ax.set(title=label, xlabel="optimizer step", ylabel=label)
        ax.grid(alpha=0.3)
    integer_ticks(*[ax for row in axes for ax in row])
    figure_legend(fig, *axes[0][0].get_legend_handles_labels(), title="pair")
    counts = []
    for p in have:
        rows = p.get("tracking.jsonl")
        tensors = {str(r.get("tensor")) for r in rows}
        ks = sorted({str(r.get("k")) for r in rows if r.get("k") is not None})
        counts.append(f"{p.label}: {len(rows)} lines, {len(tensors)} matrices, k = {', '.join(ks) or '?'}")
    return render(fig, title="Update statistics over training",
                  alt="Four line charts over optimizer steps, one line per pair (the median over its tracked matrices): "
                      + "; ".join(alt[:24]) + ("; …" if len(alt) > 24 else "") + ".",
                  provenance=f"tracking.jsonl of {len(have)} pair(s); median over tracked matrices per step; "
                             + "; ".join(counts) + ".")


def build_claims(runs: list[Run]) -> Section:
    from deltalens.report.claims_text import GATE_HEADER, effect_text, excluded_text, gate_rows, published_text

    section = Section(
        "claims", "Claims in full",
        "Each claim's rule, the values per arm (mean over seeds, then every seed) of the claim's first metric, what "
        "was excluded and why, and the training gates.")
    with_claims = [r for r in runs if is_claims_doc(r.get("claims.json"))]
    missing_notes(section, runs, "claims.json", "lab claims", "deltalens lab --out DIR")
    for run in with_claims:
        doc = run.get("claims.json")
        arms = [str(a) for a in doc.get("arms") or []]
        claims = [c for c in doc.get("claims") or [] if isinstance(c, dict)]
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
                          caption=f"claims.json of {run.label}: per arm the mean over seeds, then every seed's value "
                                  "(the claim's first metric)."))
        gates = doc.get("gates")
        if isinstance(gates, dict) and gates:
            try:
                section.add(table(GATE_HEADER, gate_rows(doc), numeric_from=4,
                                  caption=f"Training gates of {run.label}: each arm's own dev metric before and "
                                          "after training."))
            except (KeyError, TypeError, IndexError):
                section.add(paragraph("gates: unreadable entries in claims.json"))
    return section


def _arm_cell(values: object) -> Markup:
    if not isinstance(values, list):
        values = [values] if values is not None else []
    finite = [as_float(v) for v in values if math.isfinite(as_float(v))]
    if not finite:
        return Markup("—")
    mean = statistics.fmean(finite)
    if len(values) == 1:
        return html("{}", fmt(mean))
    return html("{}<br><small>({})</small>", fmt(mean), ", ".join(fmt(as_float(v)) for v in values))
