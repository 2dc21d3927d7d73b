"""Saving checkpoints as a release would: bf16 safetensors HF folders, plus float32 masters.

A release folder holds ``config.json``, ``generation_config.json``, ``model.safetensors`` and
the tokenizer files, so every deltalens command (and ``from_pretrained``) opens it as is.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

from transformers import TrainerCallback


def save_hf_folder(model, tokenizer, path: str | Path, *, dtype=None) -> Path:
    """Save ``model`` (cast to ``dtype`` on a copy, when given) and ``tokenizer`` to ``path``.

    Written to a temporary sibling and renamed into place, so a folder that exists is complete.
    """
    import torch

    from deltalens.results import write_folder

    path = Path(path)
    to_save = model
    if dtype is not None and dtype != torch.float32:
        to_save = copy.deepcopy(model).to(dtype)
    with write_folder(path) as tmp:
        to_save.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return path


def step_dirname(step: int) -> str:
    """Folder name of the checkpoint after optimizer step ``step``: ``step-000040``."""
    return f"step-{step:06d}"


def checkpoint_steps(total_steps: int, n_checkpoints: int) -> list[int]:
    """About ``n_checkpoints`` evenly spaced steps in 1..total_steps, always ending at the last."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be ≥ 1, got {total_steps}")
    n = max(1, min(n_checkpoints, total_steps))
    return sorted({round(total_steps * (i + 1) / n) for i in range(n)})


class ReleaseCheckpointCallback(TrainerCallback):
    """At the chosen optimizer steps save ``run_dir/checkpoints/step-N`` (bf16 release) and
    ``run_dir/masters/step-N`` (float32 master)."""

    def __init__(self, run_dir: str | Path, tokenizer, steps: Iterable[int]) -> None:
        self.run_dir = Path(run_dir)
        self.tokenizer = tokenizer
        self.steps = set(steps)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        import torch

        if state.global_step not in self.steps or not state.is_world_process_zero:
            return
        name = step_dirname(state.global_step)
        save_hf_folder(model, self.tokenizer, self.run_dir / "checkpoints" / name, dtype=torch.bfloat16)
        save_hf_folder(model, self.tokenizer, self.run_dir / "masters" / name)
