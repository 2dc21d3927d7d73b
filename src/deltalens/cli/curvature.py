"""CLI command of the `curvature` area: ``deltalens curvature``. Import only typer and the standard library here."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from deltalens.cli.common import LOADING_OPTIONS, Device, command, device as resolved, loading, out_option, with_options
from deltalens.errors import DeltalensError


def _render(report: dict, pair: dict | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"curvature: {report['n_params']} parameters, {report['n_probes']} probes, top {report['top']}, "
                        f"vocab {report['vocab']}")
    table.add_column("operator")
    table.add_column("λ1")
    table.add_column(f"λ{report['top']}")
    table.add_column("max residual")
    table.add_column("products")
    for kind in report["operators"]:
        row = report[kind]
        table.add_row(kind, f"{row['eigenvalues'][0]:.4g}", f"{row['eigenvalues'][-1]:.4g}",
                      f"{max(row['residuals']):.2g}", str(row["products"]))
    Console().print(table)
    for key, angles in report["angles_deg"].items():
        base = report["angles_baseline_deg"][key]
        print(f"{key}: angles {angles[0]:.3g}°–{angles[-1]:.3g}° (random {base[0]:.3g}°–{base[-1]:.3g}°)")
    for kind in ("hessian", "gauss_newton"):
        if kind not in report["pp_share"]:
            continue
        pp = report["pp_share"][kind]
        if pp["pooled"] is not None:
            print(f"{kind}: PP share in the weights' top-k frames {sum(pp['pooled']) / len(pp['pooled']):.3g} "
                  f"(random {sum(pp['pooled_baseline']) / len(pp['pooled_baseline']):.3g})")
    if pair is not None:
        for kind, row in pair["model"].items():
            angles = row["angles_deg"]
            line = f"base→tuned {kind}: max angle {angles[-1]:.3g}° (random {row['angles_baseline_deg'][-1]:.3g}°)"
            if row.get("curvature_change") and row["curvature_change"]["rescale_share"] is not None:
                change = row["curvature_change"]
                line += f", rescale share {change['rescale_share']:.3g} (random {change['baseline']:.2g})"
            print(line)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @command(app, "curvature")
    @with_options(LOADING_OPTIONS)
    def curvature_command(
        models: list[str] = typer.Argument(..., help="MODEL, or BASE TUNED: HF model folders or hub ids."),
        probes: Path = typer.Option(..., "--probes", help="JSONL of {prompt, completion} probes (the kernel's; or problems {id, prompt, answer})."),
        out: Path = out_option("Output folder for curvature.json and curvature.npz."),
        top: int = typer.Option(10, "--top", help="Eigenpairs per operator (largest |λ|)."),
        vocab: Optional[int] = typer.Option(None, "--vocab", help="Outputs z: the base's top-V logits per position "
                                            "(default: the whole vocabulary)."),
        blocks: Optional[list[str]] = typer.Option(None, "--blocks", help="Per-block spectra too: a regex (repeat the "
                                                   "option for more); parameters whose names it matches with the same "
                                                   "text form one block, e.g. 'layers\\.\\d+\\.' (per layer) or "
                                                   "'.*proj\\.weight' (per matrix)."),
        device: Device = "auto",
        dtype: str = typer.Option("float32", "--dtype", help="float32 | float64 (products and model)."),
        tol: float = typer.Option(1e-6, "--tol", help="Lanczos stop: ‖Av − λv‖ ≤ tol·|λ| for each wanted pair."),
        seed: int = typer.Option(0, "--seed", help="Seed of Lanczos' start vector and of the random baselines."),
        k: Optional[int] = typer.Option(None, "--k", help="Top-k singular subspaces of each weight for the PP share "
                                        "(default SPEC §4's max(1, ⌈0.01·min(m, n)⌉))."),
        operators: Optional[list[str]] = typer.Option(None, "--operators", help="Which of hessian, gauss_newton, "
                                                      "entk_weighted, entk_logits, entk_logprob (comma-separated or "
                                                      "repeated; default all five). Large models: gauss_newton."),
        jvp: str = typer.Option("dual", "--jvp", help="How J v is computed: dual (forward-mode dual tensors) or "
                                "linearize (trace the forward once; each J v then costs about half: fastest for many "
                                "products on small models, several times the memory on large ones)."),
        memory_budget_mb: Optional[float] = typer.Option(None, "--memory-budget-mb", help="Over it, G's Lanczos runs in "
                                                         "function space and the directions stream to disk; the Hessian "
                                                         "is refused. Default: a quarter of the free memory as a power "
                                                         "of two, 256–4096 MB."),
        **options,
    ) -> None:
        """Hessian, Gauss-Newton and eNTK top eigenvectors on probes, against each other and the weights (SPEC §9)."""
        if len(models) not in (1, 2):
            raise DeltalensError(f"curvature: expected MODEL or BASE TUNED, got {len(models)} models")
        if dtype not in ("float32", "float64"):
            raise DeltalensError(f"--dtype: expected float32 or float64, got '{dtype}'")
        from deltalens.cli.kernel import _progress
        from deltalens.curvature.run import run_curvature, run_curvature_pair

        options = dict(out=out, top=top, vocab=vocab, blocks=blocks or None, device=resolved(device), dtype=dtype,
                       tol=tol, seed=seed, k=k, operators=operators, memory_budget_mb=memory_budget_mb, jvp=jvp,
                       **loading(options))
        with _progress() as update:
            if len(models) == 1:
                report, _ = run_curvature(models[0], probes, progress=update, **options)
            else:
                report, _ = run_curvature_pair(models[0], models[1], probes, progress=update, **options)
        _render(report, report.get("pair"))
        print(f"wrote {out / 'curvature.json'} and {out / 'curvature.npz'}")
