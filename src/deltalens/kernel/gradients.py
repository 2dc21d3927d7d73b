"""Per-example gradients J_i = ∇_θ f_i, block by block, and their random sketch (SPEC §6).

Two ways to get the rows of J for a chunk of examples, same numbers:
- ``vmap``: ``torch.func.vmap(torch.func.grad(f))`` over the examples of a chunk (fast for
  small models; needs an output function without data-dependent Python control flow);
- ``loop``: one ``torch.autograd.grad`` per example (any model; memory of one gradient).

Gradients are taken only with respect to a chosen *group* of parameter tensors (the others
enter as constants), so a caller can sweep the parameters group by group and never hold the
full n×P Jacobian. The sketch is a CountSketch (a sparse Johnson–Lindenstrauss projection,
the one TRAK 2023 uses for speed): per parameter block, coordinate j goes to bucket h(j) with
sign s(j), both drawn from a generator seeded by (seed, block index); E[⟨Sx, Sy⟩] = ⟨x, y⟩.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Iterator, Sequence

from dataclasses import dataclass, field

import torch

from deltalens.errors import DeltalensError
from deltalens.kernel.outputs import OutputFn, batch_size, slice_batch
from deltalens.kernel.structured import LinearLayer, LinearTaps, linear_candidates, positions_of


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Name → parameter for every parameter with ``requires_grad`` (tied weights once)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise DeltalensError(f"model {type(model).__name__}: no parameters require gradients (nothing to differentiate)")
    return params


def parameter_groups(numels: dict[str, int], rows: int, budget_bytes: int, itemsize: int) -> list[list[str]]:
    """Split parameter tensors (in order) into groups whose rows×numel×itemsize fits ``budget_bytes``.

    A tensor larger than the budget on its own forms its own group.
    """
    groups: list[list[str]] = []
    current: list[str] = []
    size = 0
    for name, numel in numels.items():
        cost = rows * numel * itemsize
        if current and size + cost > budget_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(name)
        size += cost
    if current:
        groups.append(current)
    return groups


class _ScalarModule(torch.nn.Module):
    """Wraps ``output_fn(model, batch)`` as a module so ``functional_call`` can swap parameters."""

    def __init__(self, model: torch.nn.Module, output_fn: OutputFn):
        super().__init__()
        self.model = model
        self.output_fn = output_fn

    def forward(self, batch):
        return self.output_fn(self.model, batch)


def _unsqueeze(batch):
    return torch.utils._pytree.tree_map(lambda v: v.unsqueeze(0) if isinstance(v, torch.Tensor) else v, batch)


@dataclass
class RowBlock:
    """The rows of J for one chunk of examples (SPEC §6).

    ``jac[name]``: (c, m, *param.shape) — ∂f_{i,o}/∂θ_name for the chunk's examples i and the m
    outputs o of each (m = 1 for a scalar output). ``taps[layer]``: (x (c, T, d_in), g (c, m, T,
    d_out)) for every structured layer, whose weight is not in ``jac``, nor its bias when that is
    differentiated too (its rows are Σ_t g_t: see :mod:`deltalens.kernel.structured`).
    """

    index: slice
    jac: dict[str, torch.Tensor]
    taps: dict[str, tuple[torch.Tensor, torch.Tensor]]
    n_outputs: int


@dataclass(frozen=True)
class OutputShape:
    """What a one-example forward shows: the number of outputs per example (``None``: a scalar)
    and the ``nn.Linear`` layers that can take structured derivatives; also that forward's
    output, against which the ``batched`` method checks example 0 of a batched forward."""

    n_outputs: int | None
    layers: dict[str, LinearLayer]
    first_output: torch.Tensor | None = field(default=None, compare=False, repr=False)
    modules: dict[str, torch.nn.Module] = field(default_factory=dict, compare=False, repr=False)  # layer → its nn.Linear

    @property
    def m(self) -> int:
        return self.n_outputs or 1


def inspect_outputs(model: torch.nn.Module, output_fn: OutputFn, batch, names: Sequence[str]) -> OutputShape:
    """One forward of the first example (no gradients): the output's width and, for each eligible
    ``nn.Linear`` (:func:`~deltalens.kernel.structured.linear_candidates`) that runs exactly once,
    its positions T and dimensions."""
    candidates = linear_candidates(model, names)
    taps = LinearTaps({k: v[0] for k, v in candidates.items()})
    with taps.installed(), torch.no_grad():
        out = output_fn(model, slice_batch(batch, slice(0, 1)))
        calls, shapes = taps.count()
    if out.dim() not in (1, 2) or out.shape[0] != 1:
        raise DeltalensError(f"output function: expected one scalar or one vector per example (shape [b] or [b, m]), "
                             f"got shape {tuple(out.shape)} for one example")
    layers, modules = {}, {}
    for mod, (lin, w, b) in candidates.items():
        if calls.get(mod) != 1:
            continue
        layers[mod] = LinearLayer(mod, w, b, lin.in_features, lin.out_features, positions_of(shapes[mod]), shapes[mod])
        modules[mod] = lin
    return OutputShape(None if out.dim() == 1 else int(out.shape[1]), layers, out, modules)


def jacobian_rows(
    model: torch.nn.Module,
    output_fn: OutputFn,
    batch,
    names: Sequence[str],
    *,
    chunk_size: int = 8,
    method: str = "vmap",
    structured: Sequence[LinearLayer] = (),
    shape: OutputShape | None = None,
    verify: bool = True,
) -> Iterator[RowBlock]:
    """Yield the rows of J chunk by chunk as :class:`RowBlock` (SPEC §6).

    Differentiates the parameters ``names`` (the others are constants) and, for each layer in
    ``structured``, the cotangent of its output instead of its weight and bias. For a vector
    output (``output_fn`` returns [b, m]) each example's m rows come from one backward vmapped
    over the m output cotangents (``torch.func.jacrev``), not from m separate passes.
    ``method``: ``"vmap"`` (vmap over the chunk's examples), ``"loop"`` (one example at a time) or
    ``"batched"`` (one forward and backward per chunk: only structured layers; ``verify``: check
    that the first chunk's examples do not interact, with one more backward).
    """
    from torch.func import functional_call

    shape = shape or inspect_outputs(model, output_fn, batch, names)
    vector = shape.n_outputs is not None
    wanted = set(names)
    structured = [layer for layer in structured if layer.weight in wanted]
    skip = {k for layer in structured for k in (layer.weight, layer.bias) if k in wanted}
    diff_names = [k for k in names if k not in skip]
    if method == "batched" and diff_names:
        raise DeltalensError(f"gradient method 'batched': '{diff_names[0]}' is not in a structured nn.Linear layer "
                             "(a batched backward gives per-example cotangents, not per-example gradients)")
    keys = [f"model.{k}" for k in diff_names]
    ref = next(model.parameters())
    eps0 = {layer.module: torch.zeros(layer.out_shape, dtype=ref.dtype, device=ref.device) for layer in structured}
    taps = LinearTaps({layer.module: shape.modules[layer.module] for layer in structured})
    n = batch_size(batch)
    if method != "batched":
        wrapper = _ScalarModule(model, output_fn)
        all_params = {f"model.{k}": v.detach() for k, v in model.named_parameters()}
        constants = {k: v for k, v in all_params.items() if k not in set(keys)}

    def f(diff: dict, eps: dict, example):
        taps.begin(eps)
        try:
            if diff:
                out = functional_call(wrapper, {**constants, **diff}, (_unsqueeze(example),), strict=False)
            else:  # every differentiated tensor is in a structured layer: the parameters stay as they are
                out = wrapper(_unsqueeze(example))
        finally:
            xs = taps.end()
        return (out.reshape(-1) if vector else out.reshape(-1)[0]), xs

    def assemble(index: slice, gdiff: dict, geps: dict, xs: dict) -> RowBlock:
        c = index.stop - index.start
        jac = {}
        for name, k in zip(diff_names, keys):
            g = gdiff[k]
            jac[name] = g if vector else g.unsqueeze(1)
        tapped = {}
        for layer in structured:
            g = geps[layer.module].reshape(c, shape.m, layer.positions, layer.d_out)
            tapped[layer.module] = (xs[layer.module].reshape(c, layer.positions, layer.d_in), g)
        return RowBlock(index, jac, tapped, shape.m)

    with taps.installed():
        for start in range(0, n, chunk_size):
            index = slice(start, min(start + chunk_size, n))
            chunk = slice_batch(batch, index)
            diff = {k: all_params[k] for k in keys}
            if method == "vmap":
                gdiff, geps, xs = _vmap_gradients(f, diff, eps0, chunk, vector)
            elif method == "loop":
                gdiff, geps, xs = _loop_gradients(f, diff, eps0, chunk, index.stop - index.start, vector, shape.m)
            elif method == "batched":
                gdiff, geps, xs = _batched_cotangents(model, output_fn, chunk, taps, eps0, index, shape, verify)
            else:
                raise DeltalensError(f"gradient method '{method}': expected 'vmap', 'loop' or 'batched'")
            yield assemble(index, gdiff, geps, xs)


def _vmap_gradients(f, diff: dict, eps0: dict, chunk, vector: bool):
    """``method="vmap"``: ``torch.func.grad`` (``jacrev`` for a vector output) of
    ``f(diff, eps, example)`` vmapped over the chunk's examples: (gradients, cotangents, inputs)."""
    from torch.func import grad, jacrev, vmap

    derivative = jacrev if vector else grad
    # no_grad: the model's own parameters (used as they are when every differentiated tensor is
    # structured) record no graph; torch.func.grad ignores an outer no_grad
    with warnings.catch_warnings(), torch.no_grad():  # SDPA's CPU backward has no batching rule yet: a known, harmless slow path
        warnings.filterwarnings("ignore", message="There is a performance drop")
        (gdiff, geps), xs = vmap(derivative(f, argnums=(0, 1), has_aux=True), in_dims=(None, None, 0))(diff, eps0, chunk)
    return gdiff, geps, xs


def _loop_gradients(f, diff: dict, eps0: dict, chunk, c: int, vector: bool, m: int):
    """``method="loop"``: one backward per example (per output for a vector output) of
    ``f(diff, eps, example) -> (output, taps)``: (gradients by parameter key, cotangents by
    layer, layer inputs by layer), each stacked over the chunk's ``c`` examples."""
    rows = []
    for i in range(c):
        leaves = {k: v.detach().requires_grad_(True) for k, v in diff.items()}
        eps = {k: v.clone().requires_grad_(True) for k, v in eps0.items()}
        inputs = [*leaves.values(), *eps.values()]
        with torch.enable_grad():
            value, x = f(leaves, eps, slice_batch(chunk, i))
            if vector:
                per_output = [torch.autograd.grad(value[o], inputs, retain_graph=o < value.shape[0] - 1,
                                                  allow_unused=True) for o in range(value.shape[0])]
                got = [None if all(r[j] is None for r in per_output) else
                       torch.stack([torch.zeros_like(inputs[j]) if r[j] is None else r[j] for r in per_output])
                       for j in range(len(inputs))]
            else:
                got = list(torch.autograd.grad(value, inputs, allow_unused=True))
        got = [torch.zeros((m,) * vector + tuple(v.shape), dtype=v.dtype, device=v.device) if g is None else g
               for g, v in zip(got, inputs)]
        rows.append((got, {k: v.detach() for k, v in x.items()}))
    keys = list(diff)
    gdiff = {k: torch.stack([r[0][j] for r in rows]) for j, k in enumerate(keys)}
    geps = {k: torch.stack([r[0][len(keys) + j] for r in rows]) for j, k in enumerate(eps0)}
    xs = {k: torch.stack([r[1][k] for r in rows]) for k in eps0}
    return gdiff, geps, xs


class BatchInteraction(DeltalensError):
    """The ``batched`` method found examples that interact in a batched forward."""


FOLDED_CHECK_NUMEL = 2**20
"""The batched check of a vector output rides as an (m+1)-th cotangent of the batched backward
while the m + 1 cotangents (materialized by the concatenation) hold at most this many numbers
(4 MiB in float32: m ≤ 127 at 64 examples); beyond, it takes a backward of its own."""


def _batched_cotangents(model, output_fn, chunk, taps: LinearTaps, eps0: dict, index: slice, shape: OutputShape,
                        verify: bool):
    """The ``batched`` method: one forward of the whole chunk and one backward per output column,
    vmapped over the m output cotangents (``is_grads_batched``), giving every example's
    cotangents g at once. Exact only when examples do not interact in the batched forward:
    :func:`_check_batch_independence` compares example 0 with its own forward and, with
    ``verify`` (on the first chunk), the backward with one more cotangent."""
    c = index.stop - index.start
    verify = verify and index.start == 0
    eps = {k: torch.zeros((c, *v.shape[1:]), dtype=v.dtype, device=v.device, requires_grad=True) for k, v in eps0.items()}
    with torch.enable_grad():
        taps.begin(eps)
        try:
            out = output_fn(model, chunk)
        finally:
            xs = taps.end()
        leaves = list(eps.values())
        m = shape.m
        if verify:  # the check's weights: powers of two, so without interaction they scale a cotangent exactly
            gen = torch.Generator().manual_seed(0)
            w = (2.0 ** torch.randint(-6, 7, (c,), generator=gen)).to(dtype=out.dtype, device=out.device)
        else:
            w = None
        picked, checks = None, []
        if shape.n_outputs is None:
            out = out.reshape(-1)
            grads = _grads(out, leaves, torch.ones_like(out), retain=verify)
            if verify:
                checks = _grads(out, leaves, w)
            geps = {k: g.unsqueeze(1) for k, g in zip(eps, grads)}
        else:
            cotangents = torch.eye(m, dtype=out.dtype, device=out.device)[:, None, :].expand(m, c, m)  # a view
            if verify:
                picked = torch.randint(0, m, (c,), generator=gen)  # the output each example's check weighs
                weights = torch.zeros(1, c, m, dtype=out.dtype, device=out.device)
                weights[0, torch.arange(c, device=out.device), picked.to(out.device)] = w
                # one more cotangent in the same batched backward, while the m + 1 of them are small
                # (they are materialized: m·c·m numbers); a separate backward otherwise
                fold = (m + 1) * c * m <= FOLDED_CHECK_NUMEL
                if fold:
                    cotangents = torch.cat([cotangents, weights])
                else:
                    checks = _grads(out, leaves, weights[0], retain=True)
            grads = _grads(out, leaves, cotangents, batched=True)
            if verify and fold:
                checks = [g[m] for g in grads]
            geps = {k: g[:m].transpose(0, 1) for k, g in zip(eps, grads)}  # (c, m, ...)
    xs = {k: x.detach() for k, x in xs.items()}
    _check_batch_independence(shape, geps, checks, w, picked, out.detach() if index.start == 0 else None)
    return {}, geps, xs


def _grads(out, leaves: list, cotangents, *, batched: bool = False, retain: bool = False) -> list:
    """∂⟨cotangents, out⟩/∂leaves (``batched``: one per leading row of ``cotangents``); a layer whose
    output the output function ignores gets zeros (``materialize_grads`` drops the batch axis)."""
    got = torch.autograd.grad(out, leaves, grad_outputs=cotangents, is_grads_batched=batched, retain_graph=retain,
                              allow_unused=True)
    lead = tuple(cotangents.shape[:1]) if batched else ()
    return [torch.zeros(lead + tuple(v.shape), dtype=v.dtype, device=v.device) if g is None else g
            for g, v in zip(got, leaves)]


def _check_batch_independence(shape: OutputShape, geps: dict, checks, w, picked, out) -> None:
    """Raise :class:`BatchInteraction` unless the chunk's examples are independent in the batched forward.

    Backward (``checks``, empty unless verified): the cotangent of Σ_i w_i f_{i,o_i} (random o_i,
    w_i = 2^k, k uniform in −6…6) must be w_j ∂f_{j,o_j}/∂y_j for every example j and layer: a
    cross-example derivative ∂f_i/∂y_j adds Σ_{i≠j} (w_i − w_j)·∂f_{i,o_i}/∂y_j (missed only if
    the w_i that carry it all equal w_j, 1 in 13 for one pair of examples). Without interaction a
    power of two scales every term of the backward exactly, so the two are equal bit for bit; where
    they are not (subnormals; a check in a backward of its own, which may round otherwise), a gap
    under 2⁻²⁰ of the layer's largest cotangent passes. Forward (``out``, the first chunk's
    outputs): example 0's output must match the one-example forward of :func:`inspect_outputs`
    to √eps of the chunk's largest output (not example 0's: an output near 0 would leave no room
    for rounding), which catches what changes values but not derivatives (dropout, batch
    statistics before the first layer).
    """
    for (name, g), check in zip(geps.items(), checks):
        rows = g[:, 0] if picked is None else g[torch.arange(g.shape[0], device=g.device), picked.to(g.device)]
        expected = w.view(-1, *([1] * (rows.dim() - 1))) * rows
        if not torch.equal(check, expected) and _gap(check, expected, 2.0**-20):
            raise BatchInteraction(f"gradient method 'batched': examples interact in a batched forward (layer {name}: "
                                   "an example's output depends on another example's activations); use method 'vmap'")
    if out is None or shape.first_output is None:
        return
    ref = shape.first_output.to(out.device).reshape(out[:1].shape)
    if not torch.equal(out[:1], ref) and _gap(out[:1], ref, float(torch.finfo(out.dtype).eps) ** 0.5, scale=out):
        raise BatchInteraction("gradient method 'batched': example 0's output differs between a batched forward and "
                               "its own forward (batch statistics, dropout or mixing of examples); use method 'vmap'")


def _gap(got: torch.Tensor, ref: torch.Tensor, tol: float, scale: torch.Tensor | None = None) -> bool:
    """max |got − ref| > tol · max |scale| (default ``ref``; max |x| by amax: torch.dist and
    vector_norm at p = inf are 10× slower)."""
    return float((got - ref).abs().amax()) > tol * float((ref if scale is None else scale).abs().amax())


def per_example_gradients(
    model: torch.nn.Module,
    output_fn: OutputFn,
    batch,
    names: Sequence[str],
    *,
    chunk_size: int = 8,
    method: str = "vmap",
) -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
    """Yield ``(examples, {name: ∂f_i/∂θ_name for i in examples})``, chunk by chunk.

    Each gradient tensor has shape ``(chunk, *param.shape)`` (``(chunk, m, *param.shape)`` for an
    output function with m outputs per example) and the model's dtype. Only the parameters in
    ``names`` are differentiated; all other parameters and buffers are constants. ``method`` is
    ``"vmap"`` or ``"loop"`` (see module docstring).
    """
    shape = inspect_outputs(model, output_fn, batch, [])
    for block in jacobian_rows(model, output_fn, batch, names, chunk_size=chunk_size, method=method, shape=shape):
        yield block.index, {k: (v if shape.n_outputs is not None else v.squeeze(1)) for k, v in block.jac.items()}


class CountSketch:
    """Seeded CountSketch of a parameter vector into R^d, block by block (SPEC §6, ours).

    For block b with P_b coordinates: S_b x = Σ_j s_b(j) x_j e_{h_b(j)}, with h_b(j) uniform in
    [0, d) and s_b(j) = ±1, drawn from ``torch.Generator`` seeded by crc32(block name) ⊕ seed,
    so the same (seed, name) always gives the same projection, on any device.
    E[⟨Sx, Sy⟩] = ⟨x, y⟩; Var ⟨Sx, Sy⟩ ≤ (‖x‖²‖y‖² + ⟨x, y⟩²)/d.
    Hashes are cached per block: on a CPU one int32 per parameter, scattered by a compiled loop
    (:mod:`deltalens.kernel.sketch_scatter`, the same bits as ``index_add_``); elsewhere int64.
    """

    def __init__(self, dim: int, seed: int = 0):
        if dim < 1:
            raise DeltalensError(f"--dim: sketch dimension must be ≥ 1, got {dim}")
        self.dim = int(dim)
        self.seed = int(seed)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _hash(self, name: str, numel: int, device: torch.device) -> torch.Tensor:
        """Per-coordinate draw in [0, 2d): bucket = draw >> 1, sign = +1 if draw is odd else −1."""
        if name not in self._cache:
            gen = torch.Generator(device="cpu")
            gen.manual_seed((zlib.crc32(name.encode()) ^ (self.seed * 0x9E3779B1)) & 0x7FFF_FFFF_FFFF_FFFF)
            draw = torch.randint(0, 2 * self.dim, (numel,), generator=gen)
            # CPU: int32 for the compiled scatter (index_add_ is an order of magnitude slower with int32 indices)
            self._cache[name] = draw.to(torch.int32) if torch.device(device).type == "cpu" else draw.to(device)
        return self._cache[name]

    def project(self, name: str, grads: torch.Tensor) -> torch.Tensor:
        """Sketch rows of ``grads`` (c × block shape) of block ``name`` → c × d.

        The signs cost no multiply: coordinates are added into 2d slots (bucket, sign bit) and
        each bucket is (odd slot − even slot).
        """
        rows = grads.reshape(grads.shape[0], -1)
        draw = self._hash(name, rows.shape[1], rows.device)
        if rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64):
            from deltalens.kernel.sketch_scatter import scatter_slots

            slots = scatter_slots(rows, draw.numpy(), 2 * self.dim)
        else:
            slots = torch.zeros(rows.shape[0], 2 * self.dim, dtype=rows.dtype, device=rows.device)
            slots.index_add_(1, draw.long() if draw.dtype != torch.int64 else draw, rows)
        return slots[:, 1::2] - slots[:, 0::2]
