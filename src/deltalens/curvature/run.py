"""The library call behind ``deltalens curvature``: spectra, comparisons, writing (SPEC §9).

:func:`curvature_block` computes, for one block of parameters, the top-r eigenpairs of H and G
(Lanczos on Hessian- and GGN-vector products), of the loss-weighted and the plain logit eNTK
(Lanczos in function space, mapped to parameter space by v = Jᵀu/√λ, resp. Jᵀ B u/√λ), and of
the scalar log-prob eNTK (SPEC §6's exact kernel, eigh, v = J_fᵀu/√λ), then H − G along the
top directions. :func:`curvature_report` and :func:`pair_comparison` turn results into the
JSON-ready numbers; :func:`run_curvature` and :func:`run_curvature_pair` load, compute, write.
"""

from __future__ import annotations

import io
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
    pp_shares,
    random_subspace_angles_deg,
    residual_term,
    update_share,
    weight_frames,
)
from deltalens.curvature.lanczos import Eigenpairs, residuals_of, top_eigenpairs
from deltalens.curvature.products import CurvatureProducts, eager_attention, logprob_jt, top_vocabulary
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


def _direction(jt_u: torch.Tensor) -> torch.Tensor:
    """Jᵀu/√λ as a unit vector (‖Jᵀu‖² = uᵀKu = λ for a unit eigenvector u)."""
    norm = torch.linalg.vector_norm(jt_u)
    return jt_u / norm if float(norm) > 0 else jt_u


def _as_directions(pairs: Eigenpairs, directions: torch.Tensor) -> Eigenpairs:
    return Eigenpairs(pairs.values, directions, pairs.residuals, None, pairs.products, pairs.tolerance,
                      pairs.next_value)


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
) -> tuple[BlockCurvature, CurvatureProducts]:
    """Top-``top`` eigenpairs of the five operators of SPEC §9 on one block (``names``; default
    the whole model), and H − G along their top directions. Returns the result and the products
    object (its caches still built, for more products, e.g. a pair's)."""
    products = CurvatureProducts(model, batch, names=names, vocab_index=vocab_index, chunk_size=chunk_size)
    dim = products.dim
    if top >= dim:
        raise DeltalensError(f"--top {top}: block '{label}' has only {dim} parameters; ask for fewer than {dim}")
    if top > products.n:
        raise DeltalensError(f"--top {top}: the log-prob eNTK of {products.n} probes has {products.n} eigenvectors; "
                             f"give at least {top} probes or lower --top")
    spectra, seconds = {}, {}
    steps = len(KINDS) + 1

    def step(i: int) -> None:
        if progress is not None:
            progress(f"curvature of {label}", i, steps)

    step(0)
    started = time.perf_counter()
    spectra["hessian"] = top_eigenpairs(products.hvp, dim, top, seed=seed, tol=tol, which="LM", what="Hessian")
    seconds["hessian"] = time.perf_counter() - started
    step(1)
    started = time.perf_counter()
    spectra["gauss_newton"] = top_eigenpairs(products.ggn_vp, dim, top, seed=seed, tol=tol, which="LA", what="Gauss-Newton")
    seconds["gauss_newton"] = time.perf_counter() - started
    step(2)
    size = products.outputs
    for i, (kind, weighted) in enumerate((("entk_weighted", True), ("entk_logits", False))):
        started = time.perf_counter()
        pairs = top_eigenpairs(lambda u, w=weighted: products.kernel_vp(u, weighted=w), size, top, seed=seed, tol=tol,
                               which="LA", what=f"{kind} kernel ({size} outputs)")
        directions = torch.stack([_direction(products.jt(pairs.vectors[:, j], weighted=weighted).cpu())
                                  for j in range(top)], dim=1)
        spectra[kind] = _as_directions(pairs, directions)
        seconds[kind] = time.perf_counter() - started
        step(3 + i)
    started = time.perf_counter()
    kernel = empirical_ntk(model, completion_logprob, batch, params=products.names).matrix
    values, vectors = kernel_spectrum(kernel)
    next_value = float(values[top]) if values.numel() > top else None
    values, vectors = values[:top], vectors[:, :top]
    residuals = residuals_of(values, vectors, kernel.double() @ vectors)
    directions = torch.stack([_direction(logprob_jt(products, vectors[:, j]).cpu()) for j in range(top)], dim=1)
    spectra["entk_logprob"] = Eigenpairs(values, directions, residuals, None, 0, 0.0, next_value)
    seconds["entk_logprob"] = time.perf_counter() - started
    step(5)
    started = time.perf_counter()
    h, g = spectra["hessian"], spectra["gauss_newton"]
    g_on_h = torch.stack([products.ggn_vp(h.vectors[:, j]).cpu() for j in range(top)], dim=1)
    h_on_g = torch.stack([products.hvp(g.vectors[:, j]).cpu() for j in range(top)], dim=1)
    gen = torch.Generator().manual_seed(seed)
    rand = torch.randn(dim, BASELINE_VECTORS, generator=gen, dtype=torch.float64)
    rand /= torch.linalg.vector_norm(rand, dim=0)
    h_rand = torch.stack([products.hvp(rand[:, j]).cpu() for j in range(BASELINE_VECTORS)], dim=1)
    g_rand = torch.stack([products.ggn_vp(rand[:, j]).cpu() for j in range(BASELINE_VECTORS)], dim=1)
    residual = {
        "along_hessian": residual_term(h.vectors, h.image, g_on_h),
        "along_gauss_newton": residual_term(g.vectors, h_on_g, g.image),
        "random_directions": residual_term(rand, h_rand, g_rand),
        "output_residuals": products.output_residuals(),
        "loss_value": products.loss(),
    }
    seconds["residual_term"] = time.perf_counter() - started
    step(steps)
    block = BlockCurvature(label, list(products.names), dim, spectra, residual, seconds, size)
    return block, products


def block_report(block: BlockCurvature, *, seed: int = 0) -> dict:
    """JSON-ready numbers of one block: each kind's eigenvalues, residuals and products; the
    principal angles of ANGLE_PAIRS with their random baselines; the residual term."""
    top = block.spectra["hessian"].values.numel()
    report = {"n_params": block.n_params, "parameters": block.names, "logit_kernel_outputs": block.kernel_size}
    for kind in KINDS:
        report[kind] = block.spectra[kind].summary()
    report["angles_deg"] = {f"{a}_vs_{b}": angles_deg(block.spectra[a].vectors, block.spectra[b].vectors)
                            for a, b in ANGLE_PAIRS}
    baseline = random_subspace_angles_deg(block.n_params, top, seed=seed)
    report["angles_baseline_deg"] = {f"{a}_vs_{b}": baseline for a, b in ANGLE_PAIRS}
    # a computed angle is within the sum of the two subspaces' Davis–Kahan bounds of the true one
    report["angles_error_bound_deg"] = {f"{a}_vs_{b}": block.spectra[a].error_bound_deg + block.spectra[b].error_bound_deg
                                        for a, b in ANGLE_PAIRS}
    report["residual_term"] = block.residual
    report["seconds"] = block.seconds
    return report


def _shapes(model: torch.nn.Module, names: Sequence[str]) -> list[tuple[str, torch.Size]]:
    params = trainable_parameters(model)
    return [(k, params[k].shape) for k in names]


def curvature_report(model: torch.nn.Module, whole: BlockCurvature, blocks: Sequence[BlockCurvature] = (), *,
                     n_probes: int, vocab: int | None, seed: int = 0, k: int | None = None) -> dict:
    """The ``curvature.json`` contract (SPEC §9): whole-model fields at the top level, per-matrix
    PP shares of every kind's top directions in the weights' top-k singular subspaces, ``blocks``."""
    report = {
        "loss": LOSS_WORDS,
        "n_params": whole.n_params,
        "n_probes": n_probes,
        "top": int(whole.spectra["hessian"].values.numel()),
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
    report["pp_share"] = {kind: pp_shares(whole.spectra[kind].vectors, shapes, frames) for kind in KINDS}
    report["blocks"] = {b.name: block_report(b, seed=seed) for b in blocks}
    return report


def curvature_arrays(whole: BlockCurvature, prefix: str = "", blocks: Sequence[BlockCurvature] = ()
                     ) -> dict[str, torch.Tensor]:
    """``curvature.npz``: each kind's P × r directions (float64, columns the eigenvectors); each
    ``--blocks`` block's as ``block/<name>/<kind>`` (rows: the block's parameters in order)."""
    arrays = {f"{prefix}{kind}": whole.spectra[kind].vectors for kind in KINDS}
    for block in blocks:
        arrays.update({f"{prefix}block/{block.name}/{kind}": block.spectra[kind].vectors for kind in KINDS})
    return arrays


def pair_comparison(base: BlockCurvature, tuned: BlockCurvature, tuned_products: CurvatureProducts,
                    delta: torch.Tensor, *, seed: int = 0) -> dict:
    """Base → tuned, per kind: rotation of the top-r subspace (principal angles, random baseline),
    eigenvalue drift, the share of the update Δθ on the base's top directions (baseline r/P);
    for H and G also the rescale share of the curvature change along the base's top directions
    (propensity vs lability in Hessian/GN terms, :func:`curvature_rescale_share`).
    ``tuned_products`` must act on the same block as ``base`` (r more products per operator)."""
    out = {}
    top = base.spectra["hessian"].values.numel()
    baseline = random_subspace_angles_deg(base.n_params, top, seed=seed)
    for kind in KINDS:
        s0, s1 = base.spectra[kind], tuned.spectra[kind]
        row = {
            "angles_deg": angles_deg(s0.vectors, s1.vectors),
            "angles_baseline_deg": baseline,
            "angles_error_bound_deg": s0.error_bound_deg + s1.error_bound_deg,
            "eigenvalue_drift": eigenvalue_drift(s0.values, s1.values),
            "update_share": update_share(s0.vectors, delta),
        }
        if kind in ("hessian", "gauss_newton"):
            apply = tuned_products.hvp if kind == "hessian" else tuned_products.ggn_vp
            image1 = torch.stack([apply(s0.vectors[:, j]).cpu() for j in range(top)], dim=1)
            row["curvature_change"] = curvature_rescale_share(s0.vectors, s0.image, image1)
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


def _check(top: int, vocab: int | None) -> None:
    if top < 1:
        raise DeltalensError(f"--top: must be ≥ 1, got {top}")
    if vocab is not None and vocab < 1:
        raise DeltalensError(f"--vocab: must be ≥ 1, got {vocab}")


def _all_blocks(model, batch, patterns, vocab_index, progress, **options) -> list[BlockCurvature]:
    """The whole model first, then each ``--blocks`` group; each block's cached graphs are
    dropped once it is done, so memory holds one block's caches at a time."""
    groups = [("model", None), *block_groups(list(trainable_parameters(model)), patterns or ()).items()]
    out = []
    for name, names in groups:
        block, products = curvature_block(model, batch, names=names, vocab_index=vocab_index, label=name,
                                          progress=progress, **options)
        products.release()
        out.append(block)
    return out


def _write(out, report: dict, arrays: dict[str, torch.Tensor]) -> Path:
    import numpy as np

    from deltalens.results import write_bytes, write_json

    out = Path(out)
    buf = io.BytesIO()
    np.savez(buf, **{k: v.double().cpu().numpy() for k, v in arrays.items()})
    write_bytes(out / "curvature.npz", buf.getvalue())
    return write_json(out / "curvature.json", report)


def _prepare(sources: Sequence, probes, *, out, tokenizer, top, vocab, device, dtype, chunk_size, loading):
    """Check the options and the output folder, load the models (the first one's tokenizer for
    all; ``loading``: :class:`deltalens.kernel.run.Loading`), encode the probes, choose the
    base's top-V columns: (models, batch, n, vocab_index)."""
    from deltalens.results import check_output_dir

    _check(top, vocab)
    if out is not None:
        check_output_dir(out, ["curvature.json", "curvature.npz"])
    sources = loading.sources(list(sources))
    net0, tok = loading.load(sources[0], device=device, dtype=dtype, tokenizer=tokenizer)
    nets = [net0] + [loading.load(s, device=device, dtype=dtype, tokenizer=tok)[0] for s in sources[1:]]
    nets = [eager_attention(net) for net in nets]
    batch, n = _encode(nets[0], tok, probes, loading)
    vocab_index = None if vocab is None else top_vocabulary(net0, batch, vocab, chunk_size=chunk_size)
    return nets, batch, n, vocab_index


def _measure(net, batch, n: int, vocab_index, *, blocks, vocab, k, seed, progress, **options):
    """Whole model and blocks of one model: ([whole, *blocks], report)."""
    parts = _all_blocks(net, batch, blocks, vocab_index, progress, seed=seed, **options)
    report = curvature_report(net, parts[0], parts[1:], n_probes=n, vocab=vocab, seed=seed, k=k)
    report.update(dtype=str(next(net.parameters()).dtype).replace("torch.", ""), seed=seed)
    return parts, report


def run_curvature(model, probes, *, out=None, tokenizer=None, top: int = 10, vocab: int | None = None,
                  blocks: Sequence[str] | None = None, device: str | None = None, dtype: str | None = "float32",
                  seed: int = 0, tol: float = 1e-6, k: int | None = None, chunk_size: int = 64,
                  progress: Progress | None = None, revision: str | None = None, trust_remote_code: bool = False,
                  limit: int | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """``deltalens curvature MODEL``: the report and arrays of :func:`curvature_report` /
    :func:`curvature_arrays` for a model (a folder or a module) on ``{prompt, completion}`` probes
    (a JSONL path or a list), written to ``out`` when given. ``dtype=None`` keeps a module's.
    ``model`` may be a hub id (at ``revision``); ``tokenizer`` an object, a folder or a hub id;
    ``limit``: the first N probes (of each task)."""
    from deltalens.kernel.run import Loading

    (net,), batch, n, vocab_index = _prepare([model], probes, out=out, tokenizer=tokenizer, top=top, vocab=vocab,
                                             device=device, dtype=dtype, chunk_size=chunk_size,
                                             loading=Loading(revision, trust_remote_code, limit))
    parts, report = _measure(net, batch, n, vocab_index, blocks=blocks, vocab=vocab, k=k, seed=seed,
                             progress=progress, top=top, tol=tol, chunk_size=chunk_size)
    arrays = curvature_arrays(parts[0], blocks=parts[1:])
    if out is not None:
        _write(out, report, arrays)
    return report, arrays


def run_curvature_pair(base, tuned, probes, *, out=None, tokenizer=None, top: int = 10, vocab: int | None = None,
                       blocks: Sequence[str] | None = None, device: str | None = None, dtype: str | None = "float32",
                       seed: int = 0, tol: float = 1e-6, k: int | None = None, chunk_size: int = 64,
                       progress: Progress | None = None, revision: str | None = None,
                       trust_remote_code: bool = False, limit: int | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """``deltalens curvature BASE TUNED``: the base's report (the single-model contract) plus
    ``tuned`` (its report) and ``pair``: ``{"model": ..., "blocks": {name: ...}}`` of
    :func:`pair_comparison`.
    Both are scored on the base's tokenization (and with ``vocab``, on the base's top-V columns).
    Arrays: the base's under the contract names, the tuned's as ``tuned_<kind>``."""
    from deltalens.kernel.run import Loading, parameter_delta

    (net0, net1), batch, n, vocab_index = _prepare([base, tuned], probes, out=out, tokenizer=tokenizer, top=top,
                                                   vocab=vocab, device=device, dtype=dtype, chunk_size=chunk_size,
                                                   loading=Loading(revision, trust_remote_code, limit))
    options = dict(blocks=blocks, vocab=vocab, k=k, seed=seed, progress=progress, top=top, tol=tol,
                   chunk_size=chunk_size)
    parts0, report = _measure(net0, batch, n, vocab_index, **options)
    parts1, report["tuned"] = _measure(net1, batch, n, vocab_index, **options)
    delta = parameter_delta(net0, net1)
    pair = []
    for b0, b1 in zip(parts0, parts1):  # r more products per operator on the tuned model, block by block
        flat = torch.cat([delta[name].reshape(-1) for name in b0.names]).double().cpu()
        products = CurvatureProducts(net1, batch, names=b0.names, vocab_index=vocab_index, chunk_size=chunk_size)
        pair.append(pair_comparison(b0, b1, products, flat, seed=seed))
        products.release()
    report["pair"] = {"model": pair[0], "blocks": {b.name: row for b, row in zip(parts0[1:], pair[1:])}}
    arrays = curvature_arrays(parts0[0], blocks=parts0[1:])
    arrays.update(curvature_arrays(parts1[0], "tuned_", blocks=parts1[1:]))
    if out is not None:
        _write(out, report, arrays)
    return report, arrays
