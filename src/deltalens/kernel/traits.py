"""Trait-space kernels: the G-matrix analogue (SPEC §6).

A suite is a list of ``{task, prompt, completion}`` objects (the behaviour problem format
``{id, prompt, answer, task?}`` is accepted too: ``answer`` stands in for a missing
``completion`` and a missing ``task`` is the trait ``"all"``). Trait t is
f_t(θ) = mean over its lines of the completion's mean token NLL (``outputs.completion_loss``).

With A the T×N averaging matrix (A_ti = 1/N_t for line i of trait t), J_trait = A J, so
K_trait = A K Aᵀ where K is the per-line kernel, and the predicted change J_trait·Δθ = A (J·Δθ).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deltalens.errors import DeltalensError
from deltalens.kernel.outputs import probe_text


def suite_to_probes(lines: Sequence[dict], *, source: str = "suite") -> tuple[list[dict], list[str], list[int]]:
    """Probes, trait names (first-seen order) and the trait index of each line."""
    if not lines:
        raise DeltalensError(f"{source}: empty suite (expected {{task, prompt, completion}} lines)")
    probes, names, index = [], [], []
    for i, line in enumerate(lines, 1):
        prompt, completion = probe_text(line, f"{source}: line {i}")
        task = str(line.get("task", "all"))
        if task not in names:
            names.append(task)
        index.append(names.index(task))
        probes.append({"prompt": prompt, "completion": completion})
    return probes, names, index


def averaging_matrix(trait_index: Sequence[int], n_traits: int) -> torch.Tensor:
    """A (T×N, float64): A_ti = 1/N_t when line i belongs to trait t, else 0."""
    a = torch.zeros(n_traits, len(trait_index), dtype=torch.float64)
    for i, t in enumerate(trait_index):
        a[t, i] = 1.0
    counts = a.sum(1, keepdim=True)
    return a / counts


def trait_kernel(line_kernel: torch.Tensor, averaging: torch.Tensor) -> torch.Tensor:
    """K_trait = A K Aᵀ (T×T): inner products of the trait gradients ∇f_t = Σ_i A_ti ∇ℓ_i (SPEC §6)."""
    return averaging @ line_kernel.double() @ averaging.T


def trait_changes(
    names: Sequence[str], averaging: torch.Tensor, predicted_lines: torch.Tensor, measured_lines: torch.Tensor
) -> list[dict]:
    """Per trait: predicted Δf_t = (A·J·Δθ)_t (first order, Lande's Δz ≈ Gβ) and measured f_t(θ1) − f_t(θ0)."""
    predicted = averaging @ predicted_lines.double()
    measured = averaging @ measured_lines.double()
    return [
        {"name": name, "predicted": float(p), "measured": float(m)}
        for name, p, m in zip(names, predicted.tolist(), measured.tolist())
    ]
