"""The streaming weight diff (SPEC §1–§3): pair two checkpoints, compute one row per tensor
with the selected metric groups, aggregate, write ``diff.json`` and ``tensors.parquet``.

Tensors are processed one pair at a time; the chunked sparsity/size pass needs only chunk-sized
temporaries; the matrix groups get float32 copies of tensors up to 2²⁶ elements and the stored
tensors above (cast chunk by chunk: no whole float32 copy of an embedding); above
min(m, n) = 512 they hold the bitwise mask and a few m×q blocks; below it a float32 Δ and n×n
Gram matrices. With ``out`` set, each finished row is
appended to ``out/.cache/rows.jsonl`` with the inputs' fingerprint, so an interrupted run
resumes where it stopped and gives identical results; the outputs are written atomically,
``diff.json`` last.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deltalens.checkpoints import TensorPair, open_pair, pair_sources
from deltalens.checkpoints.readahead import ReadAhead
from deltalens.errors import DeltalensError
from deltalens.fingerprint import source_fingerprint
from deltalens.results import append_jsonl, check_output_dir, to_jsonable, write_json, write_parquet, write_text
from deltalens.weights.aggregate import summarize
from deltalens.weights.groups import (
    ALWAYS_FIELDS,
    METRIC_GROUPS,
    MetricContext,
    aggregated_fields,
    matrix_operands,
)
from deltalens.weights.options import DiffOptions, make_options
from deltalens.weights.sparsity import stream_pair_stats

CACHE_DIR = ".cache"
CACHE_ROWS = "rows.jsonl"
CACHE_KEY = "fingerprint.json"


@dataclass
class DiffResult:
    """A finished diff: ``summary`` (dict, as in diff.json) and ``tensors`` (DataFrame, one row
    per tensor); ``rows`` are the same rows as dicts."""

    base: str
    tuned: str
    options: dict
    summary: dict
    rows: list[dict]
    skipped: list[dict] = field(default_factory=list)
    unmatched: dict = field(default_factory=dict)
    resized: list[dict] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    out: Path | None = None
    resumed: int = 0  # rows taken from an interrupted earlier run of the same inputs and options
    replaced: list[str] | None = None  # what an earlier run in ``out`` that this one replaced did differently
    fingerprints: dict = field(default_factory=dict)  # base/tuned content fingerprints (deltalens.fingerprint)

    @property
    def tensors(self):
        import pandas as pd

        frame = pd.DataFrame(self.rows)
        if "layer" in frame:
            frame["layer"] = frame["layer"].astype("Int64")
        return frame

    def to_json(self) -> dict:
        return {
            "base": self.base, "tuned": self.tuned, "fingerprints": self.fingerprints, "options": self.options,
            "summary": self.summary,
            "skipped": self.skipped, "unmatched": self.unmatched, "resized": self.resized,
            "tied": self.tied, "tensors": self.rows,
        }


def _dtype_label(pair: TensorPair) -> str:
    return pair.dtype0 if pair.dtype0 == pair.dtype1 else f"{pair.dtype0}->{pair.dtype1}"


def _wants_visible(pair: TensorPair, options: DiffOptions) -> bool:
    """SPEC §2 visibility: tuned float32 over a bf16 base, or asked for with --visible-dtype bf16."""
    return options.visible_dtype == "bf16" or (pair.dtype0 == "bfloat16" and pair.dtype1 == "float32")


def compute_row(pair: TensorPair, t0, t1, options: DiffOptions) -> dict:
    """One tensor's row: identity fields plus every selected group's fields (None where a group
    does not apply, e.g. rank measures of a 1-D tensor)."""
    import torch

    if pair.rows is not None:
        t0, t1 = t0[: pair.rows], t1[: pair.rows]
    row = {"name": pair.name, "module": pair.module, "layer": pair.layer, "shape": list(pair.shape),
           "dtype": _dtype_label(pair), "numel": pair.numel}
    groups = [METRIC_GROUPS[g] for g in options.metrics]
    visible = "sparsity" in options.metrics and _wants_visible(pair, options)
    stats = stream_pair_stats(t0, t1, tols=options.tols, eta=options.eta, visible=visible,
                              sparsity="sparsity" in options.metrics, size="size" in options.metrics,
                              device=options.device)
    row.update(stats)
    matrix = [g for g in groups if g.compute is not None]
    for g in matrix:
        for f in g.fields:
            row.setdefault(f.name, None)
        for name in g.row_fields:
            row.setdefault(name, None)
    runnable = [g for g in matrix if not g.only_2d or t0.ndim == 2]
    if runnable:
        w0, w1 = matrix_operands(t0, t1, options.device)
        if stats["nonfinite"]:  # keep the SVD defined; the count stays in the row
            bad = ~(torch.isfinite(w0) & torch.isfinite(w1))
            w0 = w0.masked_fill(bad, 0.0)
            w1 = w1.masked_fill(bad, 0.0)
            row["nonfinite_zeroed_for"] = [g.name for g in runnable]
        ctx = MetricContext.after_stream(stats, pair.name, pair.module, pair.layer, t0, t1, w0, w1, options)
        for g in runnable:
            row.update(g.compute(w0, w1, ctx))
    return to_jsonable(row)


def _fingerprint(base_src, tuned_src, options: DiffOptions) -> dict:
    return to_jsonable({"base": base_src.fingerprint(), "tuned": tuned_src.fingerprint(), "options": options.to_dict()})


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields in which two fingerprints (or option dicts) differ."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [prefix.rstrip(".") or "value"] if old != new else []
    out = []
    for key in sorted(set(old) | set(new), key=str):
        if key not in old or key not in new:
            out.append(prefix + str(key))
        else:
            out += _differences(old[key], new[key], f"{prefix}{key}.")
    return out


def _earlier_run(out: Path, fingerprint: dict) -> list[str] | None:
    """What an earlier run in ``out`` did differently (dotted field names), or None when there is
    none or it is this same run (same inputs' files and options: it resumes)."""
    key_path = out / CACHE_DIR / CACHE_KEY
    if key_path.is_file():
        try:
            old = json.loads(key_path.read_text())
        except json.JSONDecodeError:
            return ["the resume cache's fingerprint (unreadable)"]
        names = [f"{d.split('.')[0]} files" if d.startswith(("base", "tuned")) else d
                 for d in _differences(old, fingerprint)]
        return list(dict.fromkeys(names)) or None
    if (out / "diff.json").exists():
        return ["unknown: a diff.json without its resume cache"]
    return None


def _load_cache(out: Path, fingerprint: dict, overwrite: bool) -> tuple[dict[str, dict], list[str] | None]:
    """``(rows already computed for this run, what a replaced earlier run did differently)``.

    An earlier run of other inputs or options in ``out`` is replaced only with ``overwrite``;
    otherwise that is a :class:`DeltalensError` naming what differs."""
    cache = out / CACHE_DIR
    key_path, rows_path = cache / CACHE_KEY, cache / CACHE_ROWS
    differs = _earlier_run(out, fingerprint)
    if differs is None and key_path.is_file():
        rows, good, cut = {}, [], False
        if rows_path.is_file():
            with rows_path.open() as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        cut = True  # a line cut by a kill: drop it and recompute from here
                        break
                    rows[row["name"]] = row
                    good.append(line if line.endswith("\n") else line + "\n")
        if cut:
            write_text(rows_path, "".join(good))
        return rows, None
    if differs is not None and not overwrite:
        raise DeltalensError(
            f"{out}: holds an earlier diff that this run would replace (it differs in: {', '.join(differs)}); "
            "pass --overwrite (overwrite=True) to replace it, or choose another --out")
    if cache.exists():
        shutil.rmtree(cache)
    for stale in ("diff.json", "tensors.parquet"):
        (out / stale).unlink(missing_ok=True)
    write_json(key_path, fingerprint)
    return {}, differs


def run_diff(base: str | os.PathLike, tuned: str | os.PathLike, *, out: str | os.PathLike | None = None,
             options: DiffOptions | None = None, progress: bool = False,
             on_row: Callable[[dict], None] | None = None, overwrite: bool = True, **kwargs) -> DiffResult:
    """Diff two checkpoints (SPEC §1–§3); with ``out`` write diff.json and tensors.parquet there.

    A run of the same inputs (files unchanged) and options in ``out`` is resumed (``resumed``
    counts the rows it gave). A run of other inputs or options there is replaced when
    ``overwrite`` (the library's default; ``replaced`` then says what differed), and is a
    :class:`DeltalensError` otherwise (the command line's default: ``--overwrite``).

    ``kwargs`` are :func:`make_options` arguments (metrics, tols, eta, visible_dtype, top_k,
    exact, device, allow_pickle) when ``options`` is not given. ``on_row`` is called after each
    newly computed row (after it is cached).
    """
    options = options or make_options(**kwargs)
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        check_output_dir(out_path, ["diff.json", "tensors.parquet"])
    base_src, tuned_src = open_pair(base, tuned, allow_pickle=options.allow_pickle)
    pairing = pair_sources(base_src, tuned_src)
    cached: dict[str, dict] = {}
    replaced = None
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
        cached, replaced = _load_cache(out_path, _fingerprint(base_src, tuned_src, options), overwrite)
    resumed = sum(p.name in cached for p in pairing.pairs)
    rows = []
    from deltalens.weights.progress import TensorProgress

    todo = [p for p in pairing.pairs if p.name not in cached]
    label = f"diff (resuming: {resumed} of {len(pairing.pairs)} tensors done earlier)" if resumed else "diff"
    with TensorProgress(pairing.pairs, enabled=progress, label=label) as bar, ReadAhead(base_src, tuned_src) as ahead:
        for pair in pairing.pairs:
            row = cached.get(pair.name)
            if row is None:
                for coming in todo[:2]:  # this pair and the next: reads overlap the arithmetic
                    ahead.request(coming.key)
                todo.pop(0)
                bar.describe(pair.name)
                row = compute_row(pair, base_src.get(pair.key), tuned_src.get(pair.key), options)
                if out_path is not None:
                    append_jsonl(out_path / CACHE_DIR / CACHE_ROWS, [row])
                if on_row is not None:
                    on_row(row)
            rows.append(row)
            bar.advance(pair)
    fields = list(ALWAYS_FIELDS) + aggregated_fields(options.metrics)
    result = DiffResult(
        base=str(base), tuned=str(tuned),
        options={**options.to_dict(), "base_kind": base_src.kind, "tuned_kind": tuned_src.kind,
                 "methods": _methods(options)},
        summary=to_jsonable(summarize(rows, fields)), rows=rows, skipped=pairing.skipped,
        unmatched=pairing.unmatched, resized=pairing.resized, tied=pairing.tied, out=out_path,
        resumed=resumed, replaced=replaced,
        # after the pass, so the files are read from the page cache where they fit in it
        fingerprints={"base": source_fingerprint(base_src), "tuned": source_fingerprint(tuned_src)},
    )
    if out_path is not None:
        write_parquet(out_path / "tensors.parquet", result.tensors)
        write_json(out_path / "diff.json", result.to_json())
    return result


def _methods(options: DiffOptions) -> dict:
    """How each number is computed, for the record in diff.json."""
    from deltalens.weights.spectral import FULL_FRAME_MAX as big

    return {
        "sparsity": f"stored dtype; bitwise on the integer view; relative η={options.eta}; absolute tol "
                    f"{list(options.tols)}; float32 arithmetic (float64 for float64 inputs)",
        "size": "‖Δ‖_F, ‖Δ‖_F/‖W0‖_F, max|Δ| over finite entries, float32 chunks summed in float64",
        "rank": "svdvals-float32 (exact)" if options.exact else
                f"gram-eigvalsh-float64 (σ from the float64 Gram matrix) when min(m, n) ≤ {big}; above it power-top-float32: "
                "σ1 only, so numerical/effective/energy ranks are null (see each row's rank_method)",
        "spectral": ("exact: float64 torch.linalg.svd of W0, W1, Δ" if options.exact else
                     f"fast: float64 Gram products + eigh (full spectrum, full frame of W0) when min(m, n) ≤ {big}; above "
                     "it randomized top-q subspace iteration (nss and rescale_share over the top q: see nss_scope, "
                     "rescale_scope)")
                    + "; sine-based principal angles; per-row details in each tensor's 'method'",
        "visibility": "fraction with |Δ| ≥ half a bf16 ULP of w0 (visible_fraction) and 0 < |Δ| < half ULP "
                      "(vanishing_fraction)",
    }
