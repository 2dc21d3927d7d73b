"""The answer first: the lab's claims (verdict, effect with its 95% CI, the published range, the
training gates) and our versions of the figures the papers are known for:

- principal-angle distributions by arm (The Path Not Taken, Fig. 1c),
- per-layer update sparsity in the stored dtype (RL Finetunes Small Subnetworks, Fig. 1),
- pass@k of the base and each arm with intervals and the crossover (Yue et al., Fig. 1),
- forgetting against forward KL (RL's Razor, Fig. 1),
- pass@1 gain over the base by arm, real against random reward (Spurious Rewards, Fig. 1).

Arms come from ``claims.json``; a pair belongs to an arm when its folder is the lab's
``<arm>-seed<s>``. Without a lab each pair is its own group, and the same figures compare pairs.
"""

from __future__ import annotations

import math
import statistics

from markupsafe import Markup

import deltalens.report.aggregate as agg
from deltalens.report.html import (Section, absent, figure_or_note, fmt, grid, html, paragraph, table,
                                   verdict_badge)
from deltalens.report.inputs import Run, as_float, is_claims_doc
from deltalens.report.pairs import Pair, group_color
from deltalens.report.plotting import describe_range, integer_ticks, new_figure, render

#: Width and height (inches) of a headline figure: two fit side by side in the page's column.
PANEL = (5.6, 3.9)


def build(runs: list[Run], pairs: list[Pair], groups: list[str]) -> Section:
    labs = [r for r in runs if is_claims_doc(r.get("claims.json"))]
    section = Section("answer", "The answer", _intro(labs))
    tables = [_claims_table(run) for run in labs]
    forgetting = next((r.get("forgetting.json") for r in runs if "forgetting.json" in r.data), None)
    claims = labs[0].get("claims.json") if labs else {}
    figures = []
    notes = []
    ctx = (pairs, groups)
    diff = [p for p in pairs if "diff.json" in p.data]
    passk = [p for p in pairs if "passk.json" in p.data]
    if diff:
        figures.append(figure_or_note(_angle_distribution, ctx, diff))
        figures.append(figure_or_note(_layer_sparsity, ctx, diff))
    else:
        notes.append("principal-angle distributions and per-layer sparsity (no diff.json)")
    if passk:
        figures.append(figure_or_note(_passk_curves, ctx, passk))
        figures.append(figure_or_note(_pass1_gain, ctx, passk))
    else:
        notes.append("pass@k curves and the pass@1 gain by arm (no passk.json)")
    if isinstance(forgetting, dict) and forgetting.get("models"):
        figures.append(figure_or_note(_forgetting, ctx, forgetting, claims))
    else:
        notes.append("forgetting against forward KL (no forgetting.json: the lab's analysis writes it)")
    lacking = []
    if not labs:
        lacking.append(html("no <code>claims.json</code>, so no lab verdicts (<code>deltalens lab --out DIR</code> "
                            "makes them); the figures compare the pairs found"))
    if notes:
        lacking.append(html("not drawn: {}", "; ".join(notes)))
    if lacking:
        section.add(absent(Markup("; ").join(lacking) + "."))
    if tables:  # wide screens: the claims and the figures side by side; phones: one after the other
        section.add(html('<div class="answer-grid"><div class="answer-claims">{}</div>'
                         '<div class="answer-figures">{}</div></div>', Markup("\n").join(tables),
                         Markup("\n").join(f for f in figures if f)))
    else:
        section.add(grid(figures))
    return section


def _intro(labs: list[Run]) -> str:
    if not labs:
        return ("What changed between each base and tuned model, as the papers this tool reproduces show it; the "
                "details per level follow.")
    return ("The lab's verdict on each claim, with the claimed effect and its 95% interval; beside it, our versions of "
            "the papers' figures. The details per level follow.")


# --------------------------------------------------------------------------- claims table
def _claim_arms(claim: dict) -> list[str]:
    arms: list[str] = []
    for per_arm in (claim.get("numbers") or {}).values():
        if isinstance(per_arm, dict):
            arms += [a for a in per_arm if a not in arms and a != "base"]
    return arms


def gate_text(claim: dict, gates: dict) -> str:
    """Whether every arm the claim uses passed its training gate in every seed."""
    arms = _claim_arms(claim)
    if not arms or not isinstance(gates, dict) or not gates:
        return "—"
    failed = [f"{a} seed {s}" for a in arms for s, g in sorted((gates.get(a) or {}).items())
              if isinstance(g, dict) and not g.get("passed", False)]
    unknown = [a for a in arms if a not in gates]
    if failed:
        return "FAILED: " + ", ".join(failed)
    return "passed" + (f" (no gate for {', '.join(unknown)})" if unknown else "")


def _claims_table(run: Run) -> Markup:
    from deltalens.report.claims_text import effect_text, published_text

    doc = run.get("claims.json")
    claims = [c for c in doc.get("claims") or [] if isinstance(c, dict)]
    arms = [str(a) for a in doc.get("arms") or []]
    counts = {v: sum(1 for c in claims if c.get("verdict") == v) for v in ("holds", "contradicted", "inconclusive")}
    other = len(claims) - sum(counts.values())
    interval = doc.get("interval") if isinstance(doc.get("interval"), dict) else {}
    summary = html("<strong>{}</strong>: arms {}; {} seed(s); {} run. {} claims: {} hold, {} contradicted, {} "
                   "inconclusive{}.", run.label, ", ".join(arms) or "—", doc.get("seeds", "?"),
                   "quick" if doc.get("quick") else "full", len(claims), counts["holds"], counts["contradicted"],
                   counts["inconclusive"], f", {other} other" if other else "")
    rows = []
    for c in claims:
        effect = c.get("effect") if isinstance(c.get("effect"), dict) else {}
        rows.append([html("{}<br><small>{}</small>", c.get("claim", "—"), c.get("id", "")),
                     verdict_badge(c.get("verdict", "—")), effect_text(effect) if effect else "—",
                     published_text(c.get("published") if isinstance(c.get("published"), dict) else None),
                     gate_text(c, doc.get("gates"))])
    how = interval.get("method", "bootstrap over seeds and items")
    caption = (f"claims.json of {run.label}. A claim holds when the {fmt(as_float(interval.get('level', 0.95)) * 100)}% "
               "interval of its effect excludes 0 in the claimed direction, is contradicted when it excludes 0 the other "
               "way, and is inconclusive otherwise or when an arm it needs failed its training gate (gates: each arm's "
               f"own dev metric improved in every seed). Interval: {how}. Published ranges: SPEC §8.")
    return Markup("\n").join([paragraph(summary),
                              table(["claim", "verdict", "effect [95% CI]", "published (SPEC §8)", "gates"], rows,
                                    numeric_from=99, caption=caption, cls="claims")])


# --------------------------------------------------------------------------- helpers
def _tensors(pair: Pair) -> list[dict]:
    rows = (pair.get("diff.json") or {}).get("tensors")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _by_group(pairs: list[Pair], groups: list[str]) -> list[tuple[str, list[Pair]]]:
    return [(g, [p for p in pairs if p.group == g]) for g in groups if any(p.group == g for p in pairs)]


def _seeds(members: list[Pair]) -> str:
    return f"{len(members)} pair(s)" if len(members) != 1 else members[0].label


def _dtypes(rows: list[dict]) -> str:
    return ", ".join(sorted({str(r.get("dtype")) for r in rows if r.get("dtype")})) or "unknown dtype"


# --------------------------------------------------------------------------- 1: angle distribution
def _angle_distribution(ctx, have: list[Pair]):
    pairs, groups = ctx
    choices = agg.k_choices(_tensors(p) for p in have)
    if not choices:
        raise ValueError("no by_k principal angles in diff.json")
    choice = choices[0]
    fig, axes = new_figure(1, 1, width=PANEL[0], height=PANEL[1])
    ax = axes[0][0]
    per_group: dict[str, list[float]] = {}
    dropped = {"gap-limited": 0, "unresolved": 0}
    for p in have:
        for r in agg.matrix_rows(_tensors(p)):
            e = choice.entry(r)
            if not e:
                continue
            if e.get("unresolved"):
                dropped["unresolved"] += 1
                continue
            if e.get("gap_limited"):
                dropped["gap-limited"] += 1
                continue
            v = as_float(e.get("angle_max_left_deg"))
            if math.isfinite(v):
                per_group.setdefault(p.group, []).append(v)
    values = [v for vs in per_group.values() for v in vs]
    if not values:
        raise ValueError("every principal angle is gap-limited, unresolved or missing")
    positive = [v for v in values if v > 0]
    log = bool(positive) and len(positive) == len(values) and max(values) / min(values) > 20
    import numpy as np

    bins = (np.geomspace(min(values), max(values), 25) if log else np.linspace(0, max(values) * 1.02, 25))
    alt = []
    for g, _ in _by_group(have, groups):
        vs = per_group.get(g)
        if not vs:
            continue
        ax.hist(vs, bins=bins, histtype="step", linewidth=1.8, color=group_color(pairs, g), label=f"{g} ({len(vs)})")
        alt.append(f"{g}: {len(vs)} tensors, median {fmt(statistics.median(vs))}°")
    if log:
        ax.set_xscale("log")
    ax.set(title=f"max principal angle per tensor, left vectors, {choice.label}",
           xlabel="angle (°, log scale)" if log else "angle (°)", ylabel="tensors")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="arm (tensors)", title_fontsize=8)
    return render(fig, title="Principal-angle distributions by arm",
                  alt="Step histograms of the largest principal angle between the base's and the tuned model's "
                      "top-k singular subspaces, one per arm: " + "; ".join(alt) + ".",
                  provenance=f"diff.json by_k angle_max_left_deg ({choice.label}) of {len(have)} pair(s), pooled over "
                             f"the seeds of each arm; {dropped['gap-limited']} gap-limited (Wedin bound ≥ 1) and "
                             f"{dropped['unresolved']} unresolved tensor entries left out; SPEC §4; after The Path Not "
                             "Taken, Fig. 1c.")


# --------------------------------------------------------------------------- 2: per-layer sparsity
def _layer_sparsity(ctx, have: list[Pair]):
    pairs, groups = ctx
    fig, axes = new_figure(1, 1, width=PANEL[0], height=PANEL[1])
    ax = axes[0][0]
    alt = []
    layers_all: set = set()
    for g, members in _by_group(have, groups):
        per_layer: dict[int, list[float]] = {}
        for p in members:
            for layer, rows in agg.by_layer(_tensors(p)).items():
                v = agg.pool(rows, "unchanged_bitwise", "params").value
                if math.isfinite(v):
                    per_layer.setdefault(layer, []).append(v)
        if not per_layer:
            continue
        xs = sorted(per_layer)
        layers_all.update(xs)
        mean = [statistics.fmean(per_layer[x]) for x in xs]
        lo = [m - min(per_layer[x]) for m, x in zip(mean, xs)]
        hi = [max(per_layer[x]) - m for m, x in zip(mean, xs)]
        ax.errorbar(xs, mean, yerr=[lo, hi], marker="o", markersize=4, capsize=3, color=group_color(pairs, g),
                    label=g)
        alt.append(f"{g}: {describe_range(mean)}")
    if not alt:
        raise ValueError("no per-layer unchanged fractions in diff.json")
    ax.set(title="parameter-weighted, bars: range over seeds", xlabel="layer",
           ylabel="unchanged (bitwise)")
    top = max(max(per) for per in (ln.get_ydata() for ln in ax.get_lines()) if len(per)) if ax.get_lines() else 1
    ax.set_ylim(0, min(1.0, 1.15 * top) or 1.0)  # the measured range, not 0–1: small fractions stay visible
    integer_ticks(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="arm", title_fontsize=8)
    rows = [r for p in have for r in _tensors(p)]
    return render(fig, title="Update sparsity by layer: parameters bitwise unchanged",
                  alt="Line chart by layer of the fraction of parameters whose stored bits did not change, one line "
                      "per arm (mean over seeds): " + "; ".join(alt) + ".",
                  provenance=f"diff.json unchanged_bitwise of {len(have)} pair(s), stored dtype {_dtypes(rows)} "
                             "(bitwise in that dtype, SPEC §2), pooled per layer weighted by numel, mean over the "
                             "arm's seeds with their range; after RL Finetunes Small Subnetworks, Fig. 1.")


# --------------------------------------------------------------------------- 3: pass@k
def _curve(model: dict) -> dict[float, tuple[float, float, float]]:
    return {as_float(k): (as_float(y), as_float(lo), as_float(hi)) for k, y, lo, hi in
            zip(model.get("k") or [], model.get("pass_at_k") or [], model.get("ci_low") or [],
                model.get("ci_high") or [])}


def _base_and_tuned_curves(pair: Pair):
    doc = pair.get("passk.json") or {}
    models = {str(k): v for k, v in (doc.get("models") or {}).items() if isinstance(v, dict)}
    cross = doc.get("crossover") if isinstance(doc.get("crossover"), dict) else {}
    base_name = cross.get("base") if cross.get("base") in models else next(iter(models), None)
    tuned_name = cross.get("tuned") if cross.get("tuned") in models else next((m for m in models if m != base_name), None)
    base = _curve(models[base_name]) if base_name else {}
    tuned = _curve(models[tuned_name]) if tuned_name else {}
    return base, tuned, cross


def _passk_curves(ctx, have: list[Pair]):
    pairs, groups = ctx
    fig, axes = new_figure(1, 1, width=PANEL[0], height=PANEL[1])
    ax = axes[0][0]
    bases = []
    alt, crossings = [], []
    all_k: set[float] = set()
    for g, members in _by_group(have, groups):
        curves = []
        for p in members:
            base, tuned, cross = _base_and_tuned_curves(p)
            if base:
                bases.append(base)
            if tuned:
                curves.append(tuned)
            k = cross.get("k")
            crossings.append((g, p.label, k))
        if not curves:
            continue
        ks = sorted(set.intersection(*(set(c) for c in curves)))
        all_k.update(ks)
        mean = [statistics.fmean(c[k][0] for c in curves) for k in ks]
        lo = [min(c[k][1] for c in curves) for k in ks]
        hi = [max(c[k][2] for c in curves) for k in ks]
        color = group_color(pairs, g)
        ax.plot(ks, mean, marker="o", markersize=3, color=color, label=g)
        ax.fill_between(ks, lo, hi, color=color, alpha=0.15, linewidth=0)
        alt.append(f"{g}: pass@k {describe_range(mean)}")
    if bases:
        ks = sorted(set.intersection(*(set(b) for b in bases)))
        mean = [statistics.fmean(b[k][0] for b in bases) for k in ks]
        lo = [min(b[k][1] for b in bases) for k in ks]
        hi = [max(b[k][2] for b in bases) for k in ks]
        ax.plot(ks, mean, marker="s", markersize=3, color="#222222", linestyle="--", label="base")
        ax.fill_between(ks, lo, hi, color="#222222", alpha=0.10, linewidth=0)
        all_k.update(ks)
        alt.append(f"base: pass@k {describe_range(mean)}")
    found = sorted({as_float(k) for _, _, k in crossings if isinstance(k, (int, float))})
    for k in found:
        ax.axvline(k, color="#555555", linestyle=":", linewidth=1)
        n = sum(1 for _, _, kk in crossings if isinstance(kk, (int, float)) and as_float(kk) == k)
        ax.annotate(f"k*={fmt(k)} ({n})", (k, 0.02), xytext=(3, 0), textcoords="offset points", fontsize=7,
                    rotation=90, va="bottom")
    if not all_k:
        raise ValueError("no pass@k values in passk.json")
    ax.set_xscale("log", base=2)
    ax.set_xlim(min(all_k) / 1.4, max(all_k) * 1.4)  # k* at the smallest k stays off the y-axis
    ax.set_ylim(-0.02, 1.02)
    ax.set(title="mean over seeds; band: seeds' bootstrap intervals", xlabel="k (samples per problem)",
           ylabel="pass@k")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    cross_text = crossover_summary(crossings)
    return render(fig, title="pass@k: the base against each arm, with the crossover",
                  alt="Line chart of pass@k against k (log axis) for the base (dashed) and each arm, with shaded "
                      "intervals: " + "; ".join(alt) + f". Crossover k* per pair: {cross_text}.",
                  provenance=f"passk.json of {len(have)} pair(s): unbiased estimator 1 − C(n−c,k)/C(n,k) with "
                             "bootstrap intervals over problems (SPEC §7); per arm the mean over seeds, the band from "
                             "the lowest to the highest seed interval; dotted: crossover k* (base above the tuned "
                             f"model from k* on), count of pairs in brackets. {cross_text}. After Yue et al., Fig. 1.")


def crossover_summary(crossings: list[tuple[str, str, object]]) -> str:
    """Per group, the crossover k* of each pair ('none' where the base never overtakes)."""
    parts = []
    for g in dict.fromkeys(g for g, _, _ in crossings):
        ks = [k for gg, _, k in crossings if gg == g]
        texts = [fmt(k) if isinstance(k, (int, float)) else "none" for k in ks]
        parts.append(f"{g}: {'none' if set(texts) == {'none'} else 'k* = ' + ', '.join(texts)}")
    return "crossover " + "; ".join(parts)


# --------------------------------------------------------------------------- 4: pass@1 gain
def _pass1_gain(ctx, have: list[Pair]):
    pairs, groups = ctx
    fig, axes = new_figure(1, 1, width=PANEL[0], height=PANEL[1])
    ax = axes[0][0]
    names, alt = [], []
    for x, (g, members) in enumerate(_by_group(have, groups)):
        gains = []
        for p in members:
            base, tuned, _ = _base_and_tuned_curves(p)
            if 1.0 in base and 1.0 in tuned:
                gains.append(tuned[1.0][0] - base[1.0][0])
        gains = [v for v in gains if math.isfinite(v)]
        if not gains:
            continue
        names.append(g)
        color = group_color(pairs, g)
        ax.bar(len(names) - 1, statistics.fmean(gains), color=color, alpha=0.6, width=0.6)
        ax.scatter([len(names) - 1] * len(gains), gains, color=color, edgecolors="black", linewidths=0.5, zorder=3,
                   s=18)
        alt.append(f"{g}: mean {fmt(statistics.fmean(gains))} over {len(gains)} seed(s)")
    if not names:
        raise ValueError("no pass@1 for both base and tuned in passk.json")
    ax.axhline(0, color="#333333", linewidth=0.8)
    ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
    ax.set(title="bar: mean over seeds; dots: each seed", xlabel="arm (reward)", ylabel="pass@1 − base pass@1")
    ax.grid(alpha=0.3, axis="y")
    return render(fig, title="pass@1 gain over the base by arm: real against random reward",
                  alt="Bar chart of each arm's pass@1 minus the base's, with one dot per seed: " + "; ".join(alt) + ".",
                  provenance=f"passk.json k = 1 of {len(have)} pair(s) (tuned − base on the same problems, SPEC §7); "
                             "an arm trained on a random reward (the lab's grpo-random) beside the real reward; "
                             "after Spurious Rewards, Fig. 1.")


# --------------------------------------------------------------------------- 5: forgetting vs KL
def _forgetting(ctx, doc: dict, claims: dict):
    import numpy as np

    pairs, groups = ctx
    rows = [m for m in doc.get("models") or [] if isinstance(m, dict)]
    fig, axes = new_figure(1, 1, width=PANEL[0], height=PANEL[1])
    ax = axes[0][0]
    arms = sorted({g for g in groups}, key=len, reverse=True)
    xs_all, ys_all, alt = [], [], []
    seen = set()
    for m in rows:
        x, y = as_float(m.get("kl")), as_float(m.get("accuracy_drop"))
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        name = str(m.get("model"))
        g = next((a for a in arms if name == a or name.startswith(f"{a}-seed")), name)
        color = group_color(pairs, g) if g in groups else "#7f7f7f"
        ax.scatter([x], [y], color=color, edgecolors="black", linewidths=0.4, s=28, label=g if g not in seen else None,
                   zorder=3)
        seen.add(g)
        xs_all.append(x)
        ys_all.append(y)
        alt.append(f"{name}: KL {fmt(x)}, drop {fmt(y)}")
    if len(xs_all) < 1:
        raise ValueError("no finite (kl, accuracy_drop) in forgetting.json")
    fit = ""
    line = doc.get("fit_accuracy_drop") if isinstance(doc.get("fit_accuracy_drop"), dict) else None
    if line is not None and line.get("r2") is not None and len(xs_all) >= 3:
        # the fit forgetting.json holds (deltalens.behavior.evaluate.linear_fit on these points), not a second one
        slope, intercept = float(line["slope"]), float(line["intercept"])
        r = math.copysign(math.sqrt(max(float(line["r2"]), 0.0)), slope)
        grid_x = np.linspace(min(xs_all), max(xs_all), 2)
        ax.plot(grid_x, intercept + slope * grid_x, color="#555555", linestyle="--", linewidth=1,
                label=f"least squares, r = {r:.2f}")
        fit = f"least-squares line over the {line.get('n', len(xs_all))} models (r = {r:.3f}, forgetting.json)"
    claim = next((c for c in (claims or {}).get("claims") or [] if isinstance(c, dict) and c.get("id") == "forgetting_tracks_kl"), None)
    verdict = ""
    if claim and isinstance(claim.get("effect"), dict):
        from deltalens.report.claims_text import effect_text

        verdict = f"; the lab's claim forgetting_tracks_kl: {claim.get('verdict')}, {effect_text(claim['effect'])}"
    ax.axhline(0, color="#999999", linewidth=0.6)
    ax.set(title="one point per model; dashed: least squares", xlabel=f"forward KL ({doc.get('kl', 'nats')})",
           ylabel="held-out accuracy drop")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="arm", title_fontsize=7)
    return render(fig, title="Forgetting against forward KL",
                  alt="Scatter plot of the drop in held-out accuracy against the forward KL from the base, one point "
                      "per tuned model: " + "; ".join(alt) + ".",
                  provenance=f"forgetting.json (held-out tasks {', '.join(map(str, doc.get('tasks') or [])) or '?'}, "
                             f"KL {doc.get('kl', '?')} against {doc.get('base', 'the base')}); {fit or 'too few points for a fit'}"
                             f"{verdict}; after RL's Razor, Fig. 1.")
