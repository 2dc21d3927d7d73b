"""The registry of metric groups the diff driver runs (``--metrics``).

A group declares the scalar fields it adds to each tensor row and how each is aggregated per
module, per layer and over the model:

- ``fraction``: parameter-weighted mean (Σ numel·x / Σ numel) — a dict value is averaged per key;
- ``value``: mean and max over tensors (``<field>_mean``, ``<field>_max``);
- ``count``: sum; ``rss``: root of the sum of squares (e.g. ‖Δ‖_F over a module).

Streaming groups (``sparsity``, ``size``) are computed by the driver's chunked pass over the
stored tensors. Matrix groups have ``compute(w0, w1, ctx) -> dict`` with w0, w1 from
:func:`matrix_operands` on ``ctx.options.device`` (float32 copies, or for tensors above 2²⁶
elements the stored dtype: cast those chunk by chunk) and run on 2-D tensors; each returns its
declared fields. What several groups need is an explicit, lazily computed and cached property of
the :class:`MetricContext`, so no result depends on the order of ``--metrics``: ``delta`` (Δ in
at least float32), ``delta_fro2`` (‖Δ‖_F², from the streaming pass when it ran), ``delta_top``
(σ1(Δ) by power iteration, shared by ``rank`` and ``spectral`` on the top route), ``changed``
(the bitwise update mask) and ``spectral`` (one §4–§5 frame for the ``spectral`` and ``frame``
groups). The built-in groups are the module constants listed in :data:`METRIC_GROUPS`; adding one
is a function and a :func:`register_group` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

from deltalens.weights import rank as rank_mod
from deltalens.weights.sparsity import bitwise_changed


@dataclass(frozen=True)
class AggField:
    name: str
    kind: str  # "fraction" (params-weighted) | "energy" (‖Δ‖²-weighted) | "value" | "count" | "rss": weights/aggregate.py


@dataclass(frozen=True)
class MetricGroup:
    name: str
    fields: tuple[AggField, ...]
    compute: Callable[..., dict] | None = None  # None: computed by the streaming pass
    row_fields: tuple[str, ...] = ()  # non-aggregated fields the group adds (e.g. method labels)
    only_2d: bool = True


@dataclass
class MetricContext:
    """What a matrix group may need besides w0 and w1 (all lazily computed, then cached)."""

    name: str
    module: str
    layer: int | None
    raw0: torch.Tensor  # stored dtype, possibly memory-mapped
    raw1: torch.Tensor
    w0: torch.Tensor  # matrix_operands(): float32, or the stored dtype above 2²⁶ elements; NaN/Inf zeroed
    w1: torch.Tensor
    options: object  # DiffOptions
    streamed_fro2: float | None = None  # ‖Δ‖_F² from the streaming pass, when it ran the size group

    @classmethod
    def after_stream(cls, stats: dict, *args) -> "MetricContext":
        """The context of a tensor whose streaming pass (sparsity/size) gave ``stats``: its
        ‖Δ‖_F² (over finite entries, where the matrix groups' zeroed operands agree) is kept, so
        :attr:`delta_fro2` makes no pass of its own."""
        fro = stats.get("delta_fro")
        return cls(*args, streamed_fro2=None if fro is None else fro ** 2)

    @cached_property
    def delta_fro2(self) -> float:
        """‖Δ‖_F², from the streaming pass or else one float64-summed pass over row chunks."""
        if self.streamed_fro2 is not None:
            return self.streamed_fro2
        delta = self.delta_in_memory
        return float(torch.linalg.vector_norm(delta)) ** 2 if delta is not None else _delta_fro2(self.w0, self.w1)

    @property
    def top_route(self) -> bool:
        """Whether fast mode takes the top-q route for this matrix (min(m, n) > FULL_FRAME_MAX)."""
        from deltalens.weights.spectral import FULL_FRAME_MAX

        return not self.options.exact and min(self.w0.shape) > FULL_FRAME_MAX

    @cached_property
    def delta_top(self):
        """σ1(Δ) by block power iteration (:func:`deltalens.weights.spectral.delta_top_singular_values`),
        computed once for whichever group asks first (rank, spectral)."""
        from deltalens.weights.spectral import delta_top_singular_values

        return delta_top_singular_values(self.w0, self.w1, device=self.w0.device, delta=self.delta_in_memory)

    @cached_property
    def spectral(self) -> dict:
        """SPEC §4–§5 for the selected ``spectral``/``frame`` groups from one frame of W0 and W1
        (:func:`deltalens.weights.spectral.spectral_metrics`), shared by both groups; on the top
        route it reuses :attr:`delta_top`."""
        from deltalens.weights.spectral import spectral_metrics

        wanted = tuple(g for g in SPECTRAL_GROUPS if g in self.options.metrics)
        return spectral_metrics(self.w0, self.w1, top_k=self.options.top_k, exact=self.options.exact,
                                device=self.options.device, changed=self.changed, groups=wanted,
                                delta_spectral=float(self.delta_top.s[0]) if self.top_route else None,
                                delta=self.delta_in_memory)

    @cached_property
    def changed(self) -> torch.Tensor:
        """Bitwise update mask (SPEC §2), bool, on the options' device."""
        return bitwise_changed(self.raw0, self.raw1).to(self.w0.device)

    @property
    def delta_in_memory(self) -> torch.Tensor | None:
        """:attr:`delta` when the operands are in-memory float32 copies (≤ ``FLOAT32_COPY_MAX``
        elements; then one Δ serves every pass), None above (groups form Δ chunk by chunk)."""
        return self.delta if self.w0.numel() <= FLOAT32_COPY_MAX else None

    @cached_property
    def delta(self) -> torch.Tensor:
        """Δ = W1 − W0 in float32 (float64 for float64 inputs); exact for bf16/fp16 inputs."""
        dtype = torch.promote_types(self.w0.dtype, torch.float32)
        return self.w1.to(dtype) - self.w0.to(dtype)


METRIC_GROUPS: dict[str, MetricGroup] = {}
FLOAT32_COPY_MAX = 1 << 26  # elements: matrix groups get float32 copies up to this size


def matrix_operands(t0: torch.Tensor, t1: torch.Tensor, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What the matrix groups get: float32 copies on ``device`` up to ``FLOAT32_COPY_MAX``
    elements (a cast per pass and chunk would cost more than the products), the stored tensors
    above it (no whole copy: 2 × 0.9 GB for a 151936×1536 embedding; the groups cast chunk by
    chunk). Float64 stays float64."""
    if t0.numel() <= FLOAT32_COPY_MAX:
        dtype = torch.promote_types(t0.dtype, torch.float32)
        return t0.to(device, dtype), t1.to(device, dtype)
    return t0.to(device), t1.to(device)


def register_group(group: MetricGroup) -> MetricGroup:
    """Add (or replace) a metric group in the registry; returns it."""
    METRIC_GROUPS[group.name] = group
    return group


def aggregated_fields(groups) -> list[AggField]:
    """Declared aggregate fields of the selected groups, in order."""
    return [f for name in groups for f in METRIC_GROUPS[name].fields]


def compute_rank(w0: torch.Tensor, w1: torch.Tensor, ctx: MetricContext) -> dict:
    """SPEC §3 rank measures of Δ = w1 − w0, with the method that produced σ(Δ)."""
    shape = tuple(w0.shape)
    if ctx.top_route:
        top = ctx.delta_top
        out = rank_mod.rank_measures_top(float(top.s[0]), ctx.delta_fro2)
        out["numerical_rank_fraction"] = None
        out["rank_method"] = f"power-top-float32 ({top.s.numel()} columns, {top.iterations} iterations; σ1 only)"
        return out
    delta = ctx.delta
    if ctx.options.exact:
        sigma, method = rank_mod.singular_values_exact(delta), "svdvals-float32"
    else:
        sigma, method = rank_mod.singular_values_gram(delta), "gram-eigvalsh-float64"
    out = rank_mod.rank_measures(sigma.cpu(), shape)
    out["numerical_rank_fraction"] = out["numerical_rank"] / min(shape) if min(shape) else None
    out["rank_method"] = method
    return out


def _delta_fro2(w0: torch.Tensor, w1: torch.Tensor) -> float:
    """‖w1 − w0‖_F² summed in float64 over row chunks (no whole-matrix copy of Δ)."""
    from deltalens.linalg import row_chunks

    dt = torch.promote_types(w0.dtype, torch.float32)  # exact differences for bf16/fp16 inputs
    return sum(float(torch.linalg.vector_norm(d, dtype=torch.float64)) ** 2 for _, d in row_chunks(w1, w0, w0.device, dt))


STREAMING_GROUPS = ("sparsity", "size")  # computed by the driver's chunked pass (compute is None)
ALWAYS_FIELDS = (AggField("nonfinite", "count"),)
SPECTRAL_GROUPS = ("spectral", "frame")


def _declared(group: str, out: dict) -> dict:
    """The fields group ``group`` declares (aggregated and row fields), taken from ``out``."""
    g = METRIC_GROUPS[group]
    return {name: out[name] for name in (*(f.name for f in g.fields), *g.row_fields) if name in out}


def compute_spectral(w0: torch.Tensor, w1: torch.Tensor, ctx: MetricContext) -> dict:
    """SPEC §4 (``spectral``) from the shared frame :attr:`MetricContext.spectral`. For per-module
    and per-layer aggregation the row also gets flat ``angle_max_left_deg`` /
    ``angle_max_right_deg``: the max angles at the smallest k requested for this tensor (None when
    that k is ``unresolved``: aggregates leave it out), and the counts ``angles_unresolved`` and
    ``angles_gap_limited`` (0 or 1 per tensor, summed by the aggregates).
    """
    out = dict(ctx.spectral)
    if out["by_k"]:
        first = out["by_k"][min(out["by_k"], key=int)]
        unresolved = bool(first.get("unresolved"))  # left out of every aggregate, and counted
        out["angle_max_left_deg"] = None if unresolved else first.get("angle_max_left_deg")
        out["angle_max_right_deg"] = None if unresolved else first.get("angle_max_right_deg")
        out["angles_unresolved"] = int(unresolved)
        out["angles_gap_limited"] = int(bool(first.get("gap_limited")))
    return _declared("spectral", out)


def compute_frame(w0: torch.Tensor, w1: torch.Tensor, ctx: MetricContext) -> dict:
    """SPEC §5 (``frame``) from the shared frame :attr:`MetricContext.spectral`."""
    return _declared("frame", ctx.spectral)


SPARSITY = MetricGroup(
    "sparsity",
    (AggField("unchanged_bitwise", "fraction"), AggField("unchanged_relative", "fraction"),
     AggField("unchanged_absolute", "fraction"), AggField("visible_fraction", "fraction"),
     AggField("vanishing_fraction", "fraction")),
    only_2d=False,
)
SIZE = MetricGroup(
    "size",
    (AggField("delta_fro", "rss"), AggField("delta_rel", "value"), AggField("delta_max_abs", "value")),
    only_2d=False,
)
RANK = MetricGroup(
    "rank",
    (AggField("delta_spectral", "value"), AggField("numerical_rank", "value"),
     AggField("numerical_rank_fraction", "fraction"), AggField("effective_rank", "value"),
     AggField("stable_rank", "value"), AggField("energy_rank_90", "value"),
     AggField("energy_rank_99", "value"), AggField("rank1_share", "value")),
    compute=compute_rank,
    row_fields=("rank_method",),
)
SPECTRAL = MetricGroup(
    "spectral",
    (AggField("angle_max_left_deg", "value"), AggField("angle_max_right_deg", "value"), AggField("nss", "value"),
     AggField("angles_unresolved", "count"), AggField("angles_gap_limited", "count")),
    compute=compute_spectral,
    row_fields=("by_k", "method", "nss_scope"),
)
FRAME = MetricGroup(
    "frame",
    (AggField("rescale_share", "energy"), AggField("rescale_baseline", "energy"),
     AggField("principal_overlap", "value"), AggField("low_overlap", "value")),
    compute=compute_frame,
    row_fields=("by_k", "method", "rescale_ratio", "rescale_share_upper", "rescale_scope", "overlap_baseline"),
)
METRIC_GROUPS.update({g.name: g for g in (SPARSITY, SIZE, RANK, SPECTRAL, FRAME)})
