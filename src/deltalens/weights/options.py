"""Options of a weight diff, recorded in ``diff.json`` so every number says how it was computed."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from deltalens.errors import DeltalensError
from deltalens.weights.sparsity import DEFAULT_ETA, DEFAULT_TOLS

DEFAULT_METRICS = ("sparsity", "size", "rank", "spectral", "frame")


@dataclass(frozen=True)
class DiffOptions:
    """``metrics``: groups to run; ``tols``: absolute tolerances; ``eta``: relative rule's η;
    ``visible_dtype``: "bf16" to report bf16 visibility even when the base is not bf16;
    ``top_k``: ints or fractions of min(m, n) for the spectral/frame groups; ``exact``: exact
    SVD-based methods instead of the fast ones; ``device``: "cpu" or "cuda"."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
    tols: tuple[float, ...] = DEFAULT_TOLS
    eta: float = DEFAULT_ETA
    visible_dtype: str | None = None
    top_k: tuple[float, ...] = ()
    exact: bool = False
    device: str = "cpu"
    allow_pickle: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def make_options(*, metrics=None, tols=None, eta=None, visible_dtype=None, top_k=None, exact=False,
                 device="cpu", allow_pickle=False) -> DiffOptions:
    """Validate user options into :class:`DiffOptions` (one-line errors naming the option)."""
    from deltalens.weights.groups import METRIC_GROUPS

    if metrics is None or metrics == () or metrics == "all":
        metrics = tuple(g for g in METRIC_GROUPS)
    if isinstance(metrics, str):
        metrics = tuple(m.strip() for m in metrics.split(",") if m.strip())
    metrics = tuple(dict.fromkeys(metrics))
    for m in metrics:
        if m not in METRIC_GROUPS:
            known = ", ".join(METRIC_GROUPS)
            raise DeltalensError(f"--metrics: unknown group '{m}'; expected some of: {known}")
    tols = tuple(float(t) for t in (tols if tols else DEFAULT_TOLS))
    if any(t < 0 for t in tols):
        raise DeltalensError("--tol: tolerances must be ≥ 0")
    eta = DEFAULT_ETA if eta is None else float(eta)
    if not 0 <= eta < 1:
        raise DeltalensError(f"--eta: expected 0 ≤ η < 1, got {eta}")
    if visible_dtype not in (None, "bf16", "bfloat16"):
        raise DeltalensError(f"--visible-dtype: only 'bf16' is supported, got '{visible_dtype}'")
    visible_dtype = "bf16" if visible_dtype else None
    top_k = tuple(float(k) if float(k) < 1 else int(k) for k in (top_k or ()))
    if any(k <= 0 for k in top_k):
        raise DeltalensError("--top-k: expected positive integers or fractions in (0, 1)")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise DeltalensError(f"--device: expected 'cpu' or 'cuda', got '{device}'")
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DeltalensError("--device cuda: no CUDA device is available to this process")
    return DiffOptions(tuple(metrics), tols, eta, visible_dtype, top_k, bool(exact), str(device), bool(allow_pickle))
