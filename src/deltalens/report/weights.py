"""The weight-level section: sparsity, principal angles, spectrum drift, rescale share, ranks (diff.json)."""

from __future__ import annotations

import math

import deltalens.report.aggregate as agg
from deltalens.report.html import Section, absent, figure_or_note, fmt, heading, html, missing_notes, paragraph, pct, table
from deltalens.report.inputs import Run, as_float
from deltalens.report.plotting import (MODULE_MARKERS, describe_range, figure_legend, finite_xy, integer_ticks,
                                       new_figure, render)

#: At most this many k values get their own angle figure (the rest are in the tables).
MAX_K_FIGURES = 3
#: Up to this many pairs get a panel each in the angle figure (module kinds as lines); more
#: pairs share one panel per side, one line per pair (the max over module kinds).
MAX_PANEL_PAIRS = 3


def _tensors(run: Run) -> list[dict]:
    rows = (run.get("diff.json") or {}).get("tensors")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _dtypes(rows: list[dict]) -> str:
    return ", ".join(sorted({str(r.get("dtype")) for r in rows if r.get("dtype")})) or "unknown dtype"


def _tolerances(runs: list[Run]) -> list[str]:
    tols: set[str] = set()
    for run in runs:
        ua = ((run.get("diff.json") or {}).get("summary") or {}).get("unchanged_absolute")
        if isinstance(ua, dict):
            tols.update(ua)
    return sorted(tols, key=lambda t: as_float(float(t)) if _is_number(t) else math.inf)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def build(runs: list) -> Section:
    """The section over the pairs ``runs`` (:class:`~deltalens.report.pairs.Pair`, one column each)."""
    section = Section(
        "weights", "Weight level",
        "What changed in the stored weights (SPEC §2–5): which entries moved at all, whether the "
        "principal subspaces rotated, how the spectrum drifted, and how much of the update re-weights "
        "existing directions (rescale) rather than mixing them.")
    have = [(i, r) for i, r in enumerate(runs) if "diff.json" in r.data]
    missing_notes(section, runs, "diff.json", "weight-level results",
                   "deltalens diff BASE TUNED --out DIR")
    if not have:
        return section
    section.add(_summary_table(have, _tolerances([r for _, r in have])))
    _nonfinite(section, have)
    section.add(heading("Update sparsity by layer and module"))
    section.add(figure_or_note(_sparsity_plot, have))
    choices = agg.k_choices(_tensors(run) for _, run in have)
    if choices:
        section.add(heading("Principal-subspace rotation (max principal angle by layer)"))
        section.add(paragraph(
            "Largest principal angle between the top-k left (and right) singular subspaces of W0 and W1, "
            "per layer and module kind. Points whose Wedin bound ‖Δ‖₂/gap_k reaches 1 are gap-limited: the "
            "subspace is not well defined at that k, so the angle there is not evidence of rotation."))
        plot = _angle_plot if len(have) <= MAX_PANEL_PAIRS else _angle_plot_by_pair
        for choice in choices[:MAX_K_FIGURES]:
            section.add(figure_or_note(plot, have, choice))
        if len(choices) > MAX_K_FIGURES:
            others = ", ".join(c.label for c in choices[MAX_K_FIGURES:])
            section.add(paragraph(f"Also recorded: {others} (see the block-share table)."))
    else:
        section.add(absent(html("no <code>by_k</code> entries in any diff.json: principal angles were not computed "
                                "(run <code>deltalens diff</code> with the spectral metrics).")))
    if any(not math.isnan(as_float(r.get("nss"))) for _, run in have for r in _tensors(run)):
        section.add(heading("Spectrum drift"))
        section.add(figure_or_note(_nss_plot, have))
    if any(not math.isnan(as_float(r.get("rescale_share"))) for _, run in have for r in _tensors(run)):
        section.add(heading("Rescale share against its random baseline"))
        section.add(figure_or_note(_rescale_plot, have))
        if choices:
            section.add(_block_share_table(have, choices))
    section.add(heading("Rank of the update"))
    section.add(_rank_table(have))
    return section


def _summary_table(have: list[tuple[int, Run]], tolerances: list[str]) -> str:
    cols = [run.label for _, run in have]
    metrics: list[tuple[str, list[object]]] = []

    def row(name: str, values: list[object]) -> None:
        metrics.append((name, values))

    docs = [run.get("diff.json") for _, run in have]
    sums = [d.get("summary") or {} for d in docs]
    tensors = [_tensors(run) for _, run in have]
    row("parameters compared", [fmt(s.get("numel")) for s in sums])
    row("stored dtypes", [_dtypes(t) for t in tensors])
    row("unchanged, bitwise", [pct(s.get("unchanged_bitwise")) for s in sums])
    row("unchanged, relative (η = 1e-3)", [pct(s.get("unchanged_relative")) for s in sums])
    for tol in tolerances:
        row(f"unchanged, |Δ| ≤ {tol}", [pct((s.get("unchanged_absolute") or {}).get(tol)) for s in sums])
    if any("visible_fraction" in r for t in tensors for r in t):
        row("bf16-visible update (params-weighted)",
            [pct(agg.pool(t, "visible_fraction", "params").value) for t in tensors])
    row("tensors / 2-D tensors", [f"{len(t)} / {len(agg.matrix_rows(t))}" for t in tensors])
    row("tensors with NaN/Inf", [str(sum(1 for r in t if as_float(r.get("nonfinite")) > 0)) for t in tensors])
    row("skipped (non-float)", [str(len(d.get("skipped") or [])) for d in docs])
    unmatched = [d.get("unmatched") or {} for d in docs]
    row("unmatched (base only / tuned only)",
        [f"{len(u.get('base_only') or [])} / {len(u.get('tuned_only') or [])}" for u in unmatched])
    row("k values", [", ".join(agg.k_keys(t)) or "—" for t in tensors])
    pooled = [agg.pool(t, "rescale_share", "energy") for t in tensors]
    base = [agg.pool(t, "rescale_baseline", "energy") for t in tensors]
    row("rescale share (‖Δ‖²-weighted)", [fmt(p.value) for p in pooled])
    row("random baseline (‖Δ‖²-weighted)", [fmt(b.value) for b in base])
    row("rescale share ÷ baseline", [fmt(p.value / b.value) if b.value > 0 else "—" for p, b in zip(pooled, base)])
    row("mean NSS over 2-D tensors", [fmt(agg.mean(as_float(r.get("nss")) for r in agg.matrix_rows(t))) for t in tensors])
    for name, label in (("principal_overlap", "principal-weight overlap"), ("low_overlap", "low-magnitude overlap"),
                        ("overlap_baseline", "overlap random baseline")):
        if any(name in r for t in tensors for r in t):
            row(f"{label} (mean over 2-D tensors)", [fmt(agg.mean(as_float(r.get(name)) for r in agg.matrix_rows(t))) for t in tensors])
    spectral = agg.method_text(r for t in tensors for r in agg.matrix_rows(t))
    ranks = ", ".join(sorted({str(r["rank_method"]) for t in tensors for r in t if r.get("rank_method")})) or "not recorded"
    return table(["quantity", *cols], ([name, *vals] for name, vals in metrics),
                 caption=f"Whole-model summary from each pair's diff.json. Unchanged fractions are the diff's own "
                         f"parameter-weighted totals; shares are pooled over tensors weighted by ‖Δ‖_F². Spectral "
                         f"method: {spectral}. Rank method: {ranks}.")


def _nonfinite(section: Section, have: list[tuple[int, Run]]) -> None:
    bad = [(run.label, r) for _, run in have for r in _tensors(run) if as_float(r.get("nonfinite")) > 0]
    if not bad:
        return
    section.add(paragraph(html("<strong>{} tensor(s) hold NaN or Inf</strong>; their non-finite metrics ", len(bad)) +
                          "are shown as — and left out of every pooled number and plot.", "warning"))
    section.add(table(["tensor", "run", "non-finite entries", "shape", "dtype"],
                      ([r.get("name"), label, fmt(r.get("nonfinite")), str(r.get("shape")), r.get("dtype")]
                       for label, r in bad), numeric_from=2))


def _sparsity_plot(have: list[tuple[int, Run]]):
    fig, axes = new_figure(1, 2, width=10, height=3.8)
    ax_layer, ax_mod = axes[0]
    all_mods: list[str] = []
    for _, run in have:
        for m in agg.modules_of(_tensors(run)):
            if m not in all_mods:
                all_mods.append(m)
    all_mods = agg.ordered_modules(all_mods)
    width = 0.8 / max(1, len(have))
    alt = []
    for j, (i, run) in enumerate(have):
        rows = _tensors(run)
        layers = agg.by_layer(rows)
        ys = [agg.pool(g, "unchanged_bitwise", "params").value for g in layers.values()]
        xs, ys = finite_xy(list(layers), ys)
        ax_layer.plot(xs, ys, marker="o", markersize=3, color=run.color, linestyle=run.dash, label=run.label)
        mods = agg.by_module(rows)
        vals = [agg.pool(mods.get(m, []), "unchanged_bitwise", "params").value for m in all_mods]
        ax_mod.bar([x + (j - (len(have) - 1) / 2) * width for x in range(len(all_mods))],
                   [v if math.isfinite(v) else 0 for v in vals], width=width, color=run.color, label=run.label)
        alt.append(f"{run.label}: per-layer unchanged fraction {describe_range(ys)}")
    ax_layer.set(title="By layer (all tensors of the layer)", xlabel="layer", ylabel="unchanged fraction (bitwise)")
    ax_mod.set(title="By module kind", xlabel="module kind", ylabel="unchanged fraction (bitwise)")
    ax_mod.set_xticks(range(len(all_mods)), all_mods, rotation=45, ha="right")
    integer_ticks(ax_layer)
    for ax in (ax_layer, ax_mod):
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    figure_legend(fig, *ax_layer.get_legend_handles_labels(), title="pair")
    rows_all = [r for _, run in have for r in _tensors(run)]
    return render(
        fig, title="Update sparsity: fraction of parameters bitwise unchanged",
        alt="Line chart by layer and bar chart by module kind of the parameter-weighted fraction of weights whose "
            "stored bits did not change. " + "; ".join(alt) + ".",
        provenance=f"diff.json of {', '.join(r.label for _, r in have)}; rule: bitwise in the stored dtype "
                   f"({_dtypes(rows_all)}); pooled weighted by parameter count; {len(rows_all)} tensors.")


def _angle_plot(have: list[tuple[int, Run]], choice: agg.KChoice):
    ncols = len(have)
    fig, axes = new_figure(2, ncols, width=min(4.6 * ncols + 1.5, 14), height=6.2, sharey=True)
    gap_limited = total = unresolved = 0
    alt = []
    handles = {}
    for c, (i, run) in enumerate(have):
        rows = agg.matrix_rows(_tensors(run))
        for r_idx, side in enumerate(("left", "right")):
            ax = axes[r_idx][c]
            peak = []
            for module in agg.modules_of(rows):
                xs, ys, gl, skipped = _layer_max_angles(agg.by_layer(rows, module), choice, side)
                unresolved += skipped if side == "left" else 0
                if not xs:
                    continue
                (line,) = ax.plot(xs, ys, marker=MODULE_MARKERS.get(module, "o"), markersize=4, linewidth=1.2, label=module)
                handles.setdefault(module, line)
                bad = [(x, y) for x, y, g in zip(xs, ys, gl) if g]
                if bad:
                    h = ax.scatter([b[0] for b in bad], [b[1] for b in bad], s=70, facecolors="none",
                                   edgecolors="red", linewidths=1.2, zorder=5, label="gap-limited")
                    handles.setdefault("gap-limited", h)
                if side == "left":
                    total += len(ys)
                    gap_limited += sum(gl)
                peak.extend(ys)
            ax.set(title=f"{run.label}: {side} singular vectors", xlabel="layer", ylabel="max principal angle (°)")
            ax.grid(alpha=0.3)
            alt.append(f"{run.label} {side}: max angles {describe_range(peak)} degrees")
    integer_ticks(*[ax for row in axes for ax in row])
    order = [m for m in handles if m != "gap-limited"] + (["gap-limited"] if "gap-limited" in handles else [])
    figure_legend(fig, [handles[m] for m in order], order, title="module")
    return render(
        fig, title=f"Max principal angle by layer, top-k subspaces, {choice.label}",
        alt=f"Grid of line charts, left singular vectors on top and right below, one column per run, of the largest "
            f"principal angle ({choice.label}) per layer and module kind. " + "; ".join(alt) + ".",
        provenance=f"diff.json by_k ({choice.label}) of {', '.join(r.label for _, r in have)}; "
                   f"method {agg.method_text((r for _, run in have for r in _tensors(run)), 'angles')}; "
                   f"angles from sines (SPEC §4); {total} layer×module points per side, {gap_limited} of the left ones "
                   f"gap-limited (Wedin bound ≥ 1, circled red); {unresolved} tensor(s) unresolved by the fast route "
                   f"(angle error estimate above 0.01°) left out; the max over a layer's tensors of one module kind.")


def _layer_max_angles(layers: dict, choice: agg.KChoice, side: str):
    """Per layer the largest ``side`` principal angle over its tensors' ``choice`` entries:
    (layers, angles, gap-limited flags of those maxima, entries left out as unresolved)."""
    xs, ys, gl, unresolved = [], [], [], 0
    key = f"angle_max_{side}_deg"
    for layer, group in layers.items():
        entries = [choice.entry(r) for r in group]
        unresolved += sum(1 for e in entries if e.get("unresolved"))
        entries = [e for e in entries if not e.get("unresolved") and math.isfinite(as_float(e.get(key)))]
        if entries:
            top = max(entries, key=lambda e: as_float(e.get(key)))
            xs.append(layer)
            ys.append(as_float(top.get(key)))
            gl.append(bool(top.get("gap_limited")))
    return xs, ys, gl, unresolved


def _angle_plot_by_pair(have: list[tuple[int, Run]], choice: agg.KChoice):
    fig, axes = new_figure(1, 2, width=10, height=3.8, sharey=True)
    gap_limited = total = unresolved = 0
    alt = []
    for c, side in enumerate(("left", "right")):
        ax = axes[0][c]
        for _, run in have:
            rows = agg.matrix_rows(_tensors(run))
            xs, ys, gl, skipped = _layer_max_angles(agg.by_layer(rows), choice, side)
            unresolved += skipped if side == "left" else 0
            if not xs:
                continue
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, color=run.color, linestyle=run.dash,
                    label=run.label)
            bad = [(x, y) for x, y, g in zip(xs, ys, gl) if g]
            if bad:
                ax.scatter([b[0] for b in bad], [b[1] for b in bad], s=60, facecolors="none", edgecolors="red",
                           linewidths=1.0, zorder=5)
            if side == "left":
                total += len(ys)
                gap_limited += sum(gl)
            alt.append(f"{run.label} {side}: {describe_range(ys)} degrees")
        ax.set(title=f"{side} singular vectors", xlabel="layer", ylabel="max principal angle (°)")
        ax.grid(alpha=0.3)
    integer_ticks(axes[0][0], axes[0][1])
    figure_legend(fig, *axes[0][0].get_legend_handles_labels(), title="pair")
    return render(
        fig, title=f"Max principal angle by layer, top-k subspaces, {choice.label}",
        alt=f"Two line charts, left and right singular vectors, of the largest principal angle ({choice.label}) per "
            f"layer over all module kinds, one line per pair. " + "; ".join(alt) + ".",
        provenance=f"diff.json by_k ({choice.label}) of {len(have)} pairs; "
                   f"method {agg.method_text((r for _, run in have for r in _tensors(run)), 'angles')}; "
                   f"angles from sines (SPEC §4); the max over a layer's 2-D tensors; {total} layer points per side, "
                   f"{gap_limited} of the left ones gap-limited (Wedin bound ≥ 1, circled red); {unresolved} tensor(s) "
                   f"unresolved by the fast route left out.")


def _nss_plot(have):
    return _layer_line_plot(have, "nss", title="Spectrum drift (NSS) by layer",
                            ylabel="NSS = ‖σ(W1) − σ(W0)‖₂ / ‖σ(W0)‖₂", pooled="mean over the layer's 2-D tensors")


def _layer_line_plot(have, field_name: str, *, title: str, ylabel: str, pooled: str):
    fig, axes = new_figure(1, 1, width=8, height=3.6)
    ax = axes[0][0]
    alt = []
    n = 0
    for i, run in have:
        layers = agg.by_layer(agg.matrix_rows(_tensors(run)))
        ys = [agg.mean(as_float(r.get(field_name)) for r in g) for g in layers.values()]
        xs, ys = finite_xy(list(layers), ys)
        n += sum(len(g) for g in layers.values())
        ax.plot(xs, ys, marker="o", markersize=3, color=run.color, linestyle=run.dash, label=run.label)
        alt.append(f"{run.label} {describe_range(ys)}")
    ax.set(title=f"{pooled}", xlabel="layer", ylabel=ylabel)
    integer_ticks(ax)
    ax.grid(alpha=0.3)
    figure_legend(fig, *ax.get_legend_handles_labels(), title="pair")
    methods = agg.method_text((r for _, run in have for r in agg.matrix_rows(_tensors(run))), field_name)
    return render(fig, title=title, alt=f"Line chart of {field_name} by layer, one line per run: " + "; ".join(alt) + ".",
                  provenance=f"diff.json field '{field_name}' of {', '.join(r.label for _, r in have)}; method {methods} "
                             f"(full spectrum, or top-k in fast mode); {n} 2-D tensors in numbered layers.")


def _rescale_plot(have):
    fig, axes = new_figure(1, 1, width=8, height=3.8)
    ax = axes[0][0]
    alt = []
    baselines: dict[int, list[float]] = {}
    for i, run in have:
        layers = agg.by_layer(agg.matrix_rows(_tensors(run)))
        share = [agg.pool(g, "rescale_share", "energy").value for g in layers.values()]
        base = [agg.pool(g, "rescale_baseline", "energy").value for g in layers.values()]
        xs, ys = finite_xy(list(layers), share)
        bx, by = finite_xy(list(layers), base)
        ax.plot(xs, ys, marker="o", markersize=3, color=run.color, linestyle=run.dash, label=run.label)
        for x, y in zip(bx, by):
            baselines.setdefault(x, []).append(y)
        alt.append(f"{run.label} share {describe_range(ys)}, baseline {describe_range(by)}")
    if baselines:  # one baseline line (the pairs' baselines differ only through their ‖Δ‖² weights): mean and range
        bx = sorted(baselines)
        ax.plot(bx, [sum(baselines[x]) / len(baselines[x]) for x in bx], linestyle=":", marker="x", markersize=3,
                color="#444444", label="random baseline")
        if len(have) > 1:
            ax.fill_between(bx, [min(baselines[x]) for x in bx], [max(baselines[x]) for x in bx], color="#888888",
                            alpha=0.2, linewidth=0)
    log = any(line.get_xdata().size and (line.get_ydata() > 0).all() for line in ax.get_lines())
    if log:
        ax.set_yscale("log")
    ax.set(title="‖diag(UᵀΔV)‖² / ‖Δ‖²_F, pooled by ‖Δ‖²", xlabel="layer",
           ylabel="rescale share (log scale)" if log else "rescale share")
    integer_ticks(ax)
    ax.grid(alpha=0.3, which="both")
    figure_legend(fig, *ax.get_legend_handles_labels(), title="pair")
    methods = agg.method_text((r for _, run in have for r in agg.matrix_rows(_tensors(run))), "frame")
    return render(fig, title="Rescale share by layer against its random baseline",
                  alt="Line chart by layer of the share of update energy on the base's own singular directions, with "
                      "a dotted random baseline (mean over pairs, shaded their range; rescale_baseline: min(m,n)/(mn) for the full frame, q/(mn) in the top-q scope): " + "; ".join(alt) + ".",
                  provenance=f"diff.json fields rescale_share, rescale_baseline of {', '.join(r.label for _, r in have)}; "
                             f"method {methods}; SPEC §5; pooled per layer weighted by ‖Δ‖_F² (delta_fro²).")


def _block_share_table(have, choices: list[agg.KChoice]) -> str:
    rows = []
    for _, run in have:
        mats = agg.matrix_rows(_tensors(run))
        for choice in choices:
            cells = [f"{run.label}, {choice.label}"]
            found = False
            for block in ("PP", "PQ", "QP", "QQ"):
                def value(r, b=block, part="share", c=choice):
                    return as_float(((c.entry(r).get("block_shares") or {}).get(b) or {}).get(part))
                share = agg.pool(mats, value, "energy")
                base = agg.pool(mats, lambda r, b=block: value(r, b, "baseline"), "energy")
                found = found or share.used > 0
                cells.append(f"{fmt(share.value)} (baseline {fmt(base.value)})")
            if found:
                rows.append(cells)
    if not rows:
        return ""
    return table(["run, k", "PP", "PQ", "QP", "QQ"], rows, numeric_from=1,
                 caption="Share of ‖Δ‖_F² in the top-k (P) / rest (Q) blocks of the base's singular frame, left×right "
                         "(SPEC §5), pooled over 2-D tensors weighted by ‖Δ‖_F²; random baselines in brackets.")


#: The rank measures of the rank table: (field, label, divided by min(m, n) before averaging).
RANK_MEASURES = (("effective_rank", "effective rank / min(m,n)", True), ("stable_rank", "stable rank", False),
                 ("energy_rank_90", "energy rank 90% / min(m,n)", True), ("numerical_rank", "numerical rank / min(m,n)", True),
                 ("rank1_share", "rank-1 share", False))


def _rank_table(have) -> str:
    per_pair = [agg.by_module(agg.matrix_rows(_tensors(run))) for _, run in have]
    modules = agg.ordered_modules({m for groups in per_pair for m in groups})
    if not modules:
        return absent("no 2-D tensors in diff.json, so no rank measures.")
    rows = []
    for name, label, relative in RANK_MEASURES:
        if not any(name in r for groups in per_pair for g in groups.values() for r in g):
            continue
        for module in modules:
            cells = []
            for groups in per_pair:
                g = groups.get(module, [])
                vals = (as_float(r.get(name)) / agg.min_dim(r) if relative else as_float(r.get(name)) for r in g)
                cells.append(fmt(agg.mean(vals)) if g else "—")
            rows.append([f"{label}: {module}", *cells])
    return table(["measure: module", *(run.label for _, run in have)], rows,
                 caption="Rank measures of Δ (SPEC §3) per module kind, one column per pair: the mean over the module "
                         "kind's 2-D tensors; rank counts are divided by each tensor's min(m, n) before averaging.")
