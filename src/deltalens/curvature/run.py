"""The library call behind ``deltalens curvature``: spectra, comparisons, writing (SPEC §9).

:func:`curvature_block` computes, for one block of parameters, the top-r eigenpairs of H and G
(Lanczos on Hessian- and GGN-vector products), of the loss-weighted and the plain logit eNTK
(Lanczos in function space, mapped to parameter space by v = Jᵀu/√λ, resp. Jᵀ B u/√λ), and of
the scalar log-prob eNTK (SPEC §6's exact kernel, eigh, v = J_fᵀu/√λ), then H − G along the
top directions. :func:`curvature_report` and :func:`pair_comparison` turn results into the
JSON-ready numbers; :func:`run_curvature` and :func:`run_curvature_pair` load, compute, write.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deltalens.curvature.compare import (
    angles_deg,
    curvature_rescale_share,
    eigenvalue_drift,
    pp_shares_of,
    random_subspace_angles_deg,
    residual_term,
    rotation_bound_deg,
    update_share,
    weight_frames,
)
from deltalens.curvature.lanczos import Eigenpairs, basis_bytes, residuals_of, top_eigenpairs
from deltalens.curvature.products import CurvatureProducts, check_jvp_mode, eager_attention, logprob_jt, top_vocabulary
from deltalens.curvature.store import DirectionStore
from deltalens.errors import DeltalensError
from deltalens.kernel.compare import kernel_spectrum
from deltalens.kernel.gradients import trainable_parameters
from deltalens.kernel.ntk import empirical_ntk
from deltalens.kernel.outputs import completion_logprob

KINDS = ("hessian", "gauss_newton", "entk_weighted", "entk_logits", "entk_logprob")
ANGLE_PAIRS = (("hessian", "gauss_newton"), ("gauss_newton", "entk_weighted"),
               ("gauss_newton", "entk_logits"), ("gauss_newton", "entk_logprob"))
LOSS_WORDS = ("L(θ) = mean over probes of the summed token cross-entropy of the completion (full vocabulary); "
              "H = ∇²L; G = (1/n) Σ J_zᵀ H_z J_z, H_z = diag(p) − ppᵀ per scored position, z = the logits there")
BASELINE_VECTORS = 4  # random unit directions for the residual term's baseline
PARAMETER_SPACE = "parameter space"
FUNCTION_SPACE = "function space"
Progress = Callable[[str, int, int], None]


@dataclass
class BlockCurvature:
    """Everything computed for one block: ``spectra[kind]`` (parameter-space directions in
    ``vectors``; for the kernels ``values``/``residuals`` are the kernel's own), H − G along the
    top H and G directions and along random ones, timings."""

    name: str
    names: list[str]
    n_params: int
    spectra: dict[str, Eigenpairs]
    residual: dict
    seconds: dict[str, float] = field(default_factory=dict)
    kernel_size: int = 0
    route: str = PARAMETER_SPACE


def _direction(jt_u: torch.Tensor) -> torch.Tensor:
    """Jᵀu/√λ as a unit vector (‖Jᵀu‖² = uᵀKu = λ for a unit eigenvector u)."""
    norm = torch.linalg.vector_norm(jt_u)
    return jt_u / norm if float(norm) > 0 else jt_u


class _Sink:
    """Where a kind's parameter-space directions go as they are computed: a list stacked into a
    P × r tensor, or a :class:`~deltalens.curvature.store.ColumnFile` of the run's store."""

    def __init__(self, store: DirectionStore | None, key: str, dim: int, top: int):
        self.file = None if store is None else store.open(key, dim, top)
        self.columns: list[torch.Tensor] = []

    def append(self, v: torch.Tensor) -> None:
        if self.file is not None:
            self.file.append(v)
        else:
            self.columns.append(v.detach().cpu().double())

    def result(self):
        return self.file if self.file is not None else torch.stack(self.columns, dim=1)


def _function_space(products: CurvatureProducts, pairs: Eigenpairs, *, weighted: bool, sinks: dict[str, _Sink],
                    keep_image: bool) -> dict[str, Eigenpairs]:
    """Parameter-space results of a kernel's Lanczos run (SPEC §9's map v = Cᵀu/‖Cᵀu‖, C = Bᵀ J or J).

    Per eigenvector u_j: t = Cᵀu_j (one backward), K u_j = C t (one JVP), the kernel's residual
    r_j = K u_j − μ_j u_j. ``sinks["kernel"]`` (entk_*) gets the kernel's eigenvalues and residuals
    ‖r_j‖. ``sinks["gauss_newton"]`` (weighted only) gets G's: with G = CᵀC/n,
    G v_j = (μ_j/n) v_j + Cᵀr_j/(n‖t‖) exactly, so λ_j = μ_j/n and the parameter-space residual is
    ‖Cᵀr_j‖/(n‖t‖) (one more backward); the image G V is kept when ``keep_image``."""
    n, top = products.n, pairs.values.numel()
    kernel_res, gn_res, image = [], [], []
    for j in range(top):
        u = pairs.vectors[:, j]
        parts = products.jt_parts(u, weighted)
        t = products.flat(parts).cpu()
        size = torch.linalg.vector_norm(t)
        r = products.outputs_along(parts, weighted=weighted).cpu() - pairs.values[j] * u
        kernel_res.append(torch.linalg.vector_norm(r))
        del parts
        v = t.div_(size) if float(size) > 0 else t  # in place: one P-vector of float64 less at the peak
        if "gauss_newton" in sinks:
            ct = products.jt_parts(r, True)  # Cᵀ r_j in the model's dtype: its norm needs no float64 copy
            gn_res.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x.double()) for x in ct]))
                          / (n * size))
            if keep_image:
                image.append(pairs.values[j] / n * v + products.flat(ct).cpu() / (n * size))
            del ct
        for sink in {id(x): x for x in sinks.values()}.values():  # G and entk_weighted may share one
            sink.append(v)
    out = {}
    if "kernel" in sinks:
        out["kernel"] = Eigenpairs(pairs.values, sinks["kernel"].result(), torch.stack(kernel_res), None,
                                   pairs.products, pairs.tolerance, pairs.next_value)
    if "gauss_newton" in sinks:
        nxt = None if pairs.next_value is None else pairs.next_value / n
        out["gauss_newton"] = Eigenpairs(pairs.values / n, sinks["gauss_newton"].result(), torch.stack(gn_res),
                                         torch.stack(image, dim=1) if keep_image else None, pairs.products,
                                         pairs.tolerance, nxt)
    return out


def curvature_block(
    model: torch.nn.Module,
    batch: dict,
    *,
    names: Sequence[str] | None = None,
    top: int = 10,
    vocab_index: torch.Tensor | None = None,
    seed: int = 0,
    tol: float = 1e-6,
    chunk_size: int = 64,
    label: str = "model",
    progress: Progress | None = None,
    operators: Sequence[str] = KINDS,
    route: str = PARAMETER_SPACE,
    store: DirectionStore | None = None,
    key: str = "",
    jvp: str = "dual",
) -> tuple[BlockCurvature, CurvatureProducts]:
    """Top-``top`` eigenpairs of the ``operators`` of SPEC §9 on one block (``names``; default the
    whole model), and H − G along their top directions when both are computed; returns the result
    and the products object (caches built, for a pair's products). ``route``, ``store`` (keys
    ``key + kind``): see :class:`Plan`; ``jvp``: :class:`CurvatureProducts`' J v mode."""
    operators = [kind for kind in KINDS if kind in operators]
    products = CurvatureProducts(model, batch, names=names, vocab_index=vocab_index, chunk_size=chunk_size, jvp=jvp)
    dim = products.dim
    if top >= dim:
        raise DeltalensError(f"--top {top}: block '{label}' has only {dim} parameters; ask for fewer than {dim}")
    if "entk_logprob" in operators and top > products.n:
        raise DeltalensError(f"--top {top}: the log-prob eNTK of {products.n} probes has {products.n} eigenvectors; "
                             f"give at least {top} probes or lower --top")
    spectra, seconds = {}, {}
    steps = len(operators) + 1
    done = [0]

    def step() -> None:
        if progress is not None:
            progress(f"curvature of {label}", done[0], steps)
        done[0] += 1

    def timed(kind: str, started: float) -> None:
        seconds[kind] = time.perf_counter() - started
        step()

    step()
    primal = [("hessian", products.hvp, "LM", "Hessian")]
    if route == PARAMETER_SPACE:
        primal.append(("gauss_newton", products.ggn_vp, "LA", "Gauss-Newton"))
    for kind, matvec, which, what in primal:
        if kind in operators:
            started = time.perf_counter()
            spectra[kind] = top_eigenpairs(matvec, dim, top, seed=seed, tol=tol, which=which, what=what)
            timed(kind, started)
    size = products.outputs if any(k in operators for k in ("entk_weighted", "entk_logits", "gauss_newton")) else 0
    for kernel_kind, weighted in (("entk_weighted", True), ("entk_logits", False)):
        sinks = {}
        if kernel_kind in operators:
            sinks["kernel"] = _Sink(store, key + kernel_kind, dim, top)
        if weighted and route == FUNCTION_SPACE and "gauss_newton" in operators:
            sinks["gauss_newton"] = sinks.get("kernel") or _Sink(store, key + "gauss_newton", dim, top)
        if not sinks:
            continue
        started = time.perf_counter()
        pairs = top_eigenpairs(lambda u, w=weighted: products.kernel_vp(u, weighted=w), size, top, seed=seed, tol=tol,
                               which="LA", what=f"{kernel_kind} kernel ({size} outputs)", check=False)
        results = _function_space(products, pairs, weighted=weighted, sinks=sinks, keep_image=store is None)
        for role, kind in (("gauss_newton", "gauss_newton"), ("kernel", kernel_kind)):
            if role in results:
                spectra[kind] = results[role]
                timed(kind, started)
    if "entk_logprob" in operators:
        started = time.perf_counter()
        spectra["entk_logprob"] = _logprob_kernel(model, batch, products, top, _Sink(store, key + "entk_logprob", dim, top))
        timed("entk_logprob", started)
    residual = {}
    if "hessian" in spectra and "gauss_newton" in spectra and store is None:
        started = time.perf_counter()
        residual = _residual_term(products, spectra["hessian"], spectra["gauss_newton"], top, seed)
        seconds["residual_term"] = time.perf_counter() - started
    block = BlockCurvature(label, list(products.names), dim, spectra, residual, seconds, size, route)
    return block, products


def _logprob_kernel(model, batch, products: CurvatureProducts, top: int, sink: _Sink) -> Eigenpairs:
    """SPEC §6's exact log-prob eNTK on the block, its top eigenpairs by eigh, directions J_fᵀu/√λ."""
    kernel = empirical_ntk(model, completion_logprob, batch, params=products.names).matrix
    values, vectors = kernel_spectrum(kernel)
    next_value = float(values[top]) if values.numel() > top else None
    values, vectors = values[:top], vectors[:, :top]
    residuals = residuals_of(values, vectors, kernel.double() @ vectors)
    for j in range(top):
        sink.append(_direction(logprob_jt(products, vectors[:, j]).cpu()))
    return Eigenpairs(values, sink.result(), residuals, None, 0, 0.0, next_value)


def _residual_term(products: CurvatureProducts, h: Eigenpairs, g: Eigenpairs, top: int, seed: int) -> dict:
    """H − G along H's and G's top directions and along random ones (2r + 2·BASELINE_VECTORS products)."""
    dim = products.dim
    g_on_h = torch.stack([products.ggn_vp(h.vectors[:, j]).cpu() for j in range(top)], dim=1)
    h_on_g = torch.stack([products.hvp(g.vectors[:, j]).cpu() for j in range(top)], dim=1)
    gen = torch.Generator().manual_seed(seed)
    rand = torch.randn(dim, BASELINE_VECTORS, generator=gen, dtype=torch.float64)
    rand /= torch.linalg.vector_norm(rand, dim=0)
    h_rand = torch.stack([products.hvp(rand[:, j]).cpu() for j in range(BASELINE_VECTORS)], dim=1)
    g_rand = torch.stack([products.ggn_vp(rand[:, j]).cpu() for j in range(BASELINE_VECTORS)], dim=1)
    return {
        "along_hessian": residual_term(h.vectors, h.image, g_on_h),
        "along_gauss_newton": residual_term(g.vectors, h_on_g, g.image),
        "random_directions": residual_term(rand, h_rand, g_rand),
        "output_residuals": products.output_residuals(),
        "loss_value": products.loss(),
    }


def _angle_pairs(block: BlockCurvature) -> list[tuple[str, str]]:
    """ANGLE_PAIRS whose two operators were computed separately (G by the function-space route
    *is* the loss-weighted kernel's Lanczos run: their angle is zero by construction, not measured)."""
    same = {("gauss_newton", "entk_weighted")} if block.route == FUNCTION_SPACE else set()
    return [(a, b) for a, b in ANGLE_PAIRS if a in block.spectra and b in block.spectra and (a, b) not in same]


def block_report(block: BlockCurvature, *, seed: int = 0) -> dict:
    """JSON-ready numbers of one block: each computed kind's eigenvalues, residuals and products;
    the principal angles of ANGLE_PAIRS with their random baselines; the residual term."""
    kinds = [kind for kind in KINDS if kind in block.spectra]
    top = block.spectra[kinds[0]].values.numel()
    report = {"n_params": block.n_params, "parameters": block.names, "logit_kernel_outputs": block.kernel_size,
              "operators": kinds}
    for kind in kinds:
        report[kind] = block.spectra[kind].summary()
    if "gauss_newton" in kinds:
        report["gauss_newton"]["route"] = block.route
    pairs = _angle_pairs(block)
    report["angles_deg"] = {f"{a}_vs_{b}": angles_deg(block.spectra[a].vectors, block.spectra[b].vectors)
                            for a, b in pairs}
    baseline = random_subspace_angles_deg(block.n_params, top, seed=seed)
    report["angles_baseline_deg"] = {f"{a}_vs_{b}": baseline for a, b in pairs}
    # a computed angle is within the sum of the two subspaces' Davis–Kahan bounds of the true one
    report["angles_error_bound_deg"] = {f"{a}_vs_{b}": block.spectra[a].error_bound_deg + block.spectra[b].error_bound_deg
                                        for a, b in pairs}
    report["residual_term"] = block.residual or None
    report["seconds"] = block.seconds
    return report


def _shapes(model: torch.nn.Module, names: Sequence[str]) -> list[tuple[str, torch.Size]]:
    params = trainable_parameters(model)
    return [(k, params[k].shape) for k in names]


def curvature_report(model: torch.nn.Module, whole: BlockCurvature, blocks: Sequence[BlockCurvature] = (), *,
                     n_probes: int, vocab: int | None, seed: int = 0, k: int | None = None) -> dict:
    """The ``curvature.json`` contract (SPEC §9): whole-model fields at the top level, per-matrix
    PP shares of every kind's top directions in the weights' top-k singular subspaces, ``blocks``."""
    kinds = [kind for kind in KINDS if kind in whole.spectra]
    report = {
        "loss": LOSS_WORDS,
        "n_params": whole.n_params,
        "n_probes": n_probes,
        "top": int(whole.spectra[kinds[0]].values.numel()),
        "vocab": "all" if vocab is None else vocab,
        "vocab_words": "all vocabulary entries at each scored position" if vocab is None else
        f"the base's top-{vocab} logits at each scored position (the loss and H still use the full vocabulary)",
        "eigenvalue_scales": "hessian, gauss_newton: of H and G (per probe); entk_*: of the kernels on all probes "
                             "(entk_weighted's are n × G's); residuals ‖A v − λ v‖ in each operator's own space",
    }
    body = block_report(whole, seed=seed)
    report.update({key: value for key, value in body.items() if key not in ("n_params", "parameters")})
    params = trainable_parameters(model)
    frames = weight_frames({name: params[name] for name in whole.names if params[name].ndim == 2}, k)
    shapes = _shapes(model, whole.names)
    report["pp_share"] = {kind: pp_shares_of(whole.spectra[kind].vectors, shapes, frames) for kind in kinds}
    report["blocks"] = {b.name: block_report(b, seed=seed) for b in blocks}
    return report


def curvature_arrays(whole: BlockCurvature, prefix: str = "", blocks: Sequence[BlockCurvature] = ()) -> dict:
    """``curvature.npz``: each computed kind's P × r directions (float64, columns the
    eigenvectors; tensors or :class:`~deltalens.curvature.store.ColumnFile` s); each ``--blocks``
    block's as ``block/<name>/<kind>`` (rows: the block's parameters in order)."""
    arrays = {f"{prefix}{kind}": pairs.vectors for kind, pairs in whole.spectra.items()}
    for block in blocks:
        arrays.update({f"{prefix}block/{block.name}/{kind}": pairs.vectors for kind, pairs in block.spectra.items()})
    return arrays


def pair_comparison(base: BlockCurvature, tuned: BlockCurvature, tuned_products: CurvatureProducts,
                    delta: torch.Tensor, *, seed: int = 0) -> dict:
    """Base → tuned, per kind computed on both: rotation of the top-r subspace (principal angles,
    random baseline), eigenvalue drift, the share of the update Δθ on the base's top directions
    (baseline r/P); for H and G also the rescale share of the curvature change along the base's
    top directions (propensity vs lability in Hessian/GN terms, :func:`curvature_rescale_share`)
    and the Davis–Kahan bound on the rotation (:func:`rotation_bound_deg`), which need the base's
    images A0 V0 in memory (not kept when the directions are streamed to disk).
    ``tuned_products`` must act on the same block as ``base`` (r more products per operator)."""
    out = {}
    kinds = [kind for kind in KINDS if kind in base.spectra and kind in tuned.spectra]
    top = base.spectra[kinds[0]].values.numel()
    baseline = random_subspace_angles_deg(base.n_params, top, seed=seed)
    for kind in kinds:
        s0, s1 = base.spectra[kind], tuned.spectra[kind]
        row = {
            "angles_deg": angles_deg(s0.vectors, s1.vectors),
            "angles_baseline_deg": baseline,
            "angles_error_bound_deg": s0.error_bound_deg + s1.error_bound_deg,
            "eigenvalue_drift": eigenvalue_drift(s0.values, s1.values),
            "update_share": update_share(s0.vectors, delta),
        }
        if kind in ("hessian", "gauss_newton"):
            if s0.image is None:
                row["curvature_change"] = None
                row["curvature_change_reason"] = ("not computed: the directions are streamed to disk, and the "
                                                  "rescale share needs A0 V0 and A1 V0 (2·P·r values) in memory")
            else:
                apply = tuned_products.hvp if kind == "hessian" else tuned_products.ggn_vp
                image1 = torch.stack([apply(s0.vectors[:, j]).cpu() for j in range(top)], dim=1)
                row["curvature_change"] = curvature_rescale_share(s0.vectors, s0.image, image1)
                row["curvature_change"]["rotation_bound_deg"] = rotation_bound_deg(s0.vectors, s0.values, image1,
                                                                                   s1.next_value)
        out[kind] = row
    return out


# ---------------------------------------------------------------------------------- drivers


def block_groups(names: Sequence[str], patterns: Sequence[str]) -> dict[str, list[str]]:
    """``--blocks REGEX ...``: each parameter goes to the block named by the text the first
    matching pattern matches in its name (``re.search``), so ``layers\\.\\d+\\.`` gives one block
    per layer and ``.*proj\\.weight`` one per matrix. Parameters no pattern matches are left out."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise DeltalensError(f"--blocks {pattern!r}: not a valid regular expression ({exc})") from None
    groups: dict[str, list[str]] = {}
    for name in names:
        for rx in compiled:
            m = rx.search(name)
            if m and m.group(0):
                groups.setdefault(m.group(0), []).append(name)
                break
    if patterns and not groups:
        raise DeltalensError(f"--blocks {' '.join(patterns)}: no parameter name matches")
    return groups


def load_for_curvature(source, *, device=None, dtype: str | None = "float32", tokenizer=None):
    """``(model, tokenizer)`` ready for curvature products: the one model loader
    (:func:`deltalens.models.load_model`), then eager attention (forward-mode AD fails through SDPA)."""
    from deltalens.kernel.run import Loading

    net, tok = Loading().load(source, device=device, dtype=dtype, tokenizer=tokenizer)
    return eager_attention(net), tok


def encode_all(model, tokenizer, probes) -> tuple[dict, int]:
    """Every probe (no ``--limit``) encoded for ``model``: (batch on the model's device, n)."""
    from deltalens.kernel.run import Loading

    return _encode(model, tokenizer, probes, Loading())


def _encode(model, tokenizer, probes, loading) -> tuple[dict, int]:
    from deltalens.kernel.outputs import encode_probes, model_context_length

    lines, what = loading.lines(probes, "probes")
    if tokenizer is None:
        raise DeltalensError(f"{what}: a tokenizer is needed to encode text probes")
    batch = encode_probes(tokenizer, lines, max_length=model_context_length(model), source=what)
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}, len(lines)


def _check(top: int, vocab: int | None, jvp: str = "dual") -> None:
    check_jvp_mode(jvp)
    if top < 1:
        raise DeltalensError(f"--top: must be ≥ 1, got {top}")
    if vocab is not None and vocab < 1:
        raise DeltalensError(f"--vocab: must be ≥ 1, got {vocab}")


@dataclass
class Plan:
    """How a run computes (decided from P, r and the memory budget before any work, SPEC §9):
    the ``operators``, G's Lanczos ``route``, and whether the directions are ``stream``-ed to disk."""

    operators: tuple[str, ...]
    route: str
    stream: bool
    budget_bytes: int

    def summary(self) -> dict:
        return {"operators": list(self.operators), "gauss_newton_route": self.route,
                "directions_streamed_to_disk": self.stream, "memory_budget_mb": self.budget_bytes / 2**20}


def parse_operators(operators: Sequence[str] | str | None) -> tuple[str, ...]:
    """``--operators``: names of KINDS, comma-separated or repeated (None: all five), in KINDS order."""
    if operators is None:
        return KINDS
    items = [operators] if isinstance(operators, str) else list(operators)
    names = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if not names:
        raise DeltalensError(f"--operators: expected one or more of {', '.join(KINDS)}")
    for name in names:
        if name not in KINDS:
            raise DeltalensError(f"--operators: unknown operator '{name}' (choose from {', '.join(KINDS)})")
    return tuple(kind for kind in KINDS if kind in names)


def plan_curvature(n_params: int, top: int, operators: Sequence[str], *, memory_budget_mb: float | None = None,
                   device: str = "cpu", streamable: bool = True) -> Plan:
    """The :class:`Plan` for a model of ``n_params`` parameters. Budget: ``memory_budget_mb`` or
    the kernel's default (a quarter of the free memory as a power of two, 256–4096 MiB).

    - The Hessian needs its Lanczos basis (:func:`~deltalens.curvature.lanczos.basis_bytes`,
      ncv × P float64) in memory: over the budget it is an error, before any work.
    - G runs in parameter space when that basis fits, otherwise in function space (the
      loss-weighted kernel's Lanczos, a ncv × N basis over the N = M × V outputs).
    - The directions (P × r float64 per operator) are held in memory when all of them fit, and
      streamed to disk otherwise (``streamable``: an output folder exists to hold them)."""
    from deltalens.kernel.ntk import default_memory_budget_mb

    mb = memory_budget_mb if memory_budget_mb is not None else default_memory_budget_mb(device)
    if not (mb > 0 and math.isfinite(mb)):
        raise DeltalensError(f"--memory-budget-mb: must be a positive number of MiB, got {mb}")
    budget = int(mb * 2**20)
    basis = basis_bytes(n_params, top)
    if "hessian" in operators and basis > budget:
        raise DeltalensError(
            f"--operators hessian: Lanczos on H keeps a basis of {basis / 1e9:.3g} GB for {n_params} parameters, over "
            f"the memory budget ({mb:g} MiB); leave the Hessian out (e.g. --operators gauss_newton), use --blocks, or "
            "raise --memory-budget-mb")
    route = PARAMETER_SPACE if basis <= budget else FUNCTION_SPACE
    directions = n_params * top * 8 * len(operators)
    stream = directions > budget
    if stream and not streamable:
        raise DeltalensError(f"the top-{top} directions of {len(operators)} operator(s) take {directions / 1e9:.3g} GB, "
                             f"over the memory budget ({mb:g} MiB): give an output folder (out=...) to stream them to disk")
    return Plan(tuple(operators), route, stream, budget)


def _all_blocks(model, batch, patterns, vocab_index, progress, *, plan: Plan, store, prefix: str = "",
                **options) -> list[BlockCurvature]:
    """The whole model first, then each ``--blocks`` group; each block's cached graphs are
    dropped once it is done, so memory holds one block's caches at a time."""
    groups = [("model", None), *block_groups(list(trainable_parameters(model)), patterns or ()).items()]
    out = []
    for i, (name, names) in enumerate(groups):
        block, products = curvature_block(model, batch, names=names, vocab_index=vocab_index, label=name,
                                          progress=progress, operators=plan.operators, route=plan.route,
                                          store=store, key=f"{prefix}{i}:{name}/", **options)
        products.release()
        out.append(block)
    return out


def _write(out, report: dict, arrays: dict) -> Path:
    from deltalens.curvature.store import write_npz
    from deltalens.results import write_json, write_stream

    out = Path(out)
    write_stream(out / "curvature.npz", lambda fh: write_npz(fh, arrays))
    return write_json(out / "curvature.json", report)


def _check_disk(out, directions: int) -> None:
    """A streamed run writes its directions twice under ``out`` (the temporary column files, then
    curvature.npz): refuse it in one line, before any work, when the disk cannot hold that."""
    import shutil

    where = Path(out).absolute()
    while not where.exists() and where != where.parent:  # the folder may not exist yet: its disk is its parent's
        where = where.parent
    need, free = 2 * directions, shutil.disk_usage(where).free
    if need > free:
        raise DeltalensError(f"{out}: the streamed directions need about {need / 1e9:.3g} GB of disk (temporary files "
                             f"and curvature.npz) and {free / 1e9:.3g} GB are free; choose another --out or fewer "
                             "--operators / a smaller --top")


def _prepare(sources: Sequence, probes, *, out, tokenizer, top, vocab, device, dtype, chunk_size, loading,
             operators=None, memory_budget_mb=None, jvp="dual", blocks=None):
    """Check the options and the output folder, load the models (the first one's tokenizer for
    all; ``loading``: :class:`deltalens.kernel.run.Loading`), plan, encode the probes, choose the
    base's top-V columns: (models, batch, n, vocab_index, plan)."""
    from deltalens.results import check_output_dir

    _check(top, vocab, jvp)
    operators = parse_operators(operators)
    if out is not None:
        check_output_dir(out, ["curvature.json", "curvature.npz"])
    sources = loading.sources(list(sources))
    net0, tok = loading.load(sources[0], device=device, dtype=dtype, tokenizer=tokenizer)
    nets = [net0] + [loading.load(s, device=device, dtype=dtype, tokenizer=tok)[0] for s in sources[1:]]
    nets = [eager_attention(net) for net in nets]
    n_params = sum(p.numel() for p in trainable_parameters(net0).values())
    if top >= n_params:
        raise DeltalensError(f"--top {top}: the model has only {n_params} parameters; ask for fewer than {n_params}")
    plan = plan_curvature(n_params, top, operators, memory_budget_mb=memory_budget_mb,
                          device=str(next(net0.parameters()).device), streamable=out is not None)
    if plan.stream:
        _check_disk(out, n_params * top * 8 * len(operators) * len(nets) * (2 if blocks else 1))
    batch, n = _encode(nets[0], tok, probes, loading)
    vocab_index = None if vocab is None else top_vocabulary(net0, batch, vocab, chunk_size=chunk_size)
    return nets, batch, n, vocab_index, plan


def _measure(net, batch, n: int, vocab_index, *, blocks, vocab, k, seed, progress, **options):
    """Whole model and blocks of one model: ([whole, *blocks], report)."""
    parts = _all_blocks(net, batch, blocks, vocab_index, progress, seed=seed, **options)
    report = curvature_report(net, parts[0], parts[1:], n_probes=n, vocab=vocab, seed=seed, k=k)
    report.update(dtype=str(next(net.parameters()).dtype).replace("torch.", ""), seed=seed,
                  plan=options["plan"].summary())
    return parts, report


def _models(base, tuned) -> dict:
    """``models`` (the base and tuned sources as given; ``tuned`` is the tuned model's report) and
    their content ``fingerprints``, as the diff and the kernel record them, so ``deltalens report``
    puts this pair in the same column as theirs."""
    from deltalens.fingerprint import model_fingerprint

    named = [str(s) if isinstance(s, (str, os.PathLike)) else None for s in (base, tuned)]
    return {"models": {"base": named[0], "tuned": named[1]},
            "fingerprints": {"base": model_fingerprint(base), "tuned": model_fingerprint(tuned)}}


def _store(out, plan: Plan):
    from deltalens.curvature.store import DirectionStore

    return DirectionStore(Path(out) / f".curvature-directions.{os.getpid()}.x.tmp") if plan.stream else None


def _finish(out, report: dict, arrays: dict, store) -> dict:
    """Write the outputs; a streamed run's arrays are then read from the npz (lazily, by name)."""
    if out is not None:
        _write(out, report, arrays)
    if store is None:
        return arrays
    import numpy as np

    return np.load(Path(out) / "curvature.npz")


def run_curvature(model, probes, *, out=None, tokenizer=None, top: int = 10, vocab: int | None = None,
                  blocks: Sequence[str] | None = None, device: str | None = None, dtype: str | None = "float32",
                  seed: int = 0, tol: float = 1e-6, k: int | None = None, chunk_size: int = 64,
                  progress: Progress | None = None, revision: str | None = None, trust_remote_code: bool = False,
                  limit: int | None = None, operators: Sequence[str] | str | None = None,
                  memory_budget_mb: float | None = None, jvp: str = "dual") -> tuple[dict, dict]:
    """``deltalens curvature MODEL``: the report and arrays of :func:`curvature_report` /
    :func:`curvature_arrays` for a model (a folder or a module) on ``{prompt, completion}`` probes
    (a JSONL path or a list), written to ``out`` when given. ``dtype=None`` keeps a module's.
    ``model`` may be a hub id (at ``revision``); ``tokenizer`` an object, a folder or a hub id;
    ``limit``: the first N probes (of each task); ``operators``: a subset of KINDS;
    ``memory_budget_mb``: see :func:`plan_curvature` (directions over it go to disk under ``out``,
    and the arrays returned are then ``numpy.load`` of the written npz); ``jvp``: ``"dual"`` or
    ``"linearize"`` (:meth:`CurvatureProducts._jvp`)."""
    from deltalens.kernel.run import Loading

    (net,), batch, n, vocab_index, plan = _prepare(
        [model], probes, out=out, tokenizer=tokenizer, top=top, vocab=vocab, device=device, dtype=dtype,
        chunk_size=chunk_size, loading=Loading(revision, trust_remote_code, limit), operators=operators,
        memory_budget_mb=memory_budget_mb, jvp=jvp, blocks=blocks)
    store = _store(out, plan)
    try:
        parts, report = _measure(net, batch, n, vocab_index, blocks=blocks, vocab=vocab, k=k, seed=seed,
                                 progress=progress, top=top, tol=tol, chunk_size=chunk_size, plan=plan, store=store,
                                 jvp=jvp)
        return report, _finish(out, report, curvature_arrays(parts[0], blocks=parts[1:]), store)
    finally:
        if store is not None:
            store.cleanup()


def run_curvature_pair(base, tuned, probes, *, out=None, tokenizer=None, top: int = 10, vocab: int | None = None,
                       blocks: Sequence[str] | None = None, device: str | None = None, dtype: str | None = "float32",
                       seed: int = 0, tol: float = 1e-6, k: int | None = None, chunk_size: int = 64,
                       progress: Progress | None = None, revision: str | None = None,
                       trust_remote_code: bool = False, limit: int | None = None,
                       operators: Sequence[str] | str | None = None,
                       memory_budget_mb: float | None = None, jvp: str = "dual") -> tuple[dict, dict]:
    """``deltalens curvature BASE TUNED``: the base's report (the single-model contract) plus
    ``tuned`` (its report) and ``pair``: ``{"model": ..., "blocks": {name: ...}}`` of
    :func:`pair_comparison`.
    Both are scored on the base's tokenization (and with ``vocab``, on the base's top-V columns).
    Arrays: the base's under the contract names, the tuned's as ``tuned_<kind>``."""
    from deltalens.kernel.run import Loading, parameter_delta

    (net0, net1), batch, n, vocab_index, plan = _prepare(
        [base, tuned], probes, out=out, tokenizer=tokenizer, top=top, vocab=vocab, device=device, dtype=dtype,
        chunk_size=chunk_size, loading=Loading(revision, trust_remote_code, limit), operators=operators,
        memory_budget_mb=memory_budget_mb, jvp=jvp, blocks=blocks)
    store = _store(out, plan)
    options = dict(blocks=blocks, vocab=vocab, k=k, seed=seed, progress=progress, top=top, tol=tol,
                   chunk_size=chunk_size, plan=plan, store=store, jvp=jvp)
    try:
        parts0, report = _measure(net0, batch, n, vocab_index, **options)
        parts1, report["tuned"] = _measure(net1, batch, n, vocab_index, prefix="tuned/", **options)
        delta = parameter_delta(net0, net1)
        pair = []
        for b0, b1 in zip(parts0, parts1):  # r more products per operator on the tuned model, block by block
            flat = torch.cat([delta[name].reshape(-1) for name in b0.names]).double().cpu()
            products = CurvatureProducts(net1, batch, names=b0.names, vocab_index=vocab_index, chunk_size=chunk_size,
                                         jvp=jvp)
            pair.append(pair_comparison(b0, b1, products, flat, seed=seed))
            products.release()
        report["pair"] = {"model": pair[0], "blocks": {b.name: row for b, row in zip(parts0[1:], pair[1:])}}
        report.update(_models(base, tuned))
        arrays = curvature_arrays(parts0[0], blocks=parts0[1:])
        arrays.update(curvature_arrays(parts1[0], "tuned_", blocks=parts1[1:]))
        return report, _finish(out, report, arrays, store)
    finally:
        if store is not None:
            store.cleanup()
