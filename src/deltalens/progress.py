"""The one progress bar: every long loop of the library (tensor pairs, samples, kernels, lab
stages) shows a rich bar built here, on stderr, so stdout stays the command's answer.

:func:`bar` returns a ``rich.progress.Progress`` with the project's columns (what it is doing, a
bar, done/total, elapsed, eta); ``unit="bytes"`` counts bytes with a transfer speed instead.
:func:`counter` is the short form for one counted task: a context manager that yields an
``advance(k)`` callable (a no-op when disabled).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def bar(*, enabled: bool = True, unit: str = "items", transient: bool = False, console=None):
    """A rich ``Progress`` (not started) with the project's columns; ``unit``: ``items`` or ``bytes``."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    if unit not in ("items", "bytes"):
        raise ValueError(f"unit must be 'items' or 'bytes', got {unit!r}")
    counts = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
    return Progress(TextColumn("{task.description}"), BarColumn(), *counts, TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console or Console(file=sys.stderr), transient=transient,
                    disable=not enabled)


@contextmanager
def counter(description: str, total: int, *, enabled: bool = True, unit: str = "items",
            transient: bool = True) -> Iterator[Callable[[int], None]]:
    """One bar counting to ``total``; yields ``advance(k)``. Transient by default: the bar is gone
    when the work is (the command's own summary line follows), and an error stays one line."""
    if not enabled:
        yield lambda k=1: None
        return
    with bar(unit=unit, transient=transient) as progress:
        task = progress.add_task(description, total=total)
        yield lambda k=1: progress.advance(task, k)
