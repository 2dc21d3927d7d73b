"""The behaviour-level section: pass@k with intervals and crossover, support, entropy and KL."""

from __future__ import annotations

import math

from deltalens.report.html import Section, figure_or_note, fmt, heading, missing_notes, paragraph, table
from deltalens.report.inputs import Run, as_float
from deltalens.report.plotting import describe_range, figure_legend, finite_xy, new_figure, render

SUPPORT_CLASSES = (("P", "both solve", "#2ca02c"), ("E", "tuned only (expansion)", "#1f77b4"),
                   ("S", "base only (shrinkage)", "#d62728"), ("O", "neither", "#c7c7c7"))


def build(runs: list) -> Section:
    """The section over the pairs ``runs`` (:class:`~deltalens.report.pairs.Pair`, one column each)."""
    section = Section(
        "behaviour", "Behaviour level",
        "What the models do (SPEC §7): pass@k with bootstrap intervals and the k where the base overtakes the "
        "tuned model, whether the tuned model stays inside the base's support, and how far its output "
        "distribution moved (KL, entropy, cross-perplexity).")
    parts = (
        ("pass@k", "passk.json", "pass@k curves", "deltalens passk S_BASE.jsonl S_TUNED.jsonl --out DIR",
         _passk_plot, _passk_table),
        ("Support: does the tuned model stay inside the base's reach?", "support.json", "support counts",
         "deltalens support S_BASE.jsonl S_TUNED.jsonl --out DIR", _support_plot, _support_table),
        ("Output distribution: KL, entropy, cross-perplexity", "divergence.json", "KL and entropy results",
         "deltalens divergence BASE TUNED --problems P.jsonl --out DIR", _divergence_plot, _divergence_table),
    )
    for title, name, what, command, plot, summary in parts:
        section.add(heading(title))
        missing_notes(section, runs, name, what, command)
        have = [(i, r) for i, r in enumerate(runs) if name in r.data]
        if have:
            section.add(figure_or_note(plot, have))
            section.add(summary(have))
    section.add(paragraph("Forgetting (held-out accuracy against forward KL) is drawn at the top of the page when the "
                          "lab's forgetting.json is present.", "intro"))
    return section


def _models(run: Run) -> dict[str, dict]:
    models = (run.get("passk.json") or {}).get("models")
    return {str(k): v for k, v in models.items() if isinstance(v, dict)} if isinstance(models, dict) else {}


def _passk_plot(have):
    fig, axes = new_figure(1, 1, width=8, height=4.2)
    ax = axes[0][0]
    seen: dict[str, tuple] = {}
    alt, counts = [], []
    for i, run in have:
        for j, (name, m) in enumerate(_models(run).items()):
            ks = [as_float(k) for k in m.get("k") or []]
            ys = [as_float(v) for v in m.get("pass_at_k") or []]
            lo = [as_float(v) for v in m.get("ci_low") or []]
            hi = [as_float(v) for v in m.get("ci_high") or []]
            signature = (tuple(ks), tuple(ys))
            if seen.get(name) == signature:
                continue  # the same base model shared by several runs: draw it once
            label = name if name not in seen else f"{name} ({run.label})"
            seen[name] = signature
            xs, yv = finite_xy(ks, ys)
            is_base = name == (run.get("passk.json").get("crossover") or {}).get("base")
            color = "#444444" if is_base else run.color
            ax.plot(xs, yv, marker="o", markersize=3, linestyle="--" if is_base else run.dash, color=color, label=label)
            if len(lo) == len(ks) == len(hi):
                band = [(k, a, b) for k, a, b in zip(ks, lo, hi) if math.isfinite(a) and math.isfinite(b)]
                ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band], color=color, alpha=0.15)
            alt.append(f"{label}: pass@k {describe_range(yv)} over k {describe_range(xs)}")
            counts.append(f"{label}: {m.get('n_problems', '?')} problems, n_min {m.get('n_min', '?')}")
        cross = (run.get("passk.json").get("crossover") or {})
        if isinstance(cross.get("k"), (int, float)):  # named in the caption, not the legend
            ax.axvline(cross["k"], color=run.color, linestyle=":", alpha=0.8)
    ax.set_xscale("log", base=2)
    all_k = [as_float(k) for _, r in have for m in _models(r).values() for k in m.get("k") or []]
    all_k = [k for k in all_k if k > 0]
    if all_k:
        ax.set_xlim(min(all_k) / 1.4, max(all_k) * 1.4)  # a crossover at the smallest k stays off the y-axis
    ax.set_ylim(-0.02, 1.02)
    ax.set(title="Mean over problems, shaded: bootstrap interval", xlabel="k (samples per problem, log scale)", ylabel="pass@k")
    ax.grid(alpha=0.3, which="both")
    figure_legend(fig, *ax.get_legend_handles_labels(), title="model")
    crossings = "; ".join(f"{r.label}: " + _crossover_text(r) for _, r in have)
    return render(fig, title="pass@k with intervals",
                  alt="Line chart of pass@k against k on a log axis, one line per model with a shaded interval: "
                      + "; ".join(alt) + f". Crossover: {crossings}.",
                  provenance=f"passk.json of {', '.join(r.label for _, r in have)}; {_passk_method(have)}; "
                             f"{'; '.join(counts)}; crossover {crossings}.")


def _passk_method(have) -> str:
    """The estimator and interval as the files state them (SPEC §7's defaults when they do not)."""
    texts = []
    for _, run in have:
        method = run.get("passk.json").get("method")
        if isinstance(method, dict):
            text = "; ".join(str(v) for v in (method.get("estimator"), method.get("ci")) if v)
        else:
            text = str(method) if method else ""
        text = text or "unbiased estimator 1 − C(n−c,k)/C(n,k) (SPEC §7), bootstrap intervals over problems"
        if text not in texts:
            texts.append(text)
    return " | ".join(texts)


def _crossover_text(run: Run) -> str:
    cross = (run.get("passk.json") or {}).get("crossover") or {}
    if not cross:
        return "not recorded"
    k = cross.get("k")
    where = f"at k = {k}" if k is not None else f"nowhere ({cross.get('reason') or 'no crossing within the measured k'})"
    rule = f" (rule: {cross['rule']})" if cross.get("rule") else ""
    return f"{cross.get('base', '?')} overtakes {cross.get('tuned', '?')} {where}{rule}"


def _passk_table(have) -> str:
    all_k: list[float] = sorted({as_float(k) for _, r in have for m in _models(r).values() for k in m.get("k") or []})
    rows = []
    drawn: dict[tuple, list] = {}
    for _, run in have:
        for name, m in _models(run).items():
            signature = (name, repr(m.get("k")), repr(m.get("pass_at_k")), repr(m.get("ci_low")), repr(m.get("ci_high")))
            if signature in drawn:  # the same base scored for several pairs: one row, naming them all
                drawn[signature].append(run.label)
                continue
            drawn[signature] = [run.label]
            lookup = {as_float(k): (y, lo, hi) for k, y, lo, hi in
                      zip(m.get("k") or [], m.get("pass_at_k") or [], m.get("ci_low") or [], m.get("ci_high") or [])}
            cells = [signature, fmt(m.get("n_problems")), fmt(m.get("n_min"))]
            for k in all_k:
                y = lookup.get(k)
                cells.append(f"{fmt(as_float(y[0]))} [{fmt(as_float(y[1]))}, {fmt(as_float(y[2]))}]" if y else "—")
            rows.append(cells)
    for cells in rows:
        name, labels = cells[0][0], drawn[cells[0]]
        cells[0] = f"{labels[0]}: {name}" if len(labels) == 1 else f"{name} (the same for {len(labels)} pairs)"
    return table(["pair: model", "problems", "n_min", *[f"k={fmt(k) if not float(k).is_integer() else int(k)}" for k in all_k]],
                 rows, caption="pass@k [bootstrap interval]; k only up to the smallest per-problem sample count n_min.")


def _support_plot(have):
    fig, axes = new_figure(1, 1, width=8, height=1.4 + 0.6 * len(have))
    ax = axes[0][0]
    labels, alt = [], []
    for row, (_, run) in enumerate(have):
        doc = run.get("support.json")
        counts = doc.get("counts") or {}
        total = sum(as_float(counts.get(c)) for c, _, _ in SUPPORT_CLASSES if math.isfinite(as_float(counts.get(c))))
        left = 0.0
        for cls, name, color in SUPPORT_CLASSES:
            v = as_float(counts.get(cls))
            v = v if math.isfinite(v) else 0.0
            share = v / total if total else 0.0
            ax.barh(row, share, left=left, color=color, label=f"{cls}: {name}" if row == 0 else None)
            if share > 0.06:
                ax.text(left + share / 2, row, f"{cls} {int(v)}", ha="center", va="center", fontsize=8)
            left += share
        labels.append(f"{run.label} (k={doc.get('k', '?')})")
        alt.append(f"{run.label}: " + ", ".join(f"{c}={counts.get(c, '?')}" for c, _, _ in SUPPORT_CLASSES))
    ax.set_yticks(range(len(have)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set(title="Share of problems per class at budget k", xlabel="fraction of problems", ylabel="pair")
    handles, names = ax.get_legend_handles_labels()
    figure_legend(fig, handles, names, title="class")
    return render(fig, title="Support classes P / E / S / O",
                  alt="Stacked horizontal bars of the share of problems both models solve (P), only the tuned model "
                      "solves (E), only the base solves (S), neither (O): " + "; ".join(alt) + ".",
                  provenance=f"support.json of {', '.join(r.label for _, r in have)}; classes by verified final answer at budget k "
                             f"(Invisible Leash, SPEC §7); "
                             + "; ".join(f"{r.label}: {len(r.get('support.json').get('problems') or [])} problems, k={r.get('support.json').get('k', '?')}"
                                         for _, r in have) + ".")


def _columns(have, quantities) -> list[list[object]]:
    """Rows of a quantity × pair table: [label, value per pair] for each (label, function of the pair)."""
    return [[label, *(fn(run) for _, run in have)] for label, fn in quantities]


def _support_table(have) -> str:
    def count(c):
        return lambda run: fmt((run.get("support.json").get("counts") or {}).get(c))

    def field(name):
        return lambda run: fmt(run.get("support.json").get(name))

    quantities = [("k", field("k")), *((f"{c}: {name}", count(c)) for c, name, _ in SUPPORT_CLASSES),
                  ("SRR = P/(P+S)", field("SRR")), ("NDR = E/(P+E)", field("NDR")), ("SDS", field("SDS")),
                  ("NSCR = (E−S)/(P+E+S)", field("NSCR")), ("ε = ln(1/0.05)/k", field("epsilon"))]
    return table(["quantity", *(run.label for _, run in have)], _columns(have, quantities),
                 caption="Support classes at budget k, one column per pair; SDS is the harmonic mean of SRR and NDR "
                         "(SPEC §7). Published RL values: SRR 0.93–0.99, NSCR −0.01 to −0.06.")


def _get(doc: dict, *path: str) -> float:
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return as_float(doc)


#: The divergence figure's panels: (title, y label, [(bar label, path in divergence.json)]).
DIVERGENCE_PANELS = (
    ("KL per token", "KL (nats per token)", (("forward KL(π0‖π1)", ("forward_kl", "token_mean")),
                                             ("reverse KL(π1‖π0)", ("reverse_kl", "token_mean")))),
    ("KL per sequence", "KL (nats per sequence)", (("forward KL(π0‖π1)", ("forward_kl", "sequence_mean")),
                                                   ("reverse KL(π1‖π0)", ("reverse_kl", "sequence_mean")))),
    ("Next-token entropy", "entropy (nats per token)", (("base", ("entropy", "base", "token")),
                                                        ("tuned", ("entropy", "tuned", "token")))),
    ("Final-answer entropy", "entropy (nats per answer)", (("base", ("entropy", "base", "answer")),
                                                           ("tuned", ("entropy", "tuned", "answer")))),
)


def _divergence_plot(have):
    fig, axes = new_figure(2, 2, width=10, height=6.4)
    labels = [run.label for _, run in have]
    alt = []
    for idx, (title, ylabel, bars) in enumerate(DIVERGENCE_PANELS):
        ax = axes[idx // 2][idx % 2]
        for b, (name, path) in enumerate(bars):
            values = [_get(run.get("divergence.json"), *path) for _, run in have]
            ax.bar([x + (b - 0.5) * 0.4 for x in range(len(have))], [v if math.isfinite(v) else 0 for v in values],
                   width=0.4, color=[run.color for _, run in have], alpha=1.0 if b == 0 else 0.45,
                   hatch="" if b == 0 else "//", edgecolor="#333333", linewidth=0.4, label=name)
            alt.append(f"{title}, {name}: {describe_range(values)}")
        ax.set_xticks(range(len(have)), labels, rotation=30 if len(have) > 2 else 0,
                      ha="right" if len(have) > 2 else "center", fontsize=7)
        ax.set(title=title, xlabel="pair", ylabel=ylabel)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    details = "; ".join(f"{r.label}: {r.get('divergence.json').get('n_prompts', '?')} prompts × "
                        f"{r.get('divergence.json').get('n_samples', '?')} samples" for _, r in have)
    methods = sorted({str(r.get("divergence.json").get("method", "?")) for _, r in have})
    return render(fig, title="How far the output distribution moved",
                  alt="Four bar charts, one pair per bar group: KL per token and per sequence (forward solid, reverse "
                      "hatched), next-token and final-answer entropy (base solid, tuned hatched): " + "; ".join(alt) + ".",
                  provenance=f"divergence.json of {len(have)} pair(s); {details}; method: {' | '.join(methods)}; "
                             "forward KL along sequences sampled from the base, reverse from the tuned model (SPEC §7).")


def _divergence_table(have) -> str:
    def value(*path):
        return lambda run: fmt(_get(run.get("divergence.json"), *path))

    quantities = [("prompts", lambda r: fmt(r.get("divergence.json").get("n_prompts"))),
                  ("samples per prompt", lambda r: fmt(r.get("divergence.json").get("n_samples"))),
                  ("forward KL, nats/token", value("forward_kl", "token_mean")),
                  ("forward KL, nats/sequence", value("forward_kl", "sequence_mean")),
                  ("reverse KL, nats/token", value("reverse_kl", "token_mean")),
                  ("reverse KL, nats/sequence", value("reverse_kl", "sequence_mean")),
                  ("entropy base, nats/token", value("entropy", "base", "token")),
                  ("entropy tuned, nats/token", value("entropy", "tuned", "token")),
                  ("entropy base, nats/answer", value("entropy", "base", "answer")),
                  ("entropy tuned, nats/answer", value("entropy", "tuned", "answer")),
                  ("perplexity tuned | base", value("cross_perplexity", "tuned_under_base")),
                  ("perplexity base | tuned", value("cross_perplexity", "base_under_tuned"))]
    methods = sorted({str(r.get("divergence.json").get("method", "?")) for _, r in have})
    return table(["quantity", *(run.label for _, run in have)], _columns(have, quantities),
                 caption="One column per pair. Forward KL = E[KL(π0‖π1)] along sequences sampled from the base; reverse "
                         "likewise from the tuned model; perplexity a | b = perplexity of a's samples under b. Method: "
                         + " | ".join(methods) + ".")
