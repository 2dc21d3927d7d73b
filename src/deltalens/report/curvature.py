"""The curvature-level section: Hessian, Gauss-Newton and eNTK top eigenpairs (SPEC §9), the links
between them against random subspaces, their share in the weights' principal subspaces, and for a
pair how far the fine-tune rotated each operator's top subspace."""

from __future__ import annotations

import math

from deltalens.report.html import Section, absent, figure_or_note, fmt, heading, html, paragraph, table
from deltalens.report.aggregate import mean
from deltalens.report.inputs import as_float
from deltalens.report.plotting import describe_range, finish_log_panel, finite_xy, panels, render

KINDS = ("hessian", "gauss_newton", "entk_weighted", "entk_logits", "entk_logprob")
NAMES = {"hessian": "H", "gauss_newton": "G", "entk_weighted": "weighted logit eNTK", "entk_logits": "logit eNTK",
         "entk_logprob": "log-prob eNTK"}
NAME = "curvature.json"


def build(pairs: list) -> Section:
    """The section over ``pairs`` (one column each)."""
    section = Section(
        "curvature", "Curvature level",
        "The seed's chain (SPEC §9): near an interpolating minimum the Hessian H ≈ its Gauss-Newton part G, whose "
        "nonzero eigenpairs are the loss-weighted logit eNTK's; so H, G and eNTK top eigenvectors should agree "
        "(angles well below the random ~90°) and lie in the weights' top singular subspaces above chance. For a pair: "
        "re-weighting fixed eigenvectors (propensity) against rotating them (lability).")
    have = [(i, p) for i, p in enumerate(pairs) if isinstance(p.data.get(NAME), dict)]
    bad = [f"{p.label}: {p.unreadable[NAME]}" for p in pairs if NAME in p.unreadable]
    if bad:
        section.add(absent(html("<code>{}</code> unreadable for {}.", NAME, "; ".join(bad))))
    if not have:  # an optional, slower analysis: its absence is not a gap in the other levels' evidence
        section.add(paragraph(html("No input has <code>{}</code>; produce it with <code>{}</code> (on a large model "
                                   "<code>--operators gauss_newton</code>).", NAME,
                                   "deltalens curvature BASE TUNED --probes PROBES.jsonl --out DIR")))
        return section
    docs = [p.data[NAME] for _, p in have]
    labels = [p.label for _, p in have]
    section.add(_spectra_table(docs, labels))
    section.add(heading("Eigen-spectra of the computed operators"))
    section.add(figure_or_note(_spectra_plot, have))
    section.add(_links_table(docs, labels))
    if any(isinstance(d.get("pair"), dict) for d in docs):
        section.add(heading("Base → tuned"))
        section.add(_pair_table(docs, labels))
    return section


def operators(doc: dict) -> list[str]:
    """The operators a curvature.json holds (``operators``, or every kind with a spectrum)."""
    listed = doc.get("operators")
    if isinstance(listed, list):
        return [k for k in KINDS if k in listed and isinstance(doc.get(k), dict)]
    return [k for k in KINDS if isinstance(doc.get(k), dict)]


def _values(doc: dict, kind: str) -> list[float]:
    return [as_float(v) for v in ((doc.get(kind) or {}).get("eigenvalues") or [])]


def _mean(values) -> float:
    """Mean of a JSON list's finite numbers (:func:`deltalens.report.aggregate.mean`)."""
    return mean(as_float(v) for v in values or [])


def _row(label: str, items: list, text) -> list[str]:
    """A table row: ``label``, then ``text(item)`` per column, "—" where the item is None."""
    return [label, *("—" if item is None else text(item) for item in items)]


def _spectra_table(docs, labels) -> str:
    rows = [_row("probes", docs, lambda d: fmt(d.get("n_probes"))), _row("parameters", docs, lambda d: fmt(d.get("n_params"))),
            _row("top r", docs, lambda d: fmt(d.get("top"))), _row("outputs z", docs, lambda d: str(d.get("vocab", "—"))),
            _row("G's route", docs, lambda d: str((d.get("gauss_newton") or {}).get("route", "—")))]
    for kind in KINDS:
        spectra = [d.get(kind) if kind in operators(d) else None for d in docs]
        if all(s is None for s in spectra):
            continue
        rows += [_row(f"{NAMES[kind]}: λ1 … λr", spectra,
                      lambda s: f"{fmt(as_float(s['eigenvalues'][0]))} … {fmt(as_float(s['eigenvalues'][-1]))}"
                      if s.get("eigenvalues") else "—"),
                 _row(f"{NAMES[kind]}: max residual", spectra,
                      lambda s: fmt(max((as_float(r) for r in s.get("residuals") or []), default=math.nan))),
                 _row(f"{NAMES[kind]}: error bound (°)", spectra, lambda s: fmt(s.get("subspace_error_bound_deg")))]
    return table(["quantity", *labels], rows,
                 caption="Top eigenpairs by Lanczos (one column per folder; for a pair, the base's). Residual ‖Av − λv‖ "
                         "in each operator's own space; error bound: Davis–Kahan, the largest angle between the computed "
                         "and the true top-r eigenspace (90° when λr does not separate from λr+1). Kernel eigenvalues are "
                         "on all probes: the weighted eNTK's are n × G's.")


def _links_table(docs, labels) -> str:
    keys = list(dict.fromkeys(k for d in docs for k in (d.get("angles_deg") or {})))
    rows = []
    for key in keys:
        a, b = key.split("_vs_")
        links = [(d["angles_deg"][key], (d.get("angles_baseline_deg") or {}).get(key))
                 if key in (d.get("angles_deg") or {}) else None for d in docs]
        rows.append(_row(f"{NAMES.get(a, a)} vs {NAMES.get(b, b)}: mean angle (°)", links,
                         lambda link: f"{fmt(_mean(link[0]))} (random {fmt(_mean(link[1]))})"))
    for kind in KINDS:
        shares = [s if isinstance(s, dict) and s.get("pooled") else None
                  for s in ((d.get("pp_share") or {}).get(kind) for d in docs)]
        if any(s is not None for s in shares):
            rows.append(_row(f"{NAMES[kind]}: PP share of top directions", shares, _pp_text))
    return table(["link", *labels], rows,
                 caption="Principal angles between the top-r subspaces of two operators (mean over the r angles) against "
                         "two random r-dimensional subspaces; PP share: the top directions' energy in each weight matrix's "
                         "top-k singular subspaces (SPEC §5, pooled over matrices, mean over directions), and its ratio to "
                         "the random k²/mn. Angles are resolved only above the two error bounds' sum.")


def _pp_text(share: dict) -> str:
    value, base = _mean(share["pooled"]), _mean(share.get("pooled_baseline"))
    return f"{fmt(value)} ({fmt(value / base) if base > 0 else '—'}× random)"


def _change(row: dict, key: str) -> str:
    change = row.get("curvature_change")
    return fmt(change.get(key)) if isinstance(change, dict) else "—"


def _pair_table(docs, labels) -> str:
    rows = []
    for kind in KINDS:
        pair_rows = [r if isinstance(r, dict) else None
                     for r in (((d.get("pair") or {}).get("model") or {}).get(kind) for d in docs)]
        if all(r is None for r in pair_rows):
            continue
        rows.append(_row(f"{NAMES[kind]}: max / mean angle (°)", pair_rows,
                         lambda r: f"{fmt(max((as_float(a) for a in r.get('angles_deg') or []), default=math.nan))} / "
                                   f"{fmt(_mean(r.get('angles_deg')))} (random {fmt(_mean(r.get('angles_baseline_deg')))})"))
        if kind in ("hessian", "gauss_newton"):
            rows.append(_row(f"{NAMES[kind]}: rotation bound (°)", pair_rows, lambda r: _change(r, "rotation_bound_deg")))
            rows.append(_row(f"{NAMES[kind]}: rescale share", pair_rows, lambda r: _change(r, "rescale_share")))
        rows.append(_row(f"{NAMES[kind]}: update share", pair_rows,
                         lambda r: fmt((r.get("update_share") or {}).get("share"))))
        rows.append(_row(f"{NAMES[kind]}: log λ1 drift", pair_rows,
                         lambda r: fmt(((r.get("eigenvalue_drift") or {}).get("log_ratio") or [None])[0])))
    return table(["operator", *labels], rows,
                 caption="How far the fine-tune moved each operator's top-r subspace: principal angles base → tuned against "
                         "random; rotation bound: Davis–Kahan from the curvature change along the base's directions and "
                         "the gap (a measured rotation is at most this plus the tuned run's error bound); rescale share: "
                         "the part of that change that re-weights the base's eigenvectors (propensity; random 2/(P+1)); "
                         "update share: ‖V0ᵀΔθ‖²/‖Δθ‖² (random r/P).")


def _spectra_plot(have):
    fig, cells = panels(len(have))
    colors = {"hessian": "#1b6ca8", "gauss_newton": "#c0392b", "entk_weighted": "#7f8c8d", "entk_logits": "#27ae60",
              "entk_logprob": "#8e44ad"}
    alt = []
    for ax, (_, pair) in zip(cells, have):
        doc = pair.data[NAME]
        for side, style, source in (("base", "-", doc), ("tuned", "--", doc.get("tuned"))):
            if not isinstance(source, dict):
                continue
            for kind in operators(source):
                ev = [abs(v) for v in _values(source, kind)]
                if not ev or not ev[0] > 0:
                    continue
                xs, ys = finite_xy(range(1, len(ev) + 1), [v / ev[0] for v in ev])
                ax.plot(xs, ys, linestyle=style, marker=".", color=colors[kind],
                        label=f"{NAMES[kind]} ({side})")
                alt.append(f"{pair.label} {side} {NAMES[kind]}: {describe_range(ev)}")
        finish_log_panel(ax, title=pair.label, xlabel="index (descending |λ|)", ylabel="|λ_i| / |λ_1| (log)",
                         legend_size=7)
    return render(fig, title="Top eigenvalues of each operator relative to its largest, base (solid) and tuned (dashed)",
                  alt="Log-scale line charts of |λ_i|/|λ_1| for each computed operator, one panel per folder: "
                      + "; ".join(alt) + ".",
                  provenance="curvature.json eigenvalues (and tuned.*.eigenvalues for a pair).")
