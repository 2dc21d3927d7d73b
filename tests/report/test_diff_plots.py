"""``deltalens diff --plots``: pictures a researcher can send (no machine paths in titles, no
figure 2,000+ px wide)."""

from __future__ import annotations

import struct

from tests.report.fixtures import diff_doc


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_diff_plots_have_short_titles_and_a_sendable_width(tmp_path):
    import pandas as pd

    from deltalens.weights.plots import write_diff_plots

    rows = diff_doc("sft", 11)["tensors"]
    table = pd.DataFrame(rows)
    title = "/home/someone/runs/arms/grpo/checkpoints/step-000064 vs /home/someone/runs/base/release"
    paths = write_diff_plots(table, tmp_path / "plots", title=title)
    assert sorted(p.name for p in paths if p.suffix == ".png") == [
        "nss.png", "principal_angles.png", "rescale_share.png", "sparsity_bf16.png"]
    for path in paths:
        if path.suffix == ".png":
            width, height = _png_size(path.read_bytes())
            assert 600 <= width <= 1500 and height <= 900, (path.name, width, height)
        else:
            svg = path.read_text()
            assert "/home/someone" not in svg, path.name
            assert "checkpoints/step-000064 vs base/release" in svg, path.name
