"""The HTML report: one self-contained page from whatever deltalens outputs a run holds.

Library API: :func:`build_report` (any RUN_DIRs, side by side) and :func:`write_run_report`
(what ``deltalens diff --report`` and ``deltalens lab`` call). The page is built by
:mod:`deltalens.report.build` from one module per level (weights, behaviour, kernel, lab).
"""

from __future__ import annotations

from deltalens.report.build import SECTION_IDS, build_report, render_html, write_report, write_run_report
from deltalens.report.inputs import INPUT_FILES, Run, discover_runs

__all__ = ["INPUT_FILES", "SECTION_IDS", "Run", "build_report", "discover_runs", "render_html", "write_report", "write_run_report"]
