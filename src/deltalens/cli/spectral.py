"""CLI commands of the `spectral` area. Import only typer and the standard library here."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
