"""The empirical NTK K = J Jᵀ on n probes, exact or sketched (SPEC §6).

``empirical_ntk`` is the one entry point; ``mode`` picks the implementation:
- ``exact``: K = Σ_g J_g J_gᵀ over groups g of parameter tensors, each n × P_g slice of J
  sized to ``memory_budget_mb`` (float64 accumulation). When J fits the budget it is one
  group, built in memory. Otherwise (``exact_strategy``) either ``spill``: one pass over the
  examples writes each group's slice to a temporary file, then the slices are read back one
  at a time; or ``recompute``: one pass per group, differentiating only that group (no disk,
  about G times the compute). ``auto`` spills when the temporary folder has room for J.
  Either way the full n × P Jacobian is never in memory at once.
- ``sketch``: each per-example gradient is CountSketched block by block into R^d and
  K ≈ G̃ G̃ᵀ (unbiased, relative Frobenius error ≈ √(((tr K)² + ‖K‖_F²)/d)/‖K‖_F).

Optionally the same pass returns J·v for parameter-shaped vectors v (exactly, in both
modes), which is what the trait prediction (J·Δθ) and gradient alignment (J·ḡ_D) need.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from deltalens.errors import DeltalensError
from deltalens.kernel.gradients import CountSketch, parameter_groups, per_example_gradients, trainable_parameters
from deltalens.kernel.outputs import OutputFn, batch_size


@dataclass
class KernelResult:
    """An n×n kernel (float64) and how it was computed."""

    matrix: torch.Tensor
    mode: str
    dim: int | None
    seed: int | None
    n_params: int
    dtype: str
    method: str
    n_groups: int
    strategy: str
    error_estimate: float
    error_method: str
    jv: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0


def sketch_error_estimate(kernel: torch.Tensor, dim: int) -> float:
    """Estimated relative Frobenius error of a sketched kernel: √(((tr K)² + ‖K‖_F²)/d) / ‖K‖_F.

    From Var K̃_ik ≤ (K_ii K_kk + K_ik²)/d summed over all entries (SPEC §6), with the sketched
    K̃ plugged in for K.
    """
    k = kernel.double()
    fro2 = float((k * k).sum())
    if fro2 == 0.0:
        return 0.0
    return math.sqrt((float(torch.trace(k)) ** 2 + fro2) / dim) / math.sqrt(fro2)


def exact_rounding_estimate(n_params: int, dtype: torch.dtype) -> float:
    """Typical relative rounding error of length-P dot products in ``dtype``: eps·√P."""
    return float(torch.finfo(dtype).eps) * math.sqrt(n_params)


GRAM_BLOCK_ROWS = 64
"""Rows contracted per step of :func:`upper_gram` (the sketch's rows, a spilled J slice). On a
256 × 1M J (2 threads, shared machine, 3 runs each) 64 took 0.81–1.27 s, 32 took 0.98–1.44 s,
128 took 0.90–1.38 s and one full J Jᵀ 1.12–1.63 s; on one thread 64 took 1.11–1.37 s against
1.40–1.77 s for J Jᵀ."""

DEFAULT_CHUNK = 64
"""Examples per gradient chunk (``chunk_size``); in exact mode also the block of J Jᵀ
(:func:`add_chunk_gram`): 64×64 products, at the same time as the ``torch.func`` recipe's
256×256 ones for 5/8 of its flops (``bench/bench_kernel.py``)."""


def add_chunk_gram(kernel: torch.Tensor, chunks: list[tuple[slice, list[torch.Tensor]]]) -> None:
    """K[rows_j, rows_c] += Σ_b J_{j,b} J_{c,b}ᵀ for the last chunk c against every chunk j ≤ c (SPEC §6).

    ``chunks`` holds the rows of J as the gradient pass produced them: (example slice, one
    chunk × P_b block per parameter tensor b), never copied into one n × P matrix. Called after
    each new chunk, it fills K's upper triangle (diagonal blocks in full) — a blocked SYRK whose
    blocks are the chunks (5/8 of the multiply-adds of J Jᵀ for 4 equal chunks). Complete K with
    :func:`symmetrize_upper`.
    """
    last, new_blocks = chunks[-1]
    for index, blocks in chunks:
        out = kernel[index, last]
        for a, b in zip(blocks, new_blocks):
            out.addmm_(a, b.T)


def upper_gram(rows: torch.Tensor, kernel: torch.Tensor, block: int | None = None) -> None:
    """Accumulate the upper triangle of K = R Rᵀ (SPEC §6) into ``kernel`` (n×n, R's dtype), ``block``
    rows at a time (default ``GRAM_BLOCK_ROWS``): K[:stop, start:stop] += R[:stop] R[start:stop]ᵀ.

    This fills K's upper triangle (and the diagonal blocks in full) with (b + 1)/(2b) of the
    multiply-adds of R Rᵀ for b equal blocks (5/8 for n = 256 in blocks of 64) — a blocked SYRK.
    Complete K with :func:`symmetrize_upper`.
    """
    n = rows.shape[0]
    block = block or GRAM_BLOCK_ROWS
    for start in range(0, n, block):
        stop = min(start + block, n)
        kernel[:stop, start:stop].addmm_(rows[:stop], rows[start:stop].T)


def symmetrize_upper(kernel: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle (diagonal included) is ``kernel``'s."""
    return kernel.triu() + kernel.triu(1).T


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the body with torch's intra-op thread count set to ``threads`` (``None``: unchanged), then restore it."""
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


SMALL_TENSOR_NUMEL = 2**20
"""``gradient_threads="auto"`` runs the per-example pass on one thread when no parameter tensor
has this many elements (a ~1M-parameter model: hidden 128)."""


def pass_threads(requested: int | str | None, numels: dict[str, int]) -> int | None:
    """Intra-op threads for the per-example pass: ``requested``, or for ``"auto"`` 1 on small
    models (every parameter tensor under ``SMALL_TENSOR_NUMEL``) and the caller's setting
    (``None``) on larger ones. It depends on the model only, never on the machine's load, so a
    kernel's rounding is the same whatever else runs.

    A small model's per-example ops (a chunk of 64 probes × hidden 128) are too small to share
    across cores, and each multi-threaded op ends at a barrier that stalls whenever another
    process holds a core: on the shared 2-core development machine the 1M-parameter pass took
    1–1.5 s on one thread and 8–49 s on two (``bench/bench_kernel.py``); idle, two threads were
    somewhat faster (n = 256: 1.91 s against 2.38 s): pass ``gradient_threads=2`` for that.
    """
    if requested == "auto":
        return 1 if max(numels.values()) < SMALL_TENSOR_NUMEL else None
    if requested is None or (isinstance(requested, int) and requested >= 1):
        return requested
    raise DeltalensError(f"gradient_threads: expected a positive integer, 'auto' or None, got {requested!r}")


def _exact_strategy(requested: str, jacobian_bytes: int, spill_dir: str | None) -> str:
    if requested not in ("auto", "spill", "recompute"):
        raise DeltalensError(f"exact_strategy '{requested}': expected auto, spill or recompute")
    if requested != "auto":
        return requested
    free = shutil.disk_usage(spill_dir or tempfile.gettempdir()).free
    return "spill" if jacobian_bytes < 0.5 * free else "recompute"


def _spilled_kernel(model, output_fn, batch, groups, numels, budget, chunk_size, method, threads, spill_dir, add_jv,
                    progress) -> torch.Tensor:
    """One gradient pass writing each group's n × P_g slice of J to a file; then Σ_g J_g J_gᵀ."""
    names = [k for g in groups for k in g]
    ref = next(iter(model.parameters()))
    dtype, device, itemsize = ref.dtype, ref.device, ref.element_size()
    n_params = sum(numels.values())
    chunk = max(1, min(chunk_size, budget // max(1, 4 * n_params * itemsize)))
    n = batch_size(batch)
    kernel = torch.zeros(n, n, dtype=torch.float64, device=device)
    with tempfile.TemporaryDirectory(prefix="deltalens-jacobian-", dir=spill_dir) as tmp:
        paths = [f"{tmp}/group{g}.bin" for g in range(len(groups))]
        files = [open(p, "wb") for p in paths]
        try:
            with intra_op_threads(threads):
                for index, grads in per_example_gradients(model, output_fn, batch, names, chunk_size=chunk, method=method):
                    for fh, group in zip(files, groups):
                        slab = torch.cat([grads[k].reshape(grads[k].shape[0], -1) for k in group], dim=1)
                        fh.write(slab.cpu().contiguous().view(torch.uint8).numpy().tobytes())
                    add_jv(index, grads, names)
                    if progress is not None:
                        progress(index.stop, n)
                    del grads
        finally:
            for fh in files:
                fh.close()
        for path, group in zip(paths, groups):
            width = sum(numels[k] for k in group)
            rows = torch.from_file(path, shared=False, size=n * width, dtype=dtype).view(n, width).to(device)
            part = torch.zeros(n, n, dtype=dtype, device=device)
            upper_gram(rows, part)
            kernel += part.double()
            del rows
    return symmetrize_upper(kernel)


def _pick_method(method: str, chunk: int) -> str:
    if method == "auto":
        return "vmap" if chunk > 1 else "loop"
    if method not in ("vmap", "loop"):
        raise DeltalensError(f"gradient method '{method}': expected auto, vmap or loop")
    return method


def empirical_ntk(
    model: torch.nn.Module,
    output_fn: OutputFn,
    batch,
    *,
    mode: str = "exact",
    dim: int | None = None,
    seed: int = 0,
    params: list[str] | None = None,
    vectors: dict[str, dict[str, torch.Tensor]] | None = None,
    memory_budget_mb: float = 512.0,
    chunk_size: int = DEFAULT_CHUNK,
    method: str = "auto",
    exact_strategy: str = "auto",
    spill_dir: str | None = None,
    gradient_threads: int | str | None = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> KernelResult:
    """K_ij = ⟨∇_θ f_i, ∇_θ f_j⟩ over the trainable parameters (or ``params``). SPEC §6.

    ``output_fn(model, batch) -> Tensor[b]`` gives one scalar per example; ``batch`` is a dict
    of tensors with the example index first. ``vectors`` maps a label to a parameter-shaped
    dict {name: tensor}; the result's ``jv[label]`` is J·v (float64, exact in both modes).
    ``memory_budget_mb`` bounds the gradient buffers (J slices in exact mode, per-chunk
    gradients in both); ``exact_strategy`` (auto|spill|recompute) and ``spill_dir`` say how
    exact mode stays within it when J does not fit. ``gradient_threads`` is torch's intra-op
    thread count for the per-example pass (gradients, sketching; ``None``: the caller's;
    ``"auto"``: see :func:`pass_threads`). The J Jᵀ products, large GEMMs, run with the caller's
    threads. ``chunk_size`` examples go through one vmap (fewer when the budget says so); in
    exact mode the chunks are also the blocks of J Jᵀ (:func:`add_chunk_gram`), so chunks much
    smaller than 64 make small, slow products. ``progress(done, total)`` is called after each chunk.
    """
    named = trainable_parameters(model)
    if params is not None:
        missing = [p for p in params if p not in named]
        if missing:
            raise DeltalensError(f"params: {missing[0]} is not a trainable parameter of the model")
        named = {p: named[p] for p in params}
    n = batch_size(batch)
    if n < 1:
        raise DeltalensError("probes: no examples")
    numels = {k: v.numel() for k, v in named.items()}
    n_params = sum(numels.values())
    ref = next(iter(named.values()))
    dtype, device, itemsize = ref.dtype, ref.device, ref.element_size()
    budget = int(memory_budget_mb * 2**20)
    vectors = vectors or {}
    jv = {label: torch.zeros(n, dtype=torch.float64, device=device) for label in vectors}
    kernel = torch.zeros(n, n, dtype=torch.float64, device=device)
    started = time.perf_counter()

    if mode == "exact":
        groups = parameter_groups(numels, n, budget, itemsize)
        strategy = "in-memory" if len(groups) == 1 else _exact_strategy(exact_strategy, n * n_params * itemsize, spill_dir)
    elif mode == "sketch":
        if dim is None:
            raise DeltalensError("--dim: sketch mode needs a sketch dimension d")
        if dim > n_params:
            raise DeltalensError(f"--dim: d = {dim} is larger than the parameter count {n_params}")
        groups = [list(named)]
        strategy = "in-memory"
        sketch = CountSketch(dim, seed)
    else:
        raise DeltalensError(f"--mode: expected exact or sketch, got '{mode}'")

    def add_jv(index: slice, grads: dict, names: list[str]) -> None:
        for label, vec in vectors.items():
            for k in names:
                g = grads[k].reshape(grads[k].shape[0], -1).double()
                jv[label][index] += g @ vec[k].reshape(-1).to(device=device, dtype=torch.float64)

    used = None
    caller_threads = torch.get_num_threads()
    gradient_threads = pass_threads(gradient_threads, numels)
    if strategy == "spill":
        used = _pick_method(method, max(1, min(chunk_size, budget // max(1, 4 * n_params * itemsize))))
        kernel += _spilled_kernel(model, output_fn, batch, groups, numels, budget, chunk_size, used, gradient_threads,
                                  spill_dir, add_jv, progress)
    else:
        passes = len(groups)
        done = 0
        for names in groups:
            group_numel = sum(numels[k] for k in names)
            # per-chunk gradients (chunk × P_g) take at most a quarter of the budget
            chunk = max(1, min(chunk_size, budget // max(1, 4 * group_numel * itemsize)))
            used = _pick_method(method, chunk)
            # exact: J's rows stay the per-chunk gradient blocks the pass returns (no n × P_g copy),
            # each new chunk contracted against those before it; sketch: the n × d sketched rows,
            # contracted once at the end (they are small)
            kept: list[tuple[slice, list[torch.Tensor]]] = []
            rows = None if mode == "exact" else torch.zeros(n, dim, dtype=dtype, device=device)
            part = torch.zeros(n, n, dtype=dtype, device=device)
            with intra_op_threads(gradient_threads):
                for index, grads in per_example_gradients(model, output_fn, batch, names, chunk_size=chunk, method=used):
                    add_jv(index, grads, names)
                    if mode == "exact":
                        kept.append((index, [grads[k].reshape(grads[k].shape[0], -1) for k in names]))
                        with intra_op_threads(caller_threads):
                            add_chunk_gram(part, kept)
                    else:
                        for k in names:
                            rows[index] += sketch.project(k, grads[k])
                    del grads
                    done += index.stop - index.start
                    if progress is not None:
                        progress(done, passes * n)
            if rows is not None:
                upper_gram(rows, part)
            kernel += part.double()
            del rows, part, kept
        kernel = symmetrize_upper(kernel)

    if mode == "exact":
        err, err_method = exact_rounding_estimate(n_params, dtype), f"exact; rounding only, eps({dtype})·√P"
    else:
        err = sketch_error_estimate(kernel, dim)
        err_method = "CountSketch variance: √(((tr K)² + ‖K‖_F²)/d)/‖K‖_F, relative Frobenius"
    return KernelResult(
        matrix=kernel.cpu(),
        mode=mode,
        dim=dim if mode == "sketch" else None,
        seed=seed if mode == "sketch" else None,
        n_params=n_params,
        dtype=str(dtype).replace("torch.", ""),
        method=used or method,
        n_groups=len(groups),
        strategy=strategy,
        error_estimate=err,
        error_method=err_method,
        jv={k: v.cpu() for k, v in jv.items()},
        seconds=time.perf_counter() - started,
    )
