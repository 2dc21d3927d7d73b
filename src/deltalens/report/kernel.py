"""The kernel-level section: eNTK eigen-spectra, angles by rank, rescale share, traits, trajectory."""

from __future__ import annotations

import math
from pathlib import Path

from deltalens.report.html import Section, absent, figure_or_note, fmt, heading, html, missing_notes, table
from deltalens.report.inputs import Run, as_float
from deltalens.report.plotting import (describe_range, figure_legend, finish_log_panel, finite_xy, integer_ticks,
                                        new_figure, panels, render)


def build(runs: list) -> Section:
    """The section over the pairs ``runs`` (:class:`~deltalens.report.pairs.Pair`, one column each)."""
    section = Section(
        "kernel", "Kernel level",
        "The function-space view (SPEC §6): the empirical NTK K = JJᵀ on probe examples before and after. Same "
        "eigenvectors with new eigenvalues is rescaling (propensity); turning eigenvectors is rotation (lability).")
    missing_notes(section, runs, "kernel.json", "kernel results", "deltalens kernel BASE TUNED --probes PROBES.jsonl --out DIR")
    have = [(i, r) for i, r in enumerate(runs) if "kernel.json" in r.data]
    if not have:
        return section
    section.add(_summary_table(have))
    section.add(heading("Eigen-spectra before and after"))
    section.add(figure_or_note(_spectra_plot if len(have) <= 3 else _spectra_one_panel, have))
    section.add(heading("Angles and eigenvalue changes by rank"))
    section.add(figure_or_note(_by_rank_plot, have))
    traits = [(i, r) for i, r in have if isinstance(r.get("kernel.json").get("traits"), dict)]
    if traits:
        section.add(heading("Trait kernel: predicted against measured trait change"))
        section.add(figure_or_note(_traits_plot, traits))
        section.add(_traits_table(traits))
    trajectory = [(i, r) for i, r in have if _trajectory(r)]
    section.add(heading("Kernel trajectory over training"))
    if trajectory:
        section.add(figure_or_note(_trajectory_plot, trajectory))
    else:
        section.add(absent(html("no kernel.json carries a <code>trajectory</code> "
                                "(<code>deltalens kernel --trajectory BASE CKPT_1 CKPT_2 ...</code>).")))
    return section


def _comparison(doc: dict) -> dict:
    comp = doc.get("comparison")
    return comp if isinstance(comp, dict) else {}


def _trait_doc(doc: dict) -> dict:
    traits = doc.get("traits")
    return traits if isinstance(traits, dict) else {}


def _trait_comparison(doc: dict) -> dict:
    """The trait kernel's comparison block: nested under 'comparison', or flat beside the trait list."""
    t = _trait_doc(doc)
    if "comparison" in t:  # None when the suite has a single trait: nothing to compare
        return _comparison(t)
    return {k: v for k, v in t.items() if k != "traits"}


def _trajectory(run: Run) -> list[dict]:
    traj = run.get("kernel.json").get("trajectory")
    return [t for t in traj if isinstance(t, dict)] if isinstance(traj, list) else []


def _comparison_cells(comp: dict) -> list[str]:
    share, base = as_float(comp.get("rescale_share")), as_float(comp.get("rescale_baseline"))
    angles = [as_float(a) for a in comp.get("angles_deg") or []]
    share_text = "undefined" if comp.get("rescale_undefined_reason") and not math.isfinite(share) else fmt(share)
    return [fmt(comp.get("top_r")), fmt(comp.get("alignment")), share_text, fmt(base),
            fmt(share / base) if base > 0 and math.isfinite(share) else "—",
            fmt(max((a for a in angles if math.isfinite(a)), default=math.nan)),
            fmt(comp.get("gap")), fmt(comp.get("wedin_bound")), str(comp.get("gap_limited", "—"))]


COMPARISON_ROWS = ("top r", "alignment", "rescale share", "baseline 2/(n+1)", "share ÷ baseline", "max angle (°)",
                   "gap", "Wedin bound", "gap-limited")


def _summary_table(have) -> str:
    docs = [run.get("kernel.json") for _, run in have]
    setup = [("mode", [str(d.get("mode", "—")) for d in docs]),
             ("sketch dim", [fmt(d.get("dim")) if d.get("mode") != "exact" else "exact" for d in docs]),
             ("seed", [fmt(d.get("seed")) for d in docs]), ("probes", [fmt(d.get("n_probes")) for d in docs]),
             ("output", [str(d.get("output", "—")) for d in docs]),
             ("est. error", [fmt(d.get("error_estimate")) for d in docs])]
    rows = [[label, *values] for label, values in setup]
    for label, part in (("eNTK", _comparison), ("trait kernel", _trait_comparison)):
        if label == "trait kernel" and not any(_trait_doc(d) for d in docs):
            continue
        cells = [_comparison_cells(part(d)) if (label == "eNTK" or _trait_doc(d)) else ["—"] * len(COMPARISON_ROWS)
                 for d in docs]
        rows += [[f"{label}: {name}", *(c[j] for c in cells)] for j, name in enumerate(COMPARISON_ROWS)]
    notes = [f"{run.label}: rescale share undefined: {c['rescale_undefined_reason']}"
             for _, run in have for c in (_comparison(run.get("kernel.json")), _trait_comparison(run.get("kernel.json")))
             if c.get("rescale_undefined_reason") and c.get("rescale_share") is None]
    return table(["quantity", *(run.label for _, run in have)], rows,
                 caption="Kernel comparison (SPEC §6), one column per pair: alignment ⟨K0,K1⟩/(‖K0‖‖K1‖); rescale share "
                         "‖diag E‖²/‖E‖², E = U0ᵀ(K1 − K0)U0; angles between top-r eigenspaces; est. error of the sketch "
                         "against exact mode." + "".join(f" {n}." for n in notes))


def _setup_text(have) -> str:
    parts = []
    for _, r in have:
        d = r.get("kernel.json")
        dim = f", dim {d.get('dim')}" if d.get("mode") != "exact" else ""
        seed = f", seed {d['seed']}" if d.get("seed") is not None else ""
        extra = "".join(f", {label} {d[key]}" for key, label in (("dtype", "dtype"), ("gradient_method", "gradients:"))
                        if d.get(key))
        parts.append(f"{r.label}: {d.get('mode', '?')} mode{dim}, {d.get('n_probes', '?')} probes, output "
                     f"{d.get('output', '?')}{seed}, estimated error {fmt(d.get('error_estimate'))}{extra}")
    return "; ".join(parts)


def _spectra_plot(have):
    fig, cells = panels(len(have))
    alt = []
    for ax, (i, run) in zip(cells, have):
        d = run.get("kernel.json")
        for side, color, style in (("base", "#555555", "--"), ("tuned", run.color, "-")):
            ev = [as_float(v) for v in ((d.get(side) or {}).get("eigenvalues") or [])]
            xs, ys = finite_xy(range(1, len(ev) + 1), ev)
            pos = [(x, y) for x, y in zip(xs, ys) if y > 0]
            ax.plot([p[0] for p in pos], [p[1] for p in pos], linestyle=style, marker=".", color=color, label=side)
            alt.append(f"{run.label} {side}: {len(ev)} eigenvalues {describe_range(ev)}")
        finish_log_panel(ax, title=run.label, xlabel="eigenvalue index (descending)", ylabel="eigenvalue of K (log)")
    return render(fig, title="eNTK eigen-spectra, base (dashed) and tuned (solid)",
                  alt="Log-scale line charts of the kernel eigenvalues in descending order, base and tuned, one panel "
                      "per run: " + "; ".join(alt) + ". Non-positive eigenvalues are not drawn.",
                  provenance=f"kernel.json base/tuned eigenvalues; {_setup_text(have)}.")


def _spectra_one_panel(have):
    fig, axes = new_figure(1, 1, width=8, height=4.0)
    ax = axes[0][0]
    alt, bases = [], []
    for _, run in have:
        d = run.get("kernel.json")
        for side in ("base", "tuned"):
            ev = [as_float(v) for v in ((d.get(side) or {}).get("eigenvalues") or [])]
            xs, ys = finite_xy(range(1, len(ev) + 1), ev)
            pos = [(x, y) for x, y in zip(xs, ys) if y > 0]
            if side == "base":
                if tuple(pos) in bases:
                    continue  # the same base kernel shared by several pairs: drawn once
                bases.append(tuple(pos))
                ax.plot([p[0] for p in pos], [p[1] for p in pos], linestyle="--", color="#333333", linewidth=1.6,
                        label="base" if len(bases) == 1 else f"base ({run.label})")
            else:
                ax.plot([p[0] for p in pos], [p[1] for p in pos], linestyle=run.dash, color=run.color, linewidth=1,
                        label=run.label)
            alt.append(f"{run.label} {side}: {len(ev)} eigenvalues {describe_range(ev)}")
    ax.set_yscale("log")
    integer_ticks(ax)
    ax.set(title="all pairs, base dashed black", xlabel="eigenvalue index (descending)", ylabel="eigenvalue of K (log)")
    ax.grid(alpha=0.3, which="both")
    figure_legend(fig, *ax.get_legend_handles_labels(), title="model")
    return render(fig, title="eNTK eigen-spectra, base (dashed) and tuned",
                  alt="Log-scale line chart of the kernel eigenvalues in descending order, the base once and each "
                      "tuned model: " + "; ".join(alt) + ". Non-positive eigenvalues are not drawn.",
                  provenance=f"kernel.json base/tuned eigenvalues; {_setup_text(have)}.")


def _by_rank_plot(have):
    fig, axes = new_figure(1, 2, width=10, height=3.8)
    ax_a, ax_r = axes[0]
    alt, limited = [], []
    for i, run in have:
        comp = _comparison(run.get("kernel.json"))
        angles = [as_float(a) for a in comp.get("angles_deg") or []]
        ratios = [as_float(a) for a in comp.get("eigenvalue_log_ratios") or []]
        xs, ys = finite_xy(range(1, len(angles) + 1), angles)
        ax_a.plot(xs, ys, marker="o", markersize=3, color=run.color, linestyle=run.dash, label=run.label)
        rx, ry = finite_xy(range(1, len(ratios) + 1), ratios)
        ax_r.plot(rx, ry, marker="o", markersize=3, color=run.color, linestyle=run.dash, label=run.label)
        alt.append(f"{run.label}: angles {describe_range(ys)} degrees, log-ratios {describe_range(ry)}")
        limited.append(f"{run.label}: top_r {comp.get('top_r', '?')}, gap {fmt(comp.get('gap'))}, Wedin bound "
                       f"{fmt(comp.get('wedin_bound'))}, gap-limited {comp.get('gap_limited', '?')}")
    ax_a.set(title="Principal angles, top-r eigenspaces", xlabel="angle index i (ascending)", ylabel="angle θ_i (°)")
    ax_r.axhline(0, color="#999999", linewidth=0.8)
    integer_ticks(ax_a, ax_r)
    ax_r.set(title="Eigenvalue change", xlabel="eigenvalue rank i", ylabel="log(λ_i tuned / λ_i base)")
    for ax in (ax_a, ax_r):
        ax.grid(alpha=0.3)
    figure_legend(fig, *ax_a.get_legend_handles_labels(), title="pair")
    return render(fig, title="Kernel rotation and rescaling by rank",
                  alt="Two line charts: principal angles between base and tuned top-r kernel eigenspaces, and "
                      "eigenvalue log-ratios, by rank: " + "; ".join(alt) + ".",
                  provenance=f"kernel.json comparison; {_setup_text(have)}; {'; '.join(limited)}.")


def _trait_rows(run: Run) -> list[dict]:
    rows = _trait_doc(run.get("kernel.json")).get("traits")
    return [t for t in rows if isinstance(t, dict)] if isinstance(rows, list) else []


#: One marker per trait in the trait scatter (the legend names them; no labels on the points).
TRAIT_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")


def _traits_plot(have):
    from matplotlib.lines import Line2D

    fig, axes = new_figure(1, 1, width=7, height=4.4)
    ax = axes[0][0]
    alt, lo, hi = [], math.inf, -math.inf
    names: list[str] = []
    for _, run in have:
        for t in _trait_rows(run):
            if str(t.get("name", "?")) not in names:
                names.append(str(t.get("name", "?")))
    for _, run in have:
        pts = [(as_float(t.get("predicted")), as_float(t.get("measured")), str(t.get("name", "?"))) for t in _trait_rows(run)]
        pts = [p for p in pts if math.isfinite(p[0]) and math.isfinite(p[1])]
        for p in pts:
            ax.scatter([p[0]], [p[1]], color=run.color, marker=TRAIT_MARKERS[names.index(p[2]) % len(TRAIT_MARKERS)],
                       edgecolors="black", linewidths=0.3, s=30)
            lo, hi = min(lo, p[0], p[1]), max(hi, p[0], p[1])
        alt.append(f"{run.label}: " + ", ".join(f"{p[2]} predicted {fmt(p[0])} measured {fmt(p[1])}" for p in pts))
    if math.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], color="#999999", linestyle="--", linewidth=0.8)
    ax.set(title="Per trait: J·Δθ against the real change (dashed: equal)", xlabel="predicted trait change (J·Δθ)",
           ylabel="measured trait change")
    ax.grid(alpha=0.3)
    handles = [Line2D([], [], linestyle="", marker=TRAIT_MARKERS[i % len(TRAIT_MARKERS)], color="#555555", label=n)
               for i, n in enumerate(names)]
    seen: list[str] = []
    for _, run in have:
        if run.group not in seen:
            seen.append(run.group)
            handles.append(Line2D([], [], linestyle="", marker="o", color=run.color, label=run.group))
    figure_legend(fig, handles, [h.get_label() for h in handles], title="trait / colour")
    return render(fig, title="Trait kernel: linear prediction of trait change",
                  alt="Scatter plot of predicted against measured change per trait (marker) and pair (colour), with "
                      "the identity line: " + "; ".join(alt) + ".",
                  provenance=f"kernel.json traits; {_setup_text(have)}; traits are mean losses per eval task (SPEC §6).")


def _traits_table(have) -> str:
    rows = [[f"{run.label}: {t.get('name', '?')}", fmt(as_float(t.get("predicted"))), fmt(as_float(t.get("measured")))]
            for _, run in have for t in _trait_rows(run)]
    return table(["run: trait", "predicted (J·Δθ)", "measured"], rows,
                 caption="Lande-style check of the linear picture: trait change predicted from the kernel against measured.")


def _trajectory_plot(have):
    fig, axes = new_figure(2, 2, width=10, height=6.4)
    alt = []
    ticks: list[str] = []
    for _, run in have:
        traj = _trajectory(run)
        names = [Path(str(t.get("checkpoint", j))).name or str(j) for j, t in enumerate(traj)]
        if len(names) > len(ticks):
            ticks = names
        for col, key in enumerate(("vs_base", "vs_previous")):
            comps = [t.get(key) if isinstance(t.get(key), dict) else {} for t in traj]
            angle = [max((as_float(a) for a in c.get("angles_deg") or [] if math.isfinite(as_float(a))), default=math.nan)
                     for c in comps]
            share = [as_float(c.get("rescale_share")) for c in comps]
            xs, ys = finite_xy(range(len(traj)), angle)
            axes[0][col].plot(xs, ys, linestyle=run.dash, marker="o", markersize=3, color=run.color, label=run.label)
            sx, sy = finite_xy(range(len(traj)), share)
            axes[1][col].plot(sx, sy, linestyle=run.dash, marker="o", markersize=3, color=run.color, label=run.label)
            alt.append(f"{run.label} {key}: max angle {describe_range(ys)}°, rescale share {describe_range(sy)}")
    for col, against in enumerate(("vs the base", "vs the previous checkpoint")):
        axes[0][col].set(title=f"Largest eigenspace angle, {against}", xlabel="checkpoint", ylabel="max angle (°)")
        axes[1][col].set(title=f"Rescale share, {against}", xlabel="checkpoint", ylabel="rescale share")
    for ax in (a for row in axes for a in row):
        ax.set_xticks(range(len(ticks)), ticks, rotation=30, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
    figure_legend(fig, *axes[0][0].get_legend_handles_labels(), title="pair")
    return render(fig, title="Kernel trajectory: each checkpoint against the base and against the previous one",
                  alt="Four line charts over checkpoints: the largest kernel eigenspace angle and the rescale share, "
                      "against the base (left) and against the previous checkpoint (right): " + "; ".join(alt) + ".",
                  provenance=f"kernel.json trajectory; {_setup_text(have)}; "
                             + "; ".join(f"{r.label}: {len(_trajectory(r))} checkpoints" for _, r in have) + ".")
