"""The terminal diff table (``deltalens diff``): fits 100 columns, small values in scientific
notation, unresolved and gap-limited angles marked."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from types import SimpleNamespace


def _module(n, numel, *, nss, angle, unresolved=0, gap_limited=0):
    return {"tensors": n, "numel": numel, "nonfinite": 0, "unchanged_bitwise": 0.0823, "unchanged_relative": 0.0823,
            "unchanged_absolute": {"1e-05": 0.0825, "1e-06": 0.08, "1e-07": 0.079}, "visible_fraction": 0.91,
            "delta_rel_mean": 0.0194, "stable_rank_mean": 3.36, "effective_rank_mean": 47.45, "rank1_share_mean": 0.305,
            "angle_max_left_deg_max": angle, "angle_max_right_deg_max": angle / 2, "nss_mean": nss,
            "rescale_share_energy_weighted": 0.000123, "rescale_ratio_energy_weighted": 12.8,
            "angles_unresolved": unresolved, "angles_gap_limited": gap_limited}


def _result():
    by_module = {"q": _module(4, 65536, nss=0.000222, angle=2.41, unresolved=1),
                 "down": _module(4, 131072, nss=0.0031, angle=3.5, gap_limited=2),
                 "embed": _module(1, 13312, nss=0.0125, angle=0.5)}
    summary = {**_module(9, 209920, nss=0.0022, angle=3.5, unresolved=1, gap_limited=2), "by_module": by_module}
    return SimpleNamespace(summary=summary, tuned="/very/long/machine/path/arms/grpo/seed0/checkpoints/step-000064",
                           base="/very/long/machine/path/base/release", options={"eta": 1e-3, "metrics": ["rank"],
                                                                                 "methods": {"rank": "gram"}},
                           rows=[{"dtype": "bfloat16", "name": "model.layers.0.self_attn.q_proj.weight",
                                  "angles_unresolved": True}],
                           skipped=[], unmatched={}, resized=[], tied=[])


def test_the_diff_table_fits_100_columns_and_marks_what_it_must(monkeypatch):
    from deltalens.cli.diff import diff_table_rows, render_diff

    monkeypatch.setenv("COLUMNS", "100")  # what a pipe or file gets when COLUMNS is unset
    buf = io.StringIO()
    with redirect_stdout(buf):
        render_diff(_result())
    lines = buf.getvalue().splitlines()
    table_lines = lines[:lines.index(next(x for x in lines if x.startswith("not shown at this width")))]
    assert max(len(x) for x in table_lines) <= 100, "\n".join(table_lines)
    assert not any("…" in x for x in table_lines)
    assert "/very/long" not in buf.getvalue()  # the title names the models by their last path components
    headers, rows, dropped = diff_table_rows(_result())
    q = rows[[r[0] for r in rows].index("q")]
    assert q[headers.index("NSS")] == "2.22e-04" and q[headers.index("rescale")] == "1.23e-04"
    assert q[headers.index("max ∠L°")] == "2.41*"  # an unresolved tensor left out
    down = rows[[r[0] for r in rows].index("down")]
    assert down[headers.index("max ∠L°")] == "3.5†"  # gap-limited tensors inside
    assert rows[-1][0] == "all" and headers[:4] == ["module", "tensors", "params", "unch. bitwise"]
    assert "max ∠R°" in dropped  # the lowest priority goes first
    assert "angle markers: * some tensors" in buf.getvalue()
