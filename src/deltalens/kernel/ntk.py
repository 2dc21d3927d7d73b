"""The empirical NTK K = J Jᵀ on n probes, exact or sketched (SPEC §6).

``empirical_ntk`` is the one entry point; ``mode`` picks the implementation:
- ``exact``: K = Σ_g J_g J_gᵀ over groups g of parameter tensors, each n × P_g slice of J
  sized to ``memory_budget_mb`` (float64 accumulation). When J fits the budget it is one
  group, built in memory. Otherwise (``exact_strategy``) either ``spill``: one pass over the
  examples writes each group's slice to a temporary file, then the slices are read back one
  at a time; or ``recompute``: one pass per group, differentiating only that group (no disk,
  about G times the compute). ``auto`` spills when the temporary folder has room for J and
  no layer takes structured derivatives. Either way the full n × P Jacobian is never in
  memory at once, and K is the same to the last bit (tiles of ``GRAM_TILE`` examples, each
  tensor's products summed in float64 in parameter order): the budget follows the free memory
  and must not change the result.
- ``sketch``: each per-example gradient is CountSketched block by block into R^d and
  K ≈ G̃ G̃ᵀ (unbiased, relative Frobenius error ≈ √(((tr K)² + ‖K‖_F²)/d)/‖K‖_F).

Optionally the same pass returns J·v for parameter-shaped vectors v (exactly, in both
modes), which is what the trait prediction (J·Δθ) and gradient alignment (J·ḡ_D) need.

An output function may give m outputs per example: the rows of J are then the (example,
output) pairs, each example's m rows from one backward vmapped over the output cotangents, and
K is (n·m)×(n·m) or, traced, n×n. In exact mode ``nn.Linear`` layers may be contracted by
structured derivatives instead of Jacobian blocks (``implementation``; see ``structured.py``).
The default memory budget comes from the free memory (:func:`default_memory_budget_mb`).
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
from deltalens.kernel.gradients import (
    BatchInteraction,
    CountSketch,
    RowBlock,
    inspect_outputs,
    jacobian_rows,
    parameter_groups,
    trainable_parameters,
)
from deltalens.kernel.outputs import OutputFn, batch_size
from deltalens.kernel.structured import add_structured_block, prefers_structured, structured_jv


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
    n_outputs: int | None = None  # outputs per example (None: one scalar per example)
    trace: bool = False  # vector outputs: K summed over outputs (n×n) instead of the (n·m)×(n·m) kernel
    structured_layers: list[str] = field(default_factory=list)  # nn.Linear layers contracted by structured derivatives
    memory_budget_mb: float | None = None  # the budget used (given, or derived by default_memory_budget_mb)
    chunk_size: int | None = None  # examples per gradient chunk (exact: a power of two ≤ GRAM_TILE; sketch: equal chunks)


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


DIAGONAL_BLOCK_ROWS = 32
"""Rows per step of a chunk's product with itself (:func:`add_chunk_gram`): the diagonal block is
filled as an upper triangle of sub-blocks (3/4 of its multiply-adds for a chunk of 64). One
thread, 64 rows × 764k parameters in 40 tensors: 73–96 ms against 106–110 ms for the full 64×64
products (bench/bench_kernel.py's tiny Llama, shared machine)."""


def add_chunk_gram(kernel: torch.Tensor, chunks: list[tuple[slice, list]], trace: bool = False) -> None:
    """K[rows_j, rows_c] += Σ_b J_{j,b} J_{c,b}ᵀ for the last chunk c against every chunk j ≤ c (SPEC §6).

    ``chunks`` holds the rows of J as the gradient pass produced them: (row slice, one term per
    parameter tensor b), never copied into one n × P matrix. A term is a chunk × P_b block of
    Jacobian rows, or a structured layer's taps ``(x, g, bias)`` whose block is
    :func:`~deltalens.kernel.structured.add_structured_block` (``trace``: summed over outputs).
    Called after each new chunk, it fills K's upper triangle (diagonal blocks in full) — a
    blocked SYRK whose blocks are the chunks (5/8 of the multiply-adds of J Jᵀ for 4 equal
    chunks). Each term's product is added to ``kernel`` on its own, in ``kernel``'s dtype, in
    the order of the terms: with float64 ``kernel`` and terms in one fixed parameter order, an
    entry's sum does not depend on how the tensors were split into passes. Complete K with
    :func:`symmetrize_upper`.
    """
    last, new_terms = chunks[-1]
    for index, terms in chunks[:-1]:
        out = kernel[index, last]
        for a, b in zip(terms, new_terms):
            if isinstance(a, tuple):
                add_structured_block(out, a, b, trace)
            else:
                out += a @ b.T  # float32 → float64 in the add: exact, no copy
    out = kernel[last, last]
    rows = last.stop - last.start
    sub = DIAGONAL_BLOCK_ROWS if rows > DIAGONAL_BLOCK_ROWS else rows
    for b in new_terms:
        if isinstance(b, tuple):
            add_structured_block(out, b, b, trace)
            continue
        for start in range(0, rows, sub):
            stop = min(start + sub, rows)
            out[:stop, start:stop] += b[:stop] @ b[start:stop].T


GRAM_TILE = 64
"""Examples per tile of J Jᵀ in exact mode: the gradient pass's chunks (whose size follows the
memory budget) are regrouped into tiles of this many examples (the last one: n mod 64) before
any product, so every entry of K is computed by the same products of the same shapes, whatever
the budget, the chunks or the parameter groups (``tests/kernel/test_ntk.py``: bit-identical
kernels at different budgets)."""


def tile_chunk(cap: int, tile: int = GRAM_TILE) -> int:
    """Examples per gradient chunk in exact mode: the largest power of two ≤ min(cap, tile), so
    chunks never straddle a tile; at the default (cap ≥ 64) every chunk is a tile and nothing is
    copied (:func:`retile`)."""
    return 2 ** int(math.log2(max(1, min(int(cap), tile))))


def retile(blocks: Iterator[RowBlock], n: int, tile: int = GRAM_TILE) -> Iterator[RowBlock]:
    """The rows of ``blocks`` (consecutive chunks of examples 0 … n−1) regrouped into tiles of
    ``tile`` examples, each in fresh contiguous tensors (so the products see the same memory
    layout whatever the chunks were): a block that is a whole tile already passes as it is,
    smaller ones are copied together."""
    pending: list[RowBlock] = []
    start = 0
    for block in blocks:
        if block.index.start == start and block.index.stop == min(start + tile, n) and not pending:
            start = block.index.stop
            yield RowBlock(block.index, {k: t.contiguous() for k, t in block.jac.items()},
                           {k: tuple(t.contiguous() for t in pair) for k, pair in block.taps.items()}, block.n_outputs)
            continue
        pending.append(block)
        while start < n and (block.index.stop - start >= tile or block.index.stop == n):
            stop = min(start + tile, n)
            pieces = [(b, slice(max(start, b.index.start) - b.index.start, min(stop, b.index.stop) - b.index.start))
                      for b in pending if b.index.stop > start and b.index.start < stop]
            jac = {k: torch.cat([b.jac[k][s] for b, s in pieces]) for k in block.jac}
            taps = {k: tuple(torch.cat([b.taps[k][i][s] for b, s in pieces]) for i in range(2)) for k in block.taps}
            yield RowBlock(slice(start, stop), jac, taps, block.n_outputs)
            start = stop
            pending = [b for b in pending if b.index.stop > start]


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


MEMORY_FRACTION = 0.25
MEMORY_BUDGET_CAP_MB = 4096
MEMORY_BUDGET_FLOOR_MB = 256


def available_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Memory free for new buffers: on CUDA the device's free memory (``torch.cuda.mem_get_info``);
    on CPU ``MemAvailable`` of /proc/meminfo (psutil elsewhere), lowered to the cgroup's
    ``memory.max − memory.current`` when a container limit is set."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if free is None:
        import psutil

        free = int(psutil.virtual_memory().available)
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as fh:
                free = min(free, int(limit) - int(fh.read().strip()))
    except (OSError, ValueError):
        pass
    return max(0, free)


def default_memory_budget_mb(device: torch.device | str = "cpu", available: int | None = None) -> int:
    """The default ``memory_budget_mb``: a quarter of the free memory (:func:`available_memory_bytes`),
    rounded down to a power of two MiB and clamped to [256, 4096] MiB.

    Rounding to a power of two makes it a step function of the free memory: any machine with
    16 GiB or more free gets 4096 MiB, so the same inputs give the same chunks, groups and
    kernel (bitwise) from run to run; the budget used is reported (``KernelResult.memory_budget_mb``,
    ``kernel.json``) so a run can be repeated with it on any machine.
    """
    free = available_memory_bytes(device) if available is None else int(available)
    mb = max(1, int(free * MEMORY_FRACTION) // 2**20)
    return int(min(MEMORY_BUDGET_CAP_MB, max(MEMORY_BUDGET_FLOOR_MB, 2 ** int(math.log2(mb)))))


def equal_chunks(n: int, cap: int) -> int:
    """The chunk size that splits n examples into the fewest chunks of at most ``cap``, all of
    (nearly) equal size: ⌈n / ⌈n / cap⌉⌉. 64 probes under a cap of 49 run as 32 + 32, not 49 + 15."""
    cap = max(1, min(int(cap), n))
    pieces = -(-n // cap)
    return -(-n // pieces)


def _spilled_kernel(model, output_fn, batch, groups, costs, budget, chunk_size, method, threads, spill_dir, add_jv,
                    progress, shape, trace, n_rows, kernel) -> None:
    """One gradient pass writing each tensor's n_rows × P_b slice of J to a file; then, group by
    group, K += Σ_b J_b J_bᵀ over tiles of :data:`GRAM_TILE` examples (:func:`add_chunk_gram`)."""
    names = [k for g in groups for k in g]
    ref = next(iter(model.parameters()))
    dtype, device, itemsize = ref.dtype, ref.device, ref.element_size()
    chunk = equal_chunks(batch_size(batch), min(chunk_size, budget // max(1, 4 * sum(costs.values()) * itemsize)))
    n = batch_size(batch)
    rows_per_example = n_rows // n
    widths: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="deltalens-jacobian-", dir=spill_dir) as tmp:
        paths = {k: f"{tmp}/tensor{i}.bin" for i, k in enumerate(names)}
        files = {k: open(p, "wb") for k, p in paths.items()}
        try:
            with intra_op_threads(threads):
                for block in jacobian_rows(model, output_fn, batch, names, chunk_size=chunk, method=method, shape=shape):
                    rows = (block.index.stop - block.index.start) * rows_per_example
                    for k in names:
                        slab = block.jac[k].reshape(rows, -1)
                        widths[k] = slab.shape[1]
                        files[k].write(slab.cpu().contiguous().view(torch.uint8).numpy().tobytes())
                    add_jv(block)
                    if progress is not None:
                        progress(block.index.stop, n)
                    del block
        finally:
            for fh in files.values():
                fh.close()
        for group in groups:
            slices = [torch.from_file(paths[k], shared=False, size=n_rows * widths[k], dtype=dtype)
                      .view(n_rows, widths[k]).to(device) for k in group]
            kept = []
            for start in range(0, n, GRAM_TILE):
                index = slice(start * rows_per_example, min(start + GRAM_TILE, n) * rows_per_example)
                kept.append((index, [j[index] for j in slices]))  # row slices of contiguous files: aligned like tiles
                add_chunk_gram(kernel, kept)
            del slices, kept


def _pick_method(method: str, plan: "_Plan") -> str:
    """``auto``: ``batched`` when every differentiated tensor is a weight or bias of a structured
    layer, the kernel is exact and in one pass, and a tile of :data:`GRAM_TILE` examples' taps
    fits a quarter of the budget (always, for an MLP): then each tile's cotangents come from one
    forward and one backward, on tiles of 64 whatever ``chunk_size`` (a batched forward rounds
    differently for another number of rows), and the first tile is checked for examples that
    interact (falling back to vmap if they do). Else ``vmap``, whatever the chunk (the loop's
    per-example gradients round differently, and the chunk follows the memory budget, which must
    not change the kernel)."""
    if method not in ("auto", "vmap", "loop", "batched"):
        raise DeltalensError(f"gradient method '{method}': expected auto, vmap, loop or batched")
    if method != "auto":
        return method
    structured = {k for layer in plan.layers for k in (layer.weight, layer.bias) if k is not None}
    tile_fits = plan.budget // max(1, 4 * sum(plan.costs.values()) * plan.itemsize) >= min(plan.n, GRAM_TILE)
    eligible = plan.mode == "exact" and plan.strategy == "in-memory" and set(plan.named) <= structured
    return "batched" if eligible and tile_fits else "vmap"


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
    memory_budget_mb: float | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    method: str = "auto",
    exact_strategy: str = "auto",
    spill_dir: str | None = None,
    gradient_threads: int | str | None = "auto",
    progress: Callable[[int, int], None] | None = None,
    trace: bool = False,
    implementation: str = "auto",
) -> KernelResult:
    """K_ij = ⟨∇_θ f_i, ∇_θ f_j⟩ over the trainable parameters (or ``params``). SPEC §6.

    ``output_fn(model, batch)`` gives one scalar per example (Tensor[b]) or m outputs per
    example (Tensor[b, m]). For m outputs the rows of J are the (example, output) pairs, example
    major, and K is (n·m)×(n·m); with ``trace=True`` it is Σ_o K[(i,o),(j,o)], n×n (the
    neural-tangents ``trace_axes`` kernel). Each example's m rows come from one backward vmapped
    over the output cotangents. ``batch`` is a dict of tensors with the example index first.

    ``implementation`` (exact mode): ``"jacobian"`` contracts per-example Jacobian blocks;
    ``"structured"`` takes every eligible ``nn.Linear`` by structured derivatives
    (:mod:`deltalens.kernel.structured`: K_W = Σ_{t,s}(x_t·x'_s)(g_t·g'_s) from activations and
    output cotangents, no Jacobian block); ``"auto"`` (default) does so per layer when
    T² < d_in·d_out/(d_in + d_out), T its positions per example. Sketch mode always sketches
    Jacobian blocks.

    ``method``: ``"vmap"`` (examples vmapped one at a time through the model), ``"loop"`` (one
    backward per example), ``"batched"``: the whole chunk in one forward, and one backward per
    output vmapped over the output cotangents; it needs every differentiated tensor in a
    structured ``nn.Linear`` and examples that do not interact in a batched forward (an MLP; no
    batch norm in training mode, no dropout), which the caller asserts by choosing it (only
    example 0's output is compared with its own forward); or ``"auto"`` (default): ``batched``
    on tiles of :data:`GRAM_TILE` where it applies (:func:`_pick_method`), with the first tile
    checked for interacting examples by one more backward (starting over with ``vmap`` if they
    interact), else ``vmap``. ``KernelResult.method`` says which ran.

    ``vectors`` maps a label to a parameter-shaped dict {name: tensor}; the result's
    ``jv[label]`` is J·v (float64, exact in both modes; one entry per row of J: n·m for vector
    outputs). ``memory_budget_mb`` bounds the gradient buffers (J slices in exact mode,
    per-chunk gradients in both); ``None`` (default) derives it from the free memory
    (:func:`default_memory_budget_mb`). ``exact_strategy`` (auto|spill|recompute) and
    ``spill_dir`` say how exact mode stays within it when J does not fit. ``gradient_threads`` is
    torch's intra-op thread count for the per-example pass (gradients, sketching; ``None``: the
    caller's; ``"auto"``: see :func:`pass_threads`); the J Jᵀ products run with the caller's
    threads. At most ``chunk_size`` examples go through one vmap, fewer when the budget says so
    (a quarter of it per chunk): in exact mode a power of two (:func:`tile_chunk`), and the
    chunks are regrouped into tiles of :data:`GRAM_TILE` examples, the blocks of J Jᵀ
    (:func:`add_chunk_gram`), and each tensor's products are summed in float64 in one parameter
    order, so the exact kernel is bit-for-bit the same whatever the budget, the chunk size, the
    parameter groups or the strategy (auto). ``progress(done, total)`` is called after each tile
    (exact) or chunk (sketch).
    """
    plan = _plan(model, output_fn, batch, mode=mode, dim=dim, seed=seed, params=params, vectors=vectors,
                 memory_budget_mb=memory_budget_mb, chunk_size=chunk_size, exact_strategy=exact_strategy,
                 spill_dir=spill_dir, trace=trace, implementation=implementation)
    started = time.perf_counter()
    add_jv = _jv_accumulator(plan)
    threads = pass_threads(gradient_threads, plan.numels)
    used = _pick_method(method, plan)
    if plan.strategy == "spill":
        chunk_used = equal_chunks(plan.n, min(chunk_size, plan.budget // max(1, 4 * sum(plan.costs.values())
                                                                              * plan.itemsize)))
        _spilled_kernel(model, output_fn, batch, plan.groups, plan.costs, plan.budget, chunk_size, used, threads,
                        spill_dir, add_jv, progress, plan.shape, plan.trace, plan.n_rows, plan.kernel)
        plan.kernel = symmetrize_upper(plan.kernel)
    else:
        try:
            chunk_used = _in_memory_kernel(model, output_fn, batch, plan, method=used, chunk_size=chunk_size,
                                           threads=threads, add_jv=add_jv, progress=progress,
                                           auto_batched=method == "auto" and used == "batched")
        except BatchInteraction:
            if method != "auto":
                raise
            # auto chose batched, but the examples interact: start again with per-example gradients
            plan.kernel.zero_()
            for v in plan.jv.values():
                v.zero_()
            used = "vmap"
            chunk_used = _in_memory_kernel(model, output_fn, batch, plan, method=used, chunk_size=chunk_size,
                                           threads=threads, add_jv=add_jv, progress=progress)
    return _result(plan, used, chunk_used, time.perf_counter() - started)


@dataclass
class _Plan:
    """What :func:`empirical_ntk` decided before any gradient: the parameters, the output shape,
    the structured layers, each tensor's per-example cost, the budget, the parameter groups (one
    pass each) and how exact mode stays within the budget; plus the accumulators it fills."""

    mode: str
    dim: int | None
    seed: int
    named: dict
    numels: dict
    n: int
    n_params: int
    dtype: torch.dtype
    device: torch.device
    itemsize: int
    shape: object
    m: int
    trace: bool
    n_rows: int
    layers: list
    costs: dict
    memory_budget_mb: float
    budget: int
    groups: list
    strategy: str
    sketch: object
    vectors: dict
    jv: dict
    kernel: torch.Tensor


def _plan(model, output_fn, batch, *, mode, dim, seed, params, vectors, memory_budget_mb, chunk_size, exact_strategy,
          spill_dir, trace, implementation) -> _Plan:
    """Check the arguments and decide everything :func:`empirical_ntk` needs before its passes."""
    named = trainable_parameters(model)
    if params is not None:
        missing = [p for p in params if p not in named]
        if missing:
            raise DeltalensError(f"params: {missing[0]} is not a trainable parameter of the model")
        named = {p: named[p] for p in params}
    n = batch_size(batch)
    if n < 1:
        raise DeltalensError("probes: no examples")
    if implementation not in ("auto", "jacobian", "structured"):
        raise DeltalensError(f"implementation '{implementation}': expected auto, jacobian or structured")
    numels = {k: v.numel() for k, v in named.items()}
    n_params = sum(numels.values())
    ref = next(iter(named.values()))
    dtype, device, itemsize = ref.dtype, ref.device, ref.element_size()
    shape = inspect_outputs(model, output_fn, batch, list(named))
    m = shape.m
    trace = bool(trace) and shape.n_outputs is not None
    n_rows = n if trace or shape.n_outputs is None else n * m

    layers = []
    if mode == "exact" and implementation != "jacobian":
        layers = [layer for layer in shape.layers.values()
                  if implementation == "structured" or prefers_structured(layer.positions, layer.d_in, layer.d_out)]
    costs = _per_example_costs(numels, layers, m)
    if memory_budget_mb is None:
        # no budget above the floor changes anything when J and a full chunk fit the floor: skip reading free memory
        need = max(n, 4 * chunk_size) * sum(costs.values()) * itemsize
        memory_budget_mb = MEMORY_BUDGET_FLOOR_MB if need <= MEMORY_BUDGET_FLOOR_MB * 2**20 else default_memory_budget_mb(device)
    budget = int(memory_budget_mb * 2**20)
    sketch = None
    if mode == "exact":
        groups = _groups(costs, layers, n, budget, itemsize)
        strategy = "in-memory" if len(groups) == 1 else _exact_strategy(exact_strategy, n * sum(costs.values()) * itemsize,
                                                                         spill_dir)
        if strategy == "spill" and layers and exact_strategy == "auto":
            strategy = "recompute"  # taps are not spilled; dropping the structured layers would change K's rounding
        elif strategy == "spill" and layers:  # spill asked for: Jacobian blocks for every tensor
            layers = []
            costs = _per_example_costs(numels, layers, m)
            groups = _groups(costs, layers, n, budget, itemsize)
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
    vectors = vectors or {}
    return _Plan(mode=mode, dim=dim, seed=seed, named=named, numels=numels, n=n, n_params=n_params, dtype=dtype,
                 device=device, itemsize=itemsize, shape=shape, m=m, trace=trace, n_rows=n_rows, layers=layers,
                 costs=costs, memory_budget_mb=memory_budget_mb, budget=budget, groups=groups, strategy=strategy,
                 sketch=sketch, vectors=vectors,
                 jv={label: torch.zeros(n, m, dtype=torch.float64, device=device) for label in vectors},
                 kernel=torch.zeros(n_rows, n_rows, dtype=torch.float64, device=device))


def _per_example_costs(numels: dict[str, int], layers: list, m: int) -> dict[str, int]:
    """Numbers each tensor keeps per example: m Jacobian rows, or T·(d_in + m·d_out) for a
    structured weight (its bias then costs nothing: its rows come from the same cotangents)."""
    costs = {k: m * v for k, v in numels.items()}
    for layer in layers:
        costs[layer.weight] = layer.positions * (layer.d_in + m * layer.d_out)
        if layer.bias is not None:
            costs[layer.bias] = 0
    return costs


def _groups(costs: dict[str, int], layers: list, n: int, budget: int, itemsize: int) -> list[list[str]]:
    """:func:`parameter_groups`, with a structured layer's bias always in its weight's group (its
    rows come from the weight's taps), right after the weight."""
    bias_of = {layer.weight: layer.bias for layer in layers if layer.bias is not None}
    attached = set(bias_of.values())
    groups = parameter_groups({k: c for k, c in costs.items() if k not in attached}, n, budget, itemsize)
    return [[x for k in g for x in ((k, bias_of[k]) if k in bias_of else (k,))] for g in groups]


def _jv_accumulator(plan: _Plan):
    """``add_jv(block)``: J·v of every requested vector, from a block of Jacobian rows or structured taps,
    computed example by example so that, like K, it does not depend on the chunks or groups."""
    vec64 = {label: {k: v.to(device=plan.device, dtype=torch.float64) for k, v in vec.items()}
             for label, vec in plan.vectors.items()}
    bias_of = {layer.weight: layer.bias for layer in plan.layers}  # a structured weight's taps carry its bias

    def add_jv(block) -> None:
        # example by example, tensors in the model's order: the same products whatever the chunks and groups
        terms = _block_terms(plan, block)
        for label, vec in vec64.items():
            target = plan.jv[label][block.index]
            for i in range(block.index.stop - block.index.start):
                for name, term in terms:
                    if isinstance(term, tuple):
                        bias = vec[bias_of[name]] if term[2] else None
                        target[i] += structured_jv(term[0][i:i + 1], term[1][i:i + 1], vec[name], bias)[0]
                    else:
                        target[i] += term[i].reshape(term.shape[1], -1).double() @ vec[name].reshape(-1)

    return add_jv


def _block_terms(plan: _Plan, block: RowBlock) -> list[tuple[str, object]]:
    """(parameter name, Jacobian rows or a structured weight's taps (x, g, bias differentiated))
    of a block, in the model's parameter order whatever group the block came from (a structured
    layer's bias is always in its weight's group: :func:`_groups`)."""
    layer_of = {layer.weight: layer for layer in plan.layers}
    terms = []
    for name in plan.named:
        if name in block.jac:
            terms.append((name, block.jac[name]))
        elif name in layer_of and layer_of[name].module in block.taps:
            layer = layer_of[name]
            terms.append((name, (*block.taps[layer.module], layer.bias is not None)))
    return terms


def _in_memory_kernel(model, output_fn, batch, plan: _Plan, *, method, chunk_size, threads, add_jv, progress,
                      auto_batched=False):
    """One pass per parameter group: exact mode regroups the pass's chunks into tiles
    (:func:`retile`), keeps them (no n × P_g copy) and contracts each new tile against those
    before it, adding every tensor's products to the float64 K on its own; sketch mode sketches
    the rows and contracts once at the end. Fills ``plan.kernel``; returns the chunk size."""
    n, m, n_rows, dtype, device = plan.n, plan.m, plan.n_rows, plan.dtype, plan.device
    caller_threads = torch.get_num_threads()

    def row_slice(index: slice) -> slice:
        return index if n_rows == n else slice(index.start * m, index.stop * m)

    chunk_used, done, passes = None, 0, len(plan.groups)
    # sketch: one n·m × d matrix of sketched rows J S for all groups, contracted once at the end, so the
    # estimate (J S)(J S)ᵀ does not depend on how the budget split the parameters into passes
    rows = None if plan.mode == "exact" else torch.zeros(n * m, plan.dim, dtype=dtype, device=device)
    for names in plan.groups:
        group_layers = [layer for layer in plan.layers if layer.weight in names]
        # per-chunk gradients (chunk × the group's per-example numbers) take at most a quarter of the budget
        cap = min(chunk_size, plan.budget // max(1, 4 * sum(plan.costs[k] for k in names) * plan.itemsize))
        chunk = tile_chunk(cap) if plan.mode == "exact" else equal_chunks(n, cap)
        if auto_batched:  # whole tiles, and the first one checked (_pick_method)
            chunk = GRAM_TILE
        chunk_used = chunk if chunk_used is None else min(chunk_used, chunk)
        kept: list[tuple[slice, list]] = []
        blocks = jacobian_rows(model, output_fn, batch, names, chunk_size=chunk, method=method,
                               structured=group_layers, shape=plan.shape, verify=auto_batched)
        with intra_op_threads(threads):
            for block in (retile(blocks, n) if plan.mode == "exact" else blocks):
                add_jv(block)
                c = block.index.stop - block.index.start
                if plan.mode == "exact":
                    width = c if n_rows == n else c * m
                    kept.append((row_slice(block.index), [t if isinstance(t, tuple) else t.reshape(width, -1)
                                                          for _, t in _block_terms(plan, block)]))
                    with intra_op_threads(caller_threads):
                        add_chunk_gram(plan.kernel, kept, trace=n_rows == n)
                else:
                    target = rows[block.index.start * m:block.index.stop * m]
                    for k, g in block.jac.items():
                        target += plan.sketch.project(k, g.reshape(c * m, *g.shape[2:]))
                del block
                done += c
                if progress is not None:
                    progress(done, passes * n)
        del kept
    if rows is not None:
        part = torch.zeros(n_rows, n_rows, dtype=dtype, device=device)
        upper_gram(rows.view(n_rows, -1), part)
        plan.kernel += part.double()
        del part, rows
    plan.kernel = symmetrize_upper(plan.kernel)
    return chunk_used


def _result(plan: _Plan, method: str, chunk_used, seconds: float) -> KernelResult:
    if plan.mode == "exact":
        err, err_method = exact_rounding_estimate(plan.n_params, plan.dtype), f"exact; rounding only, eps({plan.dtype})·√P"
    else:
        err = sketch_error_estimate(plan.kernel, plan.dim)
        err_method = "CountSketch variance: √(((tr K)² + ‖K‖_F²)/d)/‖K‖_F, relative Frobenius"
    return KernelResult(
        matrix=plan.kernel.cpu(),
        mode=plan.mode,
        dim=plan.dim if plan.mode == "sketch" else None,
        seed=plan.seed if plan.mode == "sketch" else None,
        n_params=plan.n_params,
        dtype=str(plan.dtype).replace("torch.", ""),
        method=method,
        n_groups=len(plan.groups),
        strategy=plan.strategy,
        error_estimate=err,
        error_method=err_method,
        jv={k: (v.reshape(-1) if plan.shape.n_outputs is not None else v[:, 0]).cpu() for k, v in plan.jv.items()},
        seconds=seconds,
        n_outputs=plan.shape.n_outputs,
        trace=plan.trace,
        structured_layers=[layer.module for layer in plan.layers],
        memory_budget_mb=float(plan.memory_budget_mb),
        chunk_size=chunk_used,
    )
