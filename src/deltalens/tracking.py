"""Per-step update statistics during training: a ``transformers.TrainerCallback``.

Add :class:`UpdateStatsCallback` to any ``transformers.Trainer`` or TRL trainer
(``SFTTrainer``, ``GRPOTrainer``, ...)::

    from deltalens.tracking import UpdateStatsCallback
    trainer = GRPOTrainer(..., callbacks=[UpdateStatsCallback("run/tracking.jsonl")])

After every ``every``-th optimizer step it records, for each tracked 2-D weight matrix, one
JSON line ``{"step", "tensor", "k", "bf16_visible_fraction", "update_fro",
"angle_to_prev_deg", "angle_to_base_deg"}``; the means over tracked matrices are also added to
the trainer's own logs (``deltalens/...`` keys), so they appear wherever TRL logs go.

- ``bf16_visible_fraction``: share of elements whose cumulative update since the start of
  training, W_t − W_0, is at least half a bf16 ULP of W_0, i.e. would survive a bf16 save
  (SPEC §2, precision visibility; 1 minus the invisible fraction).
- ``update_fro``: ‖W_t − W_prev‖_F, the update since the previous recorded step (SPEC §3).
- ``angle_to_prev_deg`` / ``angle_to_base_deg``: the largest principal angle, in degrees,
  between the top-k singular subspaces of W_t and those of W_prev / W_0, the larger of the
  left (U) and right (V) sides (SPEC §4, computed with ``deltalens.linalg.principal_angles``
  from sines, float64 SVD). k defaults to SPEC §4's max(1, ⌈0.01·min(m, n)⌉).

Cost per record: one float64 SVD per tracked matrix; choose the matrices (``tensors``) and
``every`` accordingly for large models.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import TrainerCallback

from deltalens.linalg import principal_angles
from deltalens.weights.sparsity import bf16_half_ulp
from deltalens.weights.spectral import default_k as spectral_default_k
from deltalens.results import append_jsonl

TRACKING_FIELDS = (
    "step",
    "tensor",
    "k",
    "bf16_visible_fraction",
    "update_fro",
    "angle_to_prev_deg",
    "angle_to_base_deg",
)


def bf16_visible_fraction(w0: torch.Tensor, w1: torch.Tensor) -> float:
    """Fraction of elements with |w1 − w0| ≥ ½·ULP_bf16(w0): the update a bf16 save keeps (SPEC §2)."""
    if w0.shape != w1.shape:
        raise ValueError(f"bf16_visible_fraction needs equal shapes, got {tuple(w0.shape)} and {tuple(w1.shape)}")
    delta = (w1.detach().float() - w0.detach().float()).abs()
    return float((delta >= bf16_half_ulp(w0.detach().float().abs())).double().mean())


def default_k(shape: tuple[int, ...]) -> int:
    """SPEC §4 default k for a matrix of this shape (:func:`deltalens.weights.spectral.default_k`)."""
    return spectral_default_k(*shape)


def top_singular_subspaces(w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """U_k and V_k (float64, orthonormal columns) of a 2-D matrix."""
    u, _, vh = torch.linalg.svd(w.detach().to(torch.float64), full_matrices=False)
    return u[:, :k], vh[:k].T


def top_k_angle_deg(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Largest principal angle (degrees) between two (U_k, V_k) pairs, max over the two sides."""
    left = principal_angles(a[0], b[0], orthonormal=True)
    right = principal_angles(a[1], b[1], orthonormal=True)
    return math.degrees(float(torch.cat([left, right]).max()))


def select_matrices(model, patterns: Iterable[str] | None = None) -> list[str]:
    """Names of the 2-D trainable parameters to track.

    With ``patterns`` (regular expressions, ``re.search``): every 2-D parameter matching one.
    Without: every 2-D parameter inside the transformer layers (names containing ``layers.``
    or ``h.``), i.e. attention and MLP matrices, not embeddings or the output head.
    """
    names = [n for n, p in model.named_parameters() if p.ndim == 2 and p.requires_grad]
    if patterns is not None:
        compiled = [re.compile(p) for p in patterns]
        chosen = [n for n in names if any(c.search(n) for c in compiled)]
    else:
        chosen = [n for n in names if re.search(r"(^|\.)(layers|h)\.\d+\.", n)]
    if not chosen:
        raise ValueError(f"no 2-D parameter matches {list(patterns) if patterns else 'the layer default'}")
    return chosen


class UpdateStatsCallback(TrainerCallback):
    """Record per-step update statistics of chosen weight matrices (see the module docstring).

    Parameters
    ----------
    output_path:
        JSONL file to append rows to (``None``: keep rows in ``self.rows`` only).
    tensors:
        Regular expressions selecting 2-D parameters (default: all matrices inside layers).
    k:
        Subspace dimension for the angles (default: SPEC §4's per-matrix default).
    every:
        Record after every ``every``-th optimizer step (and always after the last).
    """

    def __init__(
        self,
        output_path: str | Path | None = None,
        *,
        tensors: Iterable[str] | None = None,
        k: int | None = None,
        every: int = 1,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be ≥ 1, got {every}")
        self.output_path = Path(output_path) if output_path is not None else None
        self.patterns = list(tensors) if tensors is not None else None
        self.k = k
        self.every = every
        self.rows: list[dict] = []
        self._names: list[str] = []
        self._base: dict[str, torch.Tensor] = {}
        self._base_sub: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._prev: dict[str, torch.Tensor] = {}
        self._prev_sub: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._pending: dict[str, float] | None = None

    def _k_for(self, shape) -> int:
        return min(self.k, *shape) if self.k is not None else default_k(tuple(shape))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        params = dict(model.named_parameters())
        self._names = select_matrices(model, self.patterns)
        for name in self._names:
            w = params[name].detach().float().clone()
            sub = top_singular_subspaces(w, self._k_for(w.shape))
            self._base[name] = self._prev[name] = w
            self._base_sub[name] = self._prev_sub[name] = sub

    def measure(self, model, step: int) -> list[dict]:
        """Rows for the current weights of ``model`` at ``step``; advances the 'previous' state."""
        params = dict(model.named_parameters())
        rows = []
        for name in self._names:
            w = params[name].detach().float().clone()
            k = self._k_for(w.shape)
            sub = top_singular_subspaces(w, k)
            rows.append(
                {
                    "step": int(step),
                    "tensor": name,
                    "k": k,
                    "bf16_visible_fraction": bf16_visible_fraction(self._base[name], w),
                    "update_fro": float(torch.linalg.norm(w - self._prev[name])),
                    "angle_to_prev_deg": top_k_angle_deg(self._prev_sub[name], sub),
                    "angle_to_base_deg": top_k_angle_deg(self._base_sub[name], sub),
                }
            )
            self._prev[name], self._prev_sub[name] = w, sub
        return rows

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self.every and step != state.max_steps:
            return
        rows = self.measure(model, step)
        self.rows.extend(rows)
        if self.output_path is not None and state.is_world_process_zero:
            append_jsonl(self.output_path, rows)
        n = len(rows)
        self._pending = {
            "step": step,
            "deltalens/bf16_visible_fraction": sum(r["bf16_visible_fraction"] for r in rows) / n,
            "deltalens/update_fro": math.sqrt(sum(r["update_fro"] ** 2 for r in rows)),
            "deltalens/angle_to_prev_deg": max(r["angle_to_prev_deg"] for r in rows),
            "deltalens/angle_to_base_deg": max(r["angle_to_base_deg"] for r in rows),
        }

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Add the latest record's summary (mean visible fraction, total update norm over the
        tracked matrices, largest angles) to the trainer's logs and its ``log_history``."""
        if self._pending is None or logs is None or ("loss" not in logs and "train_loss" not in logs):
            return
        summary = {k: v for k, v in self._pending.items() if k != "step"}
        logs.update(summary)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(summary)
        self._pending = None
