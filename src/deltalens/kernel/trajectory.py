"""Kernel trajectory: each checkpoint against the base and against the previous one (SPEC §6)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deltalens.kernel.compare import compare_kernels


def kernel_trajectory(base: torch.Tensor, checkpoints: Sequence[torch.Tensor], names: Sequence[str], top_r: int | None = None) -> list[dict]:
    """``[{"checkpoint", "vs_base", "vs_previous"}]``; for the first checkpoint, previous = base."""
    out = []
    previous = base
    for name, kernel in zip(names, checkpoints):
        out.append(
            {
                "checkpoint": name,
                "vs_base": compare_kernels(base, kernel, top_r),
                "vs_previous": compare_kernels(previous, kernel, top_r),
            }
        )
        previous = kernel
    return out
