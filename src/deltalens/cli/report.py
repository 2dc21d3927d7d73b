"""CLI commands of the `report` area. Import only typer and the standard library here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deltalens.cli.common import command


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @command(app, "report")
    def report(
        run_dirs: Annotated[list[Path], typer.Argument(help="Run folders (each searched one level deep) to show side by side.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path("report.html"),
        title: Annotated[str | None, typer.Option(help="Page title (default: the run folder names).")] = None,
    ) -> None:
        """Write one self-contained HTML page from diff/passk/support/divergence/kernel/claims/tracking outputs."""
        from deltalens.report import discover_runs, write_report
        from deltalens.results import check_output_file

        check_output_file(out, what="report file")
        runs = discover_runs(run_dirs)
        path = write_report(runs, out, title=title)
        for run in runs:
            for name, reason in run.unreadable.items():
                print(f"warning: {run.label}: {name} unreadable: {reason}")
        print(f"report: {len(runs)} run(s) -> {path}")
