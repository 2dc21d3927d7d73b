"""Notebook-facing functions: ``deltalens.diff`` and ``deltalens.overlap``."""

from __future__ import annotations

import os

from deltalens.weights.diff import DiffResult, run_diff
from deltalens.weights.overlap import run_overlap


def diff(base: str | os.PathLike, tuned: str | os.PathLike, *, out: str | os.PathLike | None = None,
         metrics=None, tols=None, eta: float | None = None, visible_dtype: str | None = None, top_k=None,
         exact: bool = False, device: str = "cpu", allow_pickle: bool = False, progress: bool = False,
         overwrite: bool = True) -> DiffResult:
    """Compare two checkpoints tensor by tensor (SPEC §1–§3).

    ``base``/``tuned``: HF folder, .safetensors file, hub id; ``tuned`` may be a PEFT LoRA
    adapter folder. ``metrics``: groups ("sparsity", "size", "rank"; default all). ``tols``:
    absolute tolerances (default [1e-5]); ``eta``: relative rule's η (1e-3). ``exact``: exact
    SVD for rank measures. ``out``: write diff.json, tensors.parquet and a resume cache there.
    A run of the same inputs and options in ``out`` resumes; one of others is replaced when
    ``overwrite`` (else a :class:`DeltalensError`).
    Returns a :class:`DiffResult` with ``.summary`` (dict) and ``.tensors`` (DataFrame).
    """
    return run_diff(base, tuned, out=out, progress=progress, overwrite=overwrite, metrics=metrics, tols=tols, eta=eta,
                    visible_dtype=visible_dtype, top_k=top_k, exact=exact, device=device, allow_pickle=allow_pickle)


def overlap(base: str | os.PathLike, *runs: str | os.PathLike, out: str | os.PathLike | None = None,
            allow_pickle: bool = False, progress: bool = False) -> dict:
    """Pairwise update-mask overlaps (o1, o2, Jaccard, with baselines) of runs from one base (SPEC §2)."""
    return run_overlap(base, list(runs), out=out, allow_pickle=allow_pickle, progress=progress)
