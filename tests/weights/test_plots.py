"""Diff plots: files written, readable, and skipped with a warning when columns are missing."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pandas as pd
import pytest


def _table(with_spectral=True, by_k_as_json=False):
    rows = []
    for layer in range(3):
        for module, numel in (("q", 64), ("down", 128)):
            row = {"name": f"model.layers.{layer}.{module}.weight", "module": module, "layer": layer,
                   "numel": numel, "unchanged_bitwise": 0.5 + 0.1 * layer}
            if with_spectral:
                by_k = {"2": {"angle_max_left_deg": 1.0 + layer, "angle_max_right_deg": 0.5 * layer,
                              "gap_limited": layer == 2}, "1": None}  # as a parquet struct pads an absent k
                row.update(by_k=json.dumps(by_k) if by_k_as_json else by_k, nss=1e-3 * (layer + 1),
                           rescale_share=0.01 * (layer + 1), rescale_baseline=0.001, delta_fro=0.1 * (layer + 1))
            rows.append(row)
    rows.append({"name": "model.embed_tokens.weight", "module": "embed", "layer": None, "numel": 512,
                 "unchanged_bitwise": 0.9})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("as_json", [False, True])
def test_all_plots_written(tmp_path, as_json):
    from deltalens.weights.plots import write_diff_plots

    paths = write_diff_plots(_table(by_k_as_json=as_json), tmp_path / "plots", title="rl vs base")
    names = sorted(p.name for p in paths)
    stems = ("nss", "principal_angles", "rescale_share", "sparsity_bf16")
    assert names == sorted(f"{s}.{e}" for s in stems for e in ("png", "svg"))
    for p in paths:
        assert p.stat().st_size > 1000
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            ET.parse(p)  # well-formed SVG
    svg = (tmp_path / "plots" / "principal_angles.svg").read_text()
    assert "layer" in svg and "degrees" in svg  # labels present (matplotlib keeps text as <!-- --> comments)


def test_missing_columns_skip_with_warning(tmp_path):
    from deltalens.weights.plots import write_diff_plots

    with pytest.warns(UserWarning) as record:
        paths = write_diff_plots(_table(with_spectral=False), tmp_path)
    assert sorted(p.name for p in paths) == ["sparsity_bf16.png", "sparsity_bf16.svg"]
    assert len(record) == 3 and all("skipped the" in str(w.message) for w in record)


def test_each_missing_plot_is_named(tmp_path):
    from deltalens.weights.plots import write_diff_plots

    with pytest.warns(UserWarning) as record:
        write_diff_plots(_table(with_spectral=False), tmp_path)
    text = " ".join(str(w.message) for w in record)
    for name in ("principal-angle", "nss", "rescale_share"):
        assert f"skipped the {name} plot" in text


def test_plots_from_a_parquet_round_trip(tmp_path):
    """The diff writes tensors.parquet; nested by_k dicts come back as structs padded with None."""
    from deltalens.weights.plots import write_diff_plots

    table = _table()
    table["by_k"] = [
        {"2": e["2"], "1": None} if isinstance(e, dict) else None for e in table["by_k"]
    ]
    table.loc[0, "by_k"] = None
    table.at[1, "by_k"] = {"1": {"angle_max_left_deg": 9.0, "angle_max_right_deg": 9.0, "gap_limited": False}, "2": None}
    path = tmp_path / "tensors.parquet"
    table.to_parquet(path)
    back = pd.read_parquet(path)
    paths = write_diff_plots(back, tmp_path / "plots")
    assert len(paths) == 8
