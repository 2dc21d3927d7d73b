"""CLI commands of the `kernel` area: ``deltalens kernel`` and ``deltalens align``.

Only typer and the standard library are imported here at module level; the library
(``deltalens.kernel``, torch, transformers) is imported inside the command bodies.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from deltalens.cli.common import LOADING_OPTIONS, Device, command, device as resolved, loading, out_option, with_options
from deltalens.errors import DeltalensError


@contextmanager
def _progress():
    """A rich progress bar fed by the library's ``progress(label, done, total)`` callback.

    transformers' own weight-loading bars are switched off so the terminal shows one bar per
    kernel and an error stays one line.
    """
    from transformers.utils import logging as hf_logging
    from deltalens.progress import bar as progress_bar

    hf_logging.disable_progress_bar()
    tasks: dict[str, int] = {}
    with progress_bar(transient=True) as bar:

        def update(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done)

        yield update


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _render_comparison(title: str, comparison: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value")
    angles = comparison["angles_deg"]
    ratios = [r for r in comparison["eigenvalue_log_ratios"] if r is not None]
    rows = [
        ("top r", comparison["top_r"]),
        ("max angle between top-r eigenspaces (deg)", max(angles)),
        ("mean angle (deg)", sum(angles) / len(angles)),
        ("gap λ_r − λ_{r+1}", comparison["gap"]),
        ("Wedin bound on sin θ_max", comparison["wedin_bound"]),
        ("gap-limited", comparison["gap_limited"]),
        ("mean |log λ1/λ0| (top r)", sum(abs(r) for r in ratios) / len(ratios) if ratios else None),
        ("kernel alignment", comparison["alignment"]),
        ("rescale share", comparison["rescale_share"]),
        ("rescale baseline 2/(n+1)", comparison["rescale_baseline"]),
    ]
    for name, value in rows:
        table.add_row(name, _fmt(value))
    Console().print(table)
    if comparison.get("rescale_undefined_reason"):
        print(f"rescale share undefined: {comparison['rescale_undefined_reason']}")


PROBES_HELP = "JSONL of {prompt, completion} probes (or problems {id, prompt, answer, task?}: the answer is the completion)."

# Options shared by `kernel` and `align` (declared once; see deltalens.kernel.run.KernelOptions).
Mode = Annotated[str, typer.Option("--mode", help="exact | sketch.")]
Dim = Annotated[Optional[int], typer.Option("--dim", help="Sketch dimension d (sketch mode; default 4096).")]
TopR = Annotated[int, typer.Option("--top-r", help="Number of top eigen-directions (capped at n−1).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the sketch's random projection.")]
Output = Annotated[str, typer.Option("--output", help="Per-probe output: logprob (completion log-likelihood) | loss (mean token NLL) | logits-trace | logits-full (logits at --positions of --token-ids or the base's --top-v entries; full: one kernel row per (probe, position, token); trace: summed over them).")]
Positions = Annotated[str, typer.Option("--positions", help="logits outputs: completion token indices whose predicting logits are used, comma-separated (0 = the first completion token).")]
TopV = Annotated[int, typer.Option("--top-v", help="logits outputs: the V vocabulary entries with the largest mean probability under the base at --positions.")]
TokenIds = Annotated[Optional[str], typer.Option("--token-ids", help="logits outputs: comma-separated vocabulary ids (instead of --top-v).")]
Implementation = Annotated[str, typer.Option("--implementation", help="Exact mode: auto (structured derivatives for nn.Linear layers where T² < d_in·d_out/(d_in+d_out)) | jacobian | structured.")]
Budget = Annotated[Optional[float], typer.Option("--memory-budget-mb", help="Bound on gradient buffers (exact mode sweeps parameters in groups that fit); default: a quarter of the free memory as a power of two, 256–4096 MB. The exact kernel does not depend on it.")]
Chunk = Annotated[int, typer.Option("--chunk-size", help="Most examples per gradient chunk (vmap), capped by --memory-budget-mb (exact mode: a power of two ≤ 64; sketch mode: equal-size chunks). The exact kernel does not depend on it.")]


def _ints(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise DeltalensError(f"{option}: expected comma-separated integers, got {text!r}") from None


#: How kernels are computed: the options `kernel` and `align` share (deltalens.kernel.run.KernelOptions).
KERNEL_OPTIONS = (("mode", Mode, "exact"), ("dim", Dim, None), ("top_r", TopR, 10), ("seed", Seed, 0),
                  ("output", Output, "logprob"), ("device", Device, "auto"), ("memory_budget_mb", Budget, None),
                  ("chunk_size", Chunk, 64), ("positions", Positions, "0"), ("top_v", TopV, 8),
                  ("token_ids", TokenIds, None), ("implementation", Implementation, "auto"))


def _options(options: dict) -> dict:
    """Take :data:`KERNEL_OPTIONS` out of a command's ``**options``: KernelOptions' fields."""
    return _kernel_options(**{name: options.pop(name) for name, _, _ in KERNEL_OPTIONS})


def _kernel_options(mode, dim, seed, top_r, output, device, memory_budget_mb, chunk_size, positions, top_v,
                    token_ids, implementation) -> dict:
    return dict(
        mode=mode, dim=4096 if mode == "sketch" and dim is None else dim, seed=seed, top_r=top_r, output=output,
        device=resolved(device), memory_budget_mb=memory_budget_mb, chunk_size=chunk_size,
        positions=_ints(positions, "--positions"), top_v=top_v, token_ids=_ints(token_ids, "--token-ids"),
        implementation=implementation,
    )


@with_options(KERNEL_OPTIONS, LOADING_OPTIONS)
def kernel_command(
    models: list[str] = typer.Argument(..., help="BASE TUNED (or, with --trajectory, BASE CKPT_1 CKPT_2 ...): HF model folders or hub ids."),
    probes: Path = typer.Option(..., "--probes", help=PROBES_HELP),
    out: Path = out_option("Output folder for kernel.json and kernels.npz."),
    traits: Optional[Path] = typer.Option(None, "--traits", help="JSONL suite of {task, prompt, completion} (or problems {id, prompt, answer, task}): trait kernels and predicted vs measured trait change (with --trajectory: the base vs the last checkpoint)."),
    trajectory: bool = typer.Option(False, "--trajectory", help="Compare each checkpoint with the base and with the previous one."),
    **options,
) -> None:
    """Empirical NTK of two checkpoints on probes, and whether the fine-tune rescaled or rotated it (SPEC §6)."""
    from deltalens.kernel.run import run_kernel, run_trajectory

    if not trajectory and len(models) != 2:
        raise DeltalensError(f"kernel: expected BASE and TUNED (2 models), got {len(models)}; use --trajectory for more")
    kwargs = dict(out=out, traits=traits, **loading(options), **_options(options))
    with _progress() as update:
        if trajectory:
            report, _ = run_trajectory(models, probes, progress=update, **kwargs)
        else:
            report, _ = run_kernel(models[0], models[1], probes, progress=update, **kwargs)
    _render_comparison(f"kernel: {report['mode']}, n = {report['n_probes']}, error ≈ {report['error_estimate']:.2g}", report["comparison"])
    for step in report.get("trajectory", []):
        vb, vp = step["vs_base"], step["vs_previous"]
        print(
            f"{step['checkpoint']}: vs base max angle {max(vb['angles_deg']):.3g}° rescale share {_fmt(vb['rescale_share'])}; "
            f"vs previous max angle {max(vp['angles_deg']):.3g}° rescale share {_fmt(vp['rescale_share'])}"
        )
    if "traits" in report:
        block = report["traits"]
        if block["comparison"] is not None:
            _render_comparison("trait kernel", block["comparison"])
        for row in block["traits"]:
            print(f"trait {row['name']}: predicted Δloss {row['predicted']:.4g}, measured {row['measured']:.4g}")
    print(f"wrote {out / 'kernel.json'} and {out / 'kernels.npz'}")


@with_options(KERNEL_OPTIONS, LOADING_OPTIONS)
def align_command(
    model: str = typer.Argument(..., help="HF model folder or hub id."),
    data: Path = typer.Option(..., "--data", help="JSONL of {prompt, completion} (or problems {prompt, answer}) training examples (the dataset D)."),
    probes: Path = typer.Option(..., "--probes", help=PROBES_HELP),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output folder for align.json and kernels.npz."),
    **options,
) -> None:
    """Share of a dataset's function-space push J·ḡ_D on the top-r kernel eigenvectors vs r/n (SPEC §6)."""
    from deltalens.kernel.run import run_align

    kwargs = dict(**loading(options), **_options(options))
    with _progress() as update:
        report = run_align(model, data, probes, out=out, progress=update, **kwargs)
    a = report["alignment"]
    print(
        f"alignment of {data} with the top {a['top_r']} of {report['n_probes']} eigenvectors: "
        f"share {a['share']:.4g} vs baseline {a['baseline']:.4g} ({a['ratio_to_baseline']:.3g}×)"
    )
    if out is not None:
        print(f"wrote {out / 'align.json'}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    command(app, "kernel")(kernel_command)
    command(app, "align")(align_command)
