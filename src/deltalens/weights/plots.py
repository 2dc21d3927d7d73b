"""Pictures of a weight diff (SPEC §2, §4, §5): per-layer principal angles, bf16 sparsity, NSS and
rescale share, each as PNG and SVG. Reads the per-tensor table of ``deltalens diff``.
"""

from __future__ import annotations

import json
import pathlib
import re
import warnings

import pandas as pd

from deltalens.weights.aggregate import ordered_modules, pool

#: PNG resolution: a 10-inch figure is 1200 px wide, readable on a laptop without scaling.
DPI = 120
#: Width of a figure in inches (a legend outside the axes adds to it).
WIDTH_IN = 10.0

PLOT_FILES = tuple(f"{stem}.{ext}" for stem in ("principal_angles", "sparsity_bf16", "nss", "rescale_share")
                   for ext in ("png", "svg"))  # what write_diff_plots may write (checked before a diff starts)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: pathlib.Path, stem: str) -> list[pathlib.Path]:
    """Render in memory, then write atomically (results.write_bytes): never a half-written
    picture, and a temporary left by a kill is one the next run's output check removes."""
    import io

    from deltalens.results import write_bytes

    paths = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=DPI, bbox_inches="tight")
        paths.append(write_bytes(out_dir / f"{stem}.{ext}", buf.getvalue()))
    return paths


def _integer_layers(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _layered(tensors: pd.DataFrame) -> pd.DataFrame:
    """Rows that belong to a numbered layer, with an int ``layer`` column."""
    df = tensors[tensors["layer"].notna()].copy()
    df["layer"] = df["layer"].astype(int)
    return df


def _modules(df: pd.DataFrame) -> list[str]:
    return ordered_modules(df["module"].astype(str))


def _first_k_entry(by_k) -> tuple[int, dict] | None:
    """The entry for the smallest k of one tensor's ``by_k`` (a dict, or its JSON text)."""
    if isinstance(by_k, str):
        by_k = json.loads(by_k)
    if not isinstance(by_k, dict):
        return None
    by_k = {key: val for key, val in by_k.items() if isinstance(val, dict)}  # parquet structs pad absent k with None
    if not by_k:
        return None
    k = min(by_k, key=lambda s: int(s))
    return int(k), by_k[k]


def _missing(tensors: pd.DataFrame, needed: tuple[str, ...], plot: str) -> bool:
    absent = [c for c in needed if c not in tensors.columns]
    if absent:
        warnings.warn(f"skipped the {plot} plot: the tensor table has no column(s) {', '.join(absent)}", stacklevel=3)
        return True
    return False


def _plot_angles(tensors: pd.DataFrame, out_dir: pathlib.Path, title: str) -> list[pathlib.Path]:
    """Per-layer max principal angle, left and right subspaces side by side ("The Path Not Taken" Fig. 4)."""
    if _missing(tensors, ("module", "layer", "by_k"), "principal-angle"):
        return []
    df = _layered(tensors)
    rows = []
    for _, row in df.iterrows():
        entry = _first_k_entry(row["by_k"])
        if entry is None or "angle_max_left_deg" not in entry[1] or entry[1].get("unresolved"):
            continue  # unresolved angles (fast route, error estimate above 0.01°) are not plotted
        k, e = entry
        rows.append({"layer": row["layer"], "module": str(row["module"]), "k": k,
                     "left": e["angle_max_left_deg"], "right": e["angle_max_right_deg"],
                     "limited": bool(e.get("gap_limited", False))})
    if not rows:
        warnings.warn("skipped the principal-angle plot: no tensor has principal angles in by_k", stacklevel=2)
        return []
    data = pd.DataFrame(rows)
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH_IN, 4.6), sharey=True, layout="constrained")
    for ax, side in zip(axes, ("left", "right")):
        for module in _modules(data):
            sub = data[data["module"] == module].sort_values("layer")
            line, = ax.plot(sub["layer"], sub[side], marker="o", ms=4, label=module)
            lim = sub[sub["limited"]]
            ax.scatter(lim["layer"], lim[side], s=60, facecolors="none", edgecolors=line.get_color(), linewidths=1.2)
        ax.set_xlabel("layer")
        ax.set_title(f"{side} singular subspace (rows)" if side == "left" else f"{side} singular subspace (columns)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("max principal angle (degrees)")
    for ax in axes:
        _integer_layers(ax)
    ks = sorted(set(data["k"]))
    fig.legend(*axes[0].get_legend_handles_labels(), title="module", fontsize=8, loc="outside right center")
    fig.suptitle((title + "\n" if title else "") + f"Rotation of the principal subspaces per layer, top-k of W0 vs W1 "
                 f"(k = {', '.join(map(str, ks))}; hollow circles: gap-limited, Wedin bound > 1)", wrap=True)
    out = _save(fig, out_dir, "principal_angles")
    plt.close(fig)
    return out


def _plot_per_layer(
    tensors: pd.DataFrame, out_dir: pathlib.Path, column: str, stem: str, ylabel: str, heading: str,
    *, weighting: str = "mean", logy: bool = False, baseline: str | None = None,
) -> list[pathlib.Path]:
    """One line per module kind of ``column`` pooled per layer by :func:`deltalens.weights.aggregate.pool`
    with ``weighting`` (params, energy or mean: the same pooling as the diff's summary and the report)."""
    weight_col = {"params": ("numel",), "energy": ("delta_fro",), "mean": ()}[weighting]
    needed = ("module", "layer", column) + weight_col + ((baseline,) if baseline else ())
    if _missing(tensors, needed, stem):
        return []
    df = _layered(tensors)
    df = df[df[column].notna()]
    if df.empty:
        warnings.warn(f"skipped the {stem} plot: no layer tensor has a value for {column}", stacklevel=2)
        return []
    plt = _figure()
    fig, ax = plt.subplots(figsize=(WIDTH_IN * 0.8, 4.4), layout="constrained")
    for module in _modules(df):
        sub = df[df["module"].astype(str) == module]
        layers = {layer: group.to_dict("records") for layer, group in sub.groupby("layer")}
        xs = list(layers)
        line, = ax.plot(xs, [pool(rows, column, weighting).value for rows in layers.values()], marker="o", ms=4,
                        label=module)
        if baseline:
            ax.plot(xs, [pool(rows, baseline, weighting).value for rows in layers.values()], ls="--", lw=1,
                    color=line.get_color(), label=f"{module} random baseline")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("layer")
    _integer_layers(ax)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), title="module", fontsize=8, loc="outside right center")  # off the data
    fig.suptitle(heading, wrap=True)
    out = _save(fig, out_dir, stem)
    plt.close(fig)
    return out


def short_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last two components (plot titles name the
    models, not the machine they were on)."""
    return re.sub(r"(?<![\w.])/(?:[^\s/]+/)+([^\s/]+/[^\s/]+)", r"\1", text)


def write_diff_plots(tensors: pd.DataFrame, out_dir, *, title: str = "") -> list[pathlib.Path]:
    """Write the diff's pictures as PNG and SVG into ``out_dir``; return the written paths.

    ``tensors``: one row per tensor with ``name``, ``module``, ``layer`` (int or None),
    ``numel``, ``unchanged_bitwise``, and, for 2-D tensors, ``by_k``, ``nss``, ``rescale_share``,
    ``rescale_baseline``, ``delta_fro`` (the rescale share pools weighted by ‖Δ‖², like everywhere). A plot whose columns are missing is skipped with a warning.
    Pictures: principal_angles (SPEC §4), sparsity_bf16 (§2), nss (§4), rescale_share (§5).
    Tensors outside numbered layers (embeddings, final norm, lm_head) are not drawn.
    """
    from deltalens.results import check_output_dir

    out_dir = check_output_dir(out_dir, PLOT_FILES)
    if "layer" in tensors.columns and not tensors.empty:
        tensors = tensors.copy()
        tensors["layer"] = tensors["layer"].astype(object).map(lambda v: None if pd.isna(v) else int(v))
    title = short_paths(title)
    prefix = (title + ": ") if title else ""
    paths = _plot_angles(tensors, out_dir, title)
    paths += _plot_per_layer(
        tensors, out_dir, "unchanged_bitwise", "sparsity_bf16",
        "unchanged fraction (bitwise)",
        prefix + "Update sparsity per layer: share of weights left bit-identical in the stored dtype "
                 "(parameter-weighted)", weighting="params")
    paths += _plot_per_layer(
        tensors, out_dir, "nss", "nss", "NSS = ‖σ(W1) − σ(W0)‖₂ / ‖σ(W0)‖₂",
        prefix + "Spectrum drift per layer (normalized spectrum shift, mean over tensors)")
    paths += _plot_per_layer(
        tensors, out_dir, "rescale_share", "rescale_share",
        "‖diag(UᵀΔV)‖² / ‖Δ‖²_F (log scale)",
        prefix + "Rescale share: update energy that re-weights W0's own singular directions (‖Δ‖²-weighted), "
                 "against the random baseline (dashed)",
        weighting="energy", logy=True, baseline="rescale_baseline")
    return paths
