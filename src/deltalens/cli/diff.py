"""CLI commands of the `diff` area: ``diff``, ``overlap``, ``demo``. Import only typer and the
standard library here; the library is imported inside the command bodies."""

from __future__ import annotations

from typing import Optional

import typer



def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _num(x, fmt=".3g") -> str:
    return "—" if x is None else format(x, fmt)


def render_diff(result, title: str | None = None) -> None:
    """Print the per-module summary table of a DiffResult (and any non-finite warning)."""
    from rich.console import Console
    from rich.table import Table

    from deltalens.weights.aggregate import ordered_modules

    console = Console(width=max(Console().width, 130))
    s = result.summary
    tol_keys = list((s.get("unchanged_absolute") or {}).keys())
    table = Table(title=title or f"{result.tuned} vs {result.base}", title_justify="left")
    for col in ("module", "tensors", "params", "unch. bitwise", "unch. rel"):
        table.add_column(col, justify="right" if col != "module" else "left")
    for k in tol_keys:
        table.add_column(f"unch. ≤{k}", justify="right")
    extra = [("visible_fraction", "bf16 vis."), ("delta_rel_mean", "‖Δ‖/‖W0‖"), ("stable_rank_mean", "st. rank"),
             ("effective_rank_mean", "eff. rank"), ("rank1_share_mean", "σ1² share"),
             ("angle_max_left_deg_max", "max ∠L°"), ("angle_max_right_deg_max", "max ∠R°"), ("nss_mean", "NSS"),
             ("rescale_share_energy_weighted", "rescale"), ("rescale_ratio_energy_weighted", "resc./rand."),
             ("nonfinite", "NaN/Inf")]
    extra = [(k, label) for k, label in extra if k in s]
    for _, label in extra:
        table.add_column(label, justify="right")
    by_module = s.get("by_module", {})
    order = ordered_modules(by_module)
    for name, agg in [(m, by_module[m]) for m in order] + [("all", s)]:
        cells = [name, str(agg["tensors"]), f"{agg['numel']:,}", _pct(agg.get("unchanged_bitwise")),
                 _pct(agg.get("unchanged_relative"))]
        cells += [_pct((agg.get("unchanged_absolute") or {}).get(k)) for k in tol_keys]
        cells += [str(agg.get(k, 0)) if k == "nonfinite" else _pct(agg.get(k)) if k == "visible_fraction"
                  else _num(agg.get(k)) for k, _ in extra]
        table.add_row(*cells, style="bold" if name == "all" else None)
    console.print(table)
    console.print("unchanged fractions: bitwise / relative (η={}) / absolute; stored dtypes: {}; rank: {}".format(
        result.options["eta"], ", ".join(sorted({r["dtype"] for r in result.rows})), result.options["methods"]["rank"]
        if "rank" in result.options["metrics"] else "not computed"))
    if "angle_max_left_deg_max" in s or s.get("angles_unresolved"):
        console.print("max ∠L/∠R: largest principal angle (degrees) between top-k singular subspaces of W0 and W1 at "
                      "the smallest requested k (max over tensors); NSS: normalized spectrum shift (mean over tensors); rescale: "
                      "share of ‖Δ‖² on diag(UᵀΔV) (propensity), pooled weighted by ‖Δ‖²; resc./rand.: that share "
                      "over its equally pooled random baseline (SPEC §4–§5)")
        if s.get("angles_unresolved"):
            names = [r["name"] for r in result.rows if r.get("angles_unresolved")]
            console.print(f"[bold yellow]unresolved:[/] the angles of {s['angles_unresolved']} tensor(s) could not be "
                          f"resolved to 0.01° by the fast route and are left out of every column above "
                          f"({', '.join(names[:6])}{', …' if len(names) > 6 else ''}); --exact computes them")
        if s.get("angles_gap_limited"):
            console.print(f"gap-limited: {s['angles_gap_limited']} tensor(s) have a top-k subspace that ‖Δ‖₂ can "
                          "rotate arbitrarily (Wedin bound ‖Δ‖₂/gap_k > 1): their angles are ill-posed")
    if s.get("nonfinite"):
        bad = [f"{r['name']} ({r['nonfinite']})" for r in result.rows if r.get("nonfinite")]
        console.print(f"[bold red]warning:[/] {s['nonfinite']} non-finite values (NaN/Inf) in: {', '.join(bad[:8])}")
    notes = []
    if result.skipped:
        notes.append(f"skipped {len(result.skipped)} non-float tensor(s)")
    if result.unmatched.get("base_only") or result.unmatched.get("tuned_only"):
        notes.append(f"unmatched: {len(result.unmatched['base_only'])} base-only, "
                     f"{len(result.unmatched['tuned_only'])} tuned-only")
    if result.resized:
        notes.append("vocabulary resize: " + ", ".join(f"{r['name']} compared on {r['compared_rows']} rows" for r in result.resized))
    if result.tied:
        notes.append("tied (analysed once): " + ", ".join(result.tied))
    for n in notes:
        console.print(n)


def _short(path: str) -> str:
    from pathlib import Path

    return Path(path).name or path


def render_overlap(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"update-mask overlap (runs from {result['base']})", title_justify="left")
    for col in ("a", "b", "o1", "baseline", "o2", "baseline", "Jaccard", "baseline"):
        table.add_column(col, justify="left" if col in ("a", "b") else "right")
    for p in result["pairs"]:
        o = p["overall"]
        table.add_row(_short(p["a"]), _short(p["b"]), _num(o["o1"]), _num(o["o1_baseline"]), _num(o["o2"]), _num(o["o2_baseline"]),
                      _num(o["jaccard"]), _num(o["jaccard_baseline"]))
    Console(width=max(Console().width, 110)).print(table)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app. (Long only because typer declares each command's
    options in its signature; the bodies call the library.)"""

    @app.command()
    def diff(
        base: str = typer.Argument(..., help="Base checkpoint: HF folder, .safetensors file or hub id."),
        tuned: str = typer.Argument(..., help="Tuned checkpoint, or a PEFT LoRA adapter folder."),
        out: str = typer.Option(..., "--out", help="Output folder (diff.json, tensors.parquet, resume cache)."),
        metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated groups (default all): sparsity,size,rank,spectral,frame."),
        tol: Optional[list[float]] = typer.Option(None, "--tol", help="Absolute tolerance (repeatable; default 1e-5)."),
        eta: float = typer.Option(1e-3, "--eta", help="Relative rule's η."),
        visible_dtype: Optional[str] = typer.Option(None, "--visible-dtype", help="'bf16': report bf16 visibility of the update."),
        top_k: Optional[list[float]] = typer.Option(None, "--top-k", help="k for spectral/frame groups (int or fraction; repeatable)."),
        exact: bool = typer.Option(False, "--exact", help="Exact float64 SVDs for rank and spectral measures (slow; the reference for fast mode)."),
        device: str = typer.Option("cpu", "--device", help="'cpu' or 'cuda' for the arithmetic."),
        allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Read .bin/.pt with torch.load(weights_only=True)."),
        plots: bool = typer.Option(False, "--plots", help="Write per-layer PNG/SVG plots (angles, sparsity, NSS, rescale share) to OUT."),
        report: bool = typer.Option(False, "--report", help="Write a self-contained OUT/report.html."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a diff of other inputs or options already in OUT (without it: an error; the same run resumes)."),
    ) -> None:
        """Stream two checkpoints and report where, and how much, the fine-tune changed them."""
        from deltalens.results import check_output_dir
        from deltalens.weights.api import diff as diff_fn

        extra = []
        if plots:
            from deltalens.weights.plots import PLOT_FILES

            extra += PLOT_FILES
        if report:
            extra.append("report.html")
        check_output_dir(out, extra)  # diff.json and its cache are checked by the library
        result = diff_fn(base, tuned, out=out, metrics=metrics, tols=tol, eta=eta, visible_dtype=visible_dtype,
                         top_k=top_k, exact=exact, device=device, allow_pickle=allow_pickle, progress=not quiet,
                         overwrite=overwrite)
        render_diff(result)
        if result.resumed:
            print(f"resumed: {result.resumed} of {len(result.rows)} tensors were taken from an earlier run in {out} "
                  "with the same inputs and options")
        if result.replaced:
            print(f"replaced the earlier diff in {out} (it differed in: {', '.join(result.replaced)})")
        print(f"wrote {out}/diff.json and {out}/tensors.parquet")
        if plots:
            from deltalens.weights.plots import write_diff_plots

            paths = write_diff_plots(result.tensors, out, title=f"{tuned} vs {base}")
            print(f"wrote {len(paths)} plot files to {out}")
        if report:
            from deltalens.report import write_run_report

            print(f"report: {write_run_report(out)}")

    @app.command()
    def overlap(
        base: str = typer.Argument(..., help="Base checkpoint shared by the runs."),
        runs: list[str] = typer.Argument(..., help="Two or more tuned checkpoints (or LoRA adapters) from BASE."),
        out: str = typer.Option(..., "--out", help="Output folder (overlap.json, overlap.parquet)."),
        allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Read .bin/.pt with torch.load(weights_only=True)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        """Pairwise overlap of the runs' update masks (o1, o2, Jaccard, with random baselines)."""
        from deltalens.results import check_output_dir
        from deltalens.weights.api import overlap as overlap_fn

        check_output_dir(out, ["overlap.json", "overlap.parquet"])
        result = overlap_fn(base, *runs, out=out, allow_pickle=allow_pickle, progress=not quiet)
        render_overlap(result)
        print(f"wrote {out}/overlap.json and {out}/overlap.parquet")

    @app.command()
    def demo(
        out: str = typer.Option("runs/demo", "--out", help="Output folder for the demo checkpoints and results."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """Build a tiny base model and SFT-like, RL-like and LoRA fine-tunes in code, then diff them."""
        from deltalens.results import check_output_dir
        from deltalens.demo import run_demo

        check_output_dir(out)
        result = run_demo(out, progress=not quiet)
        for name, r in result["diffs"].items():
            render_diff(r, title=f"{name} vs base  ({out}/{name}-vs-base)")
        render_overlap(result["overlap"])
        print(f"demo checkpoints in {out}/checkpoints; results in {out}")
