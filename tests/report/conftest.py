"""Fixtures shared by the report tests: one lab-shaped set of inputs and its page, built once."""

from __future__ import annotations

import pytest

from deltalens.report import build_report
from tests.report.fixtures import write_lab


@pytest.fixture(scope="session")
def lab_report(tmp_path_factory):
    """(lab folder, report.html) for a lab with claims.json on top and an SFT-like and an RL-like arm."""
    root = tmp_path_factory.mktemp("lab-report")
    lab = write_lab(root / "lab")
    return lab, build_report([lab], root / "report.html")
