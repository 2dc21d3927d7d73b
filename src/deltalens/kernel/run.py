"""Drivers behind ``deltalens kernel`` and ``deltalens align``: load, compute, compare, write.

Models are ``torch.nn.Module`` objects or Hugging Face causal-LM folders (paths); probes and
suites are lists of dicts or JSONL paths. Each ``run_*`` returns the JSON-ready report and
the matrices, and writes ``kernel.json`` / ``kernels.npz`` (or ``align.json``) atomically
when ``out`` is given.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from deltalens.errors import DeltalensError
from deltalens.fingerprint import model_fingerprint
from deltalens.kernel.align import alignment_share, mean_loss_gradient
from deltalens.kernel.compare import compare_kernels, kernel_spectrum
from deltalens.kernel.gradients import trainable_parameters
from deltalens.kernel.ntk import DEFAULT_CHUNK, KernelResult, empirical_ntk
from deltalens.kernel.outputs import (
    VECTOR_OUTPUTS,
    check_positions,
    completion_loss,
    encode_probes,
    evaluate_outputs,
    logits_output,
    model_context_length,
    output_function,
    top_tokens,
)
from deltalens.kernel.traits import averaging_matrix, suite_to_probes, trait_changes, trait_kernel
from deltalens.kernel.trajectory import kernel_trajectory
from deltalens.results import check_output_dir, read_jsonl, write_bytes, write_json

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class KernelOptions:
    """How kernels are computed and compared; keyword arguments of every ``run_*`` driver.

    ``mode`` exact|sketch, ``dim`` the sketch dimension, ``seed`` its seed, ``top_r`` the number
    of eigen-directions compared, ``output`` the per-probe output (logprob|loss, or the
    multi-output logits-trace|logits-full over ``positions`` — completion token indices — and
    ``token_ids``, or when those are not given the ``top_v`` most probable entries under the
    base), ``device`` (``None``: a module stays where it is, a folder loads on CPU),
    ``memory_budget_mb`` (``None``: from the free memory), ``chunk_size`` and ``implementation``
    as in :func:`deltalens.kernel.ntk.empirical_ntk`.
    """

    mode: str = "exact"
    dim: int | None = None
    seed: int = 0
    top_r: int | None = None
    output: str = "logprob"
    device: str | None = None
    memory_budget_mb: float | None = None
    chunk_size: int = DEFAULT_CHUNK
    positions: tuple[int, ...] = (0,)
    top_v: int = 8
    token_ids: tuple[int, ...] | None = None
    implementation: str = "auto"

    def ntk(self) -> dict:
        """The subset passed on to ``empirical_ntk``."""
        return dict(mode=self.mode, dim=self.dim, seed=self.seed, memory_budget_mb=self.memory_budget_mb,
                    chunk_size=self.chunk_size, trace=self.output == "logits-trace", implementation=self.implementation)

    def output_fn(self, model, batch, source: str = "probes"):
        """The output function, and the report fields that say what it is; a logits output takes
        its vocabulary entries from ``token_ids`` or the base ``model``'s top ``top_v``."""
        if self.output not in VECTOR_OUTPUTS:
            return output_function(self.output), {}
        positions = [int(k) for k in self.positions]
        check_positions(batch, positions, source)
        vocab = model.get_output_embeddings().weight.shape[0] if hasattr(model, "get_output_embeddings") else None
        if self.token_ids is not None:
            ids = [int(v) for v in self.token_ids]
            bad = [v for v in ids if v < 0 or (vocab is not None and v >= vocab)]
            if not ids or bad:
                raise DeltalensError(f"--token-ids: {bad[0] if bad else 'none given'}: expected ids in 0 … {vocab - 1 if vocab else '?'}")
            chosen = "given"
        else:
            ids = top_tokens(model, batch, positions, self.top_v)
            chosen = f"top {self.top_v} by mean probability under the base at these positions"
        fields = {"output_positions": positions, "output_token_ids": ids, "output_token_choice": chosen,
                  "n_outputs": len(positions) * len(ids),
                  "output_rows": "probe-major, then position, then token" if self.output == "logits-full" else
                                 "traced: K = Σ over the (position, token) outputs"}
        return logits_output(positions, ids), fields


@dataclass(frozen=True)
class Loading:
    """How model folders and hub ids are loaded (:func:`deltalens.models.load_model`, float32 by default)
    and how much of each input is read (``limit``: the first N lines of each task,
    :func:`deltalens.limits.first_per_task`)."""

    revision: str | None = None
    trust_remote_code: bool = False
    limit: int | None = None

    def load(self, source, *, device, tokenizer=None, dtype: str | None = "float32"):
        """``(model, tokenizer)`` of a resolved source (a local folder or a module)."""
        from deltalens.models import load_model

        model, tok, _ = load_model(source, tokenizer, device=device, dtype=dtype, need_tokenizer=False,
                                   trust_remote_code=self.trust_remote_code)
        return model, tok

    def sources(self, models: Sequence) -> list:
        """Local folders (hub ids downloaded at ``revision``) or modules, checked to be one model."""
        from deltalens.models import resolve_source

        resolved = [resolve_source(m, self.revision) for m in models]
        check_same_model(resolved)
        return resolved

    def lines(self, source, what: str) -> tuple[list[dict], str]:
        """The JSONL lines (or list) of ``source``, cut to ``limit`` per task, and its name."""
        from deltalens.limits import first_per_task

        lines, what = (read_jsonl(source), str(source)) if isinstance(source, (str, Path)) else (list(source), what)
        return first_per_task(lines, self.limit), what


def _encode(tokenizer, model, lines, what: str) -> dict:
    if tokenizer is None:
        raise DeltalensError(f"{what}: a tokenizer is needed to encode text probes")
    batch = encode_probes(tokenizer, lines, max_length=model_context_length(model), source=what)
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def _kernel(model, output_fn, batch, label: str, progress: Progress | None, **options) -> KernelResult:
    callback = (lambda done, total: progress(label, done, total)) if progress else None
    return empirical_ntk(model, output_fn, batch, progress=callback, **options)


def _side(result: KernelResult, source) -> dict:
    values, _ = kernel_spectrum(result.matrix)
    return {
        "source": source if isinstance(source, (str, Path)) else type(source).__name__,
        "eigenvalues": values.tolist(),
        "error_estimate": result.error_estimate,
        "seconds": result.seconds,
    }


def _header(result: KernelResult, n: int, output: str) -> dict:
    return {
        "mode": result.mode,
        "dim": result.dim,
        "seed": result.seed,
        "n_probes": n,
        "output": output,
        "n_params": result.n_params,
        "dtype": result.dtype,
        "gradient_method": result.method,
        "parameter_groups": result.n_groups,
        "exact_strategy": result.strategy,
        "error_estimate_method": result.error_method,
        "kernel_rows": int(result.matrix.shape[0]),
        "memory_budget_mb": result.memory_budget_mb,
        "chunk_size": result.chunk_size,
        "structured_layers": len(result.structured_layers),
    }


def parameter_delta(base: torch.nn.Module, tuned: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Δθ = θ_tuned − θ_base for every trainable parameter of the base, matched by name."""
    p0, p1 = trainable_parameters(base), dict(tuned.named_parameters())
    delta = {}
    for name, w0 in p0.items():
        if name not in p1 or p1[name].shape != w0.shape:
            raise DeltalensError(f"tuned model: parameter '{name}' missing or of another shape than in the base")
        delta[name] = (p1[name].detach().to(w0.device) - w0.detach()).double()
    return delta


def check_same_model(sources: Sequence) -> None:
    """Before any kernel is computed: every checkpoint folder must hold the base folder's model,
    since one tokenizer encodes the probes for all. Tensors are paired from the safetensors
    headers as the weight diff pairs them (:func:`deltalens.checkpoints.pair_sources`: a
    vocabulary resize is allowed, any other shape mismatch is not), and a tensor on one side only
    or another ``model_type`` is refused too. Loaded modules are the caller's and are not
    compared. Raises one :class:`DeltalensError` line naming the checkpoint and what differs."""
    from deltalens.checkpoints import open_checkpoint, pair_sources
    from deltalens.models import check_model_folder

    folders = [Path(s) for s in sources if isinstance(s, (str, Path))]
    for folder in folders:
        check_model_folder(folder)  # one line for a missing, config-only or corrupted folder
    if len(folders) != len(sources):
        return
    base = open_checkpoint(folders[0], role="base")
    why = "kernel compares a base with its own fine-tunes (one architecture)"
    for folder in folders[1:]:
        other = open_checkpoint(folder)
        if base.config.get("model_type") != other.config.get("model_type"):
            raise DeltalensError(f"{folder}: model type {other.config.get('model_type')!r} differs from the base's "
                                 f"{base.config.get('model_type')!r}; {why}")
        try:
            pairing = pair_sources(base, other)
        except DeltalensError as exc:
            raise DeltalensError(f"{folder}: {exc}; {why}") from None
        for side, names in (("base", pairing.unmatched["base_only"]), ("checkpoint", pairing.unmatched["tuned_only"])):
            if names:
                raise DeltalensError(f"{folder}: tensor '{names[0]}' is only in the {side}"
                                     f"{f' (and {len(names) - 1} more)' if len(names) > 1 else ''}; {why}")


def write_kernel_outputs(out, report: dict, arrays: dict[str, torch.Tensor], json_name: str = "kernel.json") -> Path:
    """Write ``kernels.npz`` then the JSON report (last, so its presence means a complete run)."""
    import numpy as np

    out = Path(out)
    buf = io.BytesIO()
    np.savez(buf, **{k: v.double().numpy() for k, v in arrays.items()})
    write_bytes(out / "kernels.npz", buf.getvalue())
    return write_json(out / json_name, report)


def run_kernel(
    base,
    tuned,
    probes,
    *,
    out=None,
    tokenizer=None,
    traits=None,
    progress: Progress | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    limit: int | None = None,
    **options,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Kernels of base and tuned on the probes, their comparison, and optionally the trait kernels.

    ``options``: the fields of :class:`KernelOptions`; ``revision``, ``trust_remote_code``,
    ``limit``: :class:`Loading`. ``tokenizer``: an object, a folder or hub id, or ``None`` for
    the base folder's.
    """
    computed = _compute([base, tuned], probes, out=out, tokenizer=tokenizer, traits=traits, progress=progress,
                        loading=Loading(revision, trust_remote_code, limit), options=options)
    report, arrays = computed.report()
    if out is not None:
        write_kernel_outputs(out, report, arrays)
    return report, arrays


def _encode_suite(tok, model, suite, loading: Loading) -> tuple[dict, list[str], list[int]]:
    lines, what = loading.lines(suite, "suite")
    probes, names, index = suite_to_probes(lines, source=what)
    return _encode(tok, model, probes, what), names, index


def _traits(model0, model1, suite, progress, top_r, options) -> tuple[dict, dict]:
    batch, names, index = suite
    delta = parameter_delta(model0, model1)
    g0 = _kernel(model0, completion_loss, batch, "base trait kernel", progress, vectors={"delta": delta}, **options)
    g1 = _kernel(model1, completion_loss, batch, "tuned trait kernel", progress, **options)
    a = averaging_matrix(index, len(names))
    t0, t1 = trait_kernel(g0.matrix, a), trait_kernel(g1.matrix, a)
    measured = evaluate_outputs(model1, completion_loss, batch) - evaluate_outputs(model0, completion_loss, batch)
    block = {
        "names": names,
        "n_lines": len(index),
        "loss": "mean token NLL of the completion, averaged over the trait's lines",
        "base": {"eigenvalues": kernel_spectrum(t0)[0].tolist()},
        "tuned": {"eigenvalues": kernel_spectrum(t1)[0].tolist()},
        "comparison": compare_kernels(t0, t1, top_r) if len(names) > 1 else None,
        "traits": trait_changes(names, a, g0.jv["delta"], measured.cpu()),
        "predicted_method": "first order: A·J(θ0)·Δθ, exact per-line gradients in float64",
    }
    return block, {"traits_base": t0, "traits_tuned": t1}


@dataclass
class _Kernels:
    """The kernels of a base and its checkpoints on one set of probes, before any report."""

    models: Sequence
    opts: KernelOptions
    results: list[KernelResult]
    n_probes: int
    output_fields: dict
    traits: tuple[dict, dict] | None
    fingerprints: dict  # base and last model's content fingerprints (deltalens.fingerprint)

    def report(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """``kernel.json``'s fields for the base vs the last checkpoint, and their matrices."""
        first, last = self.results[0], self.results[-1]
        report = _header(first, self.n_probes, self.opts.output)
        report.update(self.output_fields)
        report.update(base=_side(first, self.models[0]), tuned=_side(last, self.models[-1]))
        report["fingerprints"] = self.fingerprints
        report["comparison"] = compare_kernels(first.matrix, last.matrix, self.opts.top_r)
        report["error_estimate"] = max(r.error_estimate for r in self.results)
        arrays = {"base": first.matrix, "tuned": last.matrix}
        if self.traits is not None:
            report["traits"] = self.traits[0]
            arrays.update(self.traits[1])
        return report, arrays


def _compute(models: Sequence, probes, *, out, tokenizer, traits, progress, loading: Loading, options: dict) -> _Kernels:
    """Check everything, then the kernel of each model on the probes (and, with ``traits``, the
    trait block of the base vs the last model)."""
    opts = KernelOptions(**options)
    device, ntk_options = opts.device, opts.ntk()
    if opts.output not in VECTOR_OUTPUTS:
        output_function(opts.output)  # an unknown name fails before any work
    if out is not None:
        check_output_dir(out, ["kernel.json", "kernels.npz"])
    lines, what = loading.lines(probes, "probes")
    sources = loading.sources(models)
    model0, tok = loading.load(sources[0], device=device, tokenizer=tokenizer)
    batch = _encode(tok, model0, lines, what)
    suite = _encode_suite(tok, model0, traits, loading) if traits is not None else None  # bad input fails before any work
    output_fn, output_fields = opts.output_fn(model0, batch, what)
    results = [_kernel(model0, output_fn, batch, "base kernel", progress, **ntk_options)]
    for i, source in enumerate(sources[1:], 1):
        model, _ = loading.load(source, device=device, tokenizer=tok)
        label = "tuned kernel" if len(models) == 2 else f"checkpoint {i}"
        results.append(_kernel(model, output_fn, batch, label, progress, **ntk_options))
    trait_block = _traits(model0, model, suite, progress, opts.top_r, ntk_options) if suite is not None else None
    prints = {"base": model_fingerprint(sources[0]), "tuned": model_fingerprint(sources[-1])}  # hub ids: their snapshots
    return _Kernels(models, opts, results, len(lines), output_fields, trait_block, prints)


def run_trajectory(
    models: Sequence,
    probes,
    *,
    out=None,
    tokenizer=None,
    traits=None,
    progress: Progress | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    limit: int | None = None,
    **options,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Kernel of the base (``models[0]``) and of each checkpoint; every checkpoint vs base and vs previous.

    The report also holds :func:`run_kernel`'s fields for base vs the last checkpoint (and, with
    ``traits``, its trait block: the base vs the last checkpoint), so one call serves both
    without computing those kernels twice.
    """
    if len(models) < 2:
        raise DeltalensError("--trajectory: give the base and at least one checkpoint")
    computed = _compute(models, probes, out=out, tokenizer=tokenizer, traits=traits, progress=progress,
                        loading=Loading(revision, trust_remote_code, limit), options=options)
    report, arrays = computed.report()
    names = [str(s) if isinstance(s, (str, Path)) else f"checkpoint_{i}" for i, s in enumerate(models[1:], 1)]
    matrices = [r.matrix for r in computed.results]
    report["trajectory"] = kernel_trajectory(matrices[0], matrices[1:], names, computed.opts.top_r)
    arrays.update({f"checkpoint_{i}": m for i, m in enumerate(matrices[1:], 1)})
    if out is not None:
        write_kernel_outputs(out, report, arrays)
    return report, arrays


def run_align(
    model,
    data,
    probes,
    *,
    out=None,
    tokenizer=None,
    progress: Progress | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    limit: int | None = None,
    **options,
) -> dict:
    """Share of the dataset's function-space push u = J·ḡ_D on the top-r kernel eigenvectors (SPEC §6).

    ``limit`` cuts the probes and the data alike (:class:`Loading`)."""
    opts = KernelOptions(**options)
    loading = Loading(revision, trust_remote_code, limit)
    device = opts.device
    if opts.output == "logits-trace":
        raise DeltalensError("align --output logits-trace: the push J·ḡ_D has one entry per (probe, output) row, "
                             "which a traced kernel does not have; use --output logits-full")
    if opts.output not in VECTOR_OUTPUTS:
        output_function(opts.output)
    if out is not None:
        check_output_dir(out, ["align.json", "kernels.npz"])
    probe_lines, probe_what = loading.lines(probes, "probes")
    data_lines, data_what = loading.lines(data, "data")
    (source,) = loading.sources([model])
    net, tok = loading.load(source, device=device, tokenizer=tokenizer)
    probe_batch = _encode(tok, net, probe_lines, probe_what)
    data_batch = _encode(tok, net, data_lines, data_what)
    output_fn, output_fields = opts.output_fn(net, probe_batch, probe_what)
    gbar = mean_loss_gradient(net, completion_loss, data_batch, chunk_size=opts.chunk_size)
    result = _kernel(net, output_fn, probe_batch, "probe kernel", progress, vectors={"gbar": gbar}, **opts.ntk())
    report = _header(result, len(probe_lines), opts.output)
    report.update(output_fields)
    report.update(
        model=_side(result, model),
        n_data=len(data_lines),
        push="u = J·ḡ_D, ḡ_D = mean gradient of the completion's mean token NLL over the data",
        alignment=alignment_share(result.matrix, result.jv["gbar"], opts.top_r),
        error_estimate=result.error_estimate,
    )
    if out is not None:
        write_kernel_outputs(out, report, {"kernel": result.matrix, "push": result.jv["gbar"]}, json_name="align.json")
    return report
