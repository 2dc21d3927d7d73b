"""CLI commands of the `diff` area: ``diff``, ``overlap``, ``demo``. Import only typer and the
standard library here; the library is imported inside the command bodies."""

from __future__ import annotations

from typing import Optional

import typer

from deltalens.cli.common import Device, command, out_option


def _pct(x) -> str:
    from deltalens.numbers import pct

    return pct(x)


def _num(x, fmt=None) -> str:
    from deltalens.numbers import fmt as number

    return number(float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x)


#: Terminal width the diff table is fitted to when stdout is not a terminal.
TABLE_WIDTH = 100
#: Summary columns in the order they are kept when the table must drop some to fit:
#: (summary key, header, kind). The first four are always shown.
DIFF_COLUMNS = (
    ("module", "module", "text"), ("tensors", "tensors", "int"), ("numel", "params", "int"),
    ("unchanged_bitwise", "unch. bitwise", "pct"), ("visible_fraction", "bf16 vis.", "pct"),
    ("angle_max_left_deg_max", "max ∠L°", "angle"), ("nss_mean", "NSS", "num"),
    ("rescale_share_energy_weighted", "rescale", "num"), ("rescale_ratio_energy_weighted", "resc./rand.", "num"),
    ("nonfinite", "NaN/Inf", "int"), ("unchanged_relative", "unch. rel", "pct"), ("tolerances", "", "pct"),
    ("delta_rel_mean", "‖Δ‖/‖W0‖", "num"), ("stable_rank_mean", "st. rank", "num"),
    ("effective_rank_mean", "eff. rank", "num"), ("rank1_share_mean", "σ1² share", "num"),
    ("angle_max_right_deg_max", "max ∠R°", "angle"),
)
ALWAYS = 4


def diff_table_rows(result) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, rows, dropped headers) of the per-module summary, fitted to the terminal.

    Values use the report's number format (3 significant digits, scientific notation below 1e-3);
    an angle cell ends in ``*`` when tensors of that module were unresolved by the fast route (left
    out) and in ``†`` when some are gap-limited (Wedin bound > 1, the angle is ill-posed)."""
    s = result.summary
    by_module = s.get("by_module", {})
    from deltalens.weights.aggregate import ordered_modules

    groups = [(m, by_module[m]) for m in ordered_modules(by_module)] + [("all", s)]
    columns = []
    for key, header, kind in DIFF_COLUMNS:
        if key == "tolerances":
            columns += [(("unchanged_absolute", k), f"unch. ≤{k}", "pct") for k in (s.get("unchanged_absolute") or {})]
        elif key in ("module", "tensors", "numel") or key in s:
            columns.append((key, header, kind))

    def cell(name, agg, key, kind):
        if key == "module":
            return name
        value = agg.get(key[0], {}).get(key[1]) if isinstance(key, tuple) else agg.get(key)
        if kind == "int":
            return f"{value:,}" if isinstance(value, int) else _num(value if value is not None else 0)
        if kind == "pct":
            return _pct(value)
        text = _num(value)
        if kind == "angle" and value is not None:
            text += ("*" if agg.get("angles_unresolved") else "") + ("†" if agg.get("angles_gap_limited") else "")
        return text

    table = [[cell(name, agg, key, kind) for key, _, kind in columns] for name, agg in groups]
    headers = [h for _, h, _ in columns]
    width = _terminal_width()
    keep, used = [], 2  # the table's edges
    for j, header in enumerate(headers):
        need = max(len(header), *(len(r[j]) for r in table)) + 3  # padding 1 + 1 and the column separator
        if j < ALWAYS or used + need <= width:
            keep.append(j)
            used += need
    dropped = [headers[j] for j in range(len(headers)) if j not in keep]
    return [headers[j] for j in keep], [[r[j] for j in keep] for r in table], dropped


def _terminal_width() -> int:
    """$COLUMNS, else the terminal's width, else :data:`TABLE_WIDTH` (output to a file or pipe)."""
    import shutil

    return shutil.get_terminal_size((TABLE_WIDTH, 24)).columns


def render_diff(result, title: str | None = None) -> None:
    """Print the per-module summary table of a DiffResult (fitted to the terminal, at most
    :data:`TABLE_WIDTH` columns when not a terminal) and its notes."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from deltalens.weights.plots import short_paths

    console = Console(width=_terminal_width(), soft_wrap=False)
    s = result.summary
    headers, rows, dropped = diff_table_rows(result)
    table = Table(title=title or short_paths(f"{result.tuned} vs {result.base}"), title_justify="left",
                  box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for h in headers:
        table.add_column(h, justify="left" if h == "module" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row, style="bold" if row[0] == "all" else None)
    console.print(table)
    if dropped:
        console.print(f"not shown at this width: {', '.join(dropped)} (diff.json, tensors.parquet and --report hold them)")
    console.print("unchanged fractions: bitwise / relative (η={}) / absolute; stored dtypes: {}; rank: {}".format(
        result.options["eta"], ", ".join(sorted({r["dtype"] for r in result.rows})), result.options["methods"]["rank"]
        if "rank" in result.options["metrics"] else "not computed"))
    if s.get("angles_unresolved") or s.get("angles_gap_limited"):
        console.print("angle markers: * some tensors of the module unresolved (left out), † some gap-limited (ill-posed)")
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

    @command(app, "diff")
    def diff(
        base: str = typer.Argument(..., help="Base checkpoint: HF folder, .safetensors file or hub id."),
        tuned: str = typer.Argument(..., help="Tuned checkpoint, or a PEFT LoRA adapter folder."),
        out: str = out_option("Output folder (diff.json, tensors.parquet, resume cache)."),
        metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated groups (default all): sparsity,size,rank,spectral,frame."),
        tol: Optional[list[float]] = typer.Option(None, "--tol", metavar="FLOAT", help="Absolute tolerance (repeatable; default 1e-5)."),
        eta: float = typer.Option(1e-3, "--eta", help="Relative rule's η."),
        visible_dtype: Optional[str] = typer.Option(None, "--visible-dtype", help="'bf16': report bf16 visibility of the update."),
        top_k: Optional[list[float]] = typer.Option(None, "--subspace-k", metavar="K", help="k of the top-k singular subspaces for the spectral/frame groups (int or fraction of min(m, n); repeatable)."),
        exact: bool = typer.Option(False, "--exact", help="Exact float64 SVDs for rank and spectral measures (slow; the reference for fast mode)."),
        device: Device = "auto",
        allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Read .bin/.pt with torch.load(weights_only=True)."),
        plots: bool = typer.Option(False, "--plots", help="Write per-layer PNG/SVG plots (angles, sparsity, NSS, rescale share) to OUT."),
        report: bool = typer.Option(False, "--report", help="Write a self-contained OUT/report.html."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a diff of other inputs or options already in OUT (without it: an error; the same run resumes)."),
    ) -> None:
        """Stream two checkpoints and report where, and how much, the fine-tune changed them."""
        from deltalens.models import resolve_device
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
                         top_k=top_k, exact=exact, device=resolve_device(device), allow_pickle=allow_pickle, progress=not quiet,
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

    @command(app, "overlap")
    def overlap(
        base: str = typer.Argument(..., help="Base checkpoint shared by the runs."),
        runs: list[str] = typer.Argument(..., help="Two or more tuned checkpoints (or LoRA adapters) from BASE."),
        out: str = out_option("Output folder (overlap.json, overlap.parquet)."),
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

    @command(app, "demo")
    def demo(
        out: str = typer.Option("runs/demo", "-o", "--out", help="Output folder for the demo checkpoints and results."),
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
