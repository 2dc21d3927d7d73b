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

import torch

from deltalens.errors import DeltalensError
from deltalens.kernel.outputs import OutputFn, batch_size, slice_batch


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

    Each gradient tensor has shape ``(chunk, *param.shape)`` and the model's dtype. Only the
    parameters in ``names`` are differentiated; all other parameters and buffers are constants.
    ``method`` is ``"vmap"`` or ``"loop"`` (see module docstring).
    """
    from torch.func import functional_call, grad, vmap

    wrapper = _ScalarModule(model, output_fn)
    all_params = {f"model.{k}": v.detach() for k, v in model.named_parameters()}
    keys = [f"model.{k}" for k in names]
    constants = {k: v for k, v in all_params.items() if k not in set(keys)}
    n = batch_size(batch)

    def scalar(diff: dict, example):
        out = functional_call(wrapper, {**constants, **diff}, (_unsqueeze(example),), strict=False)
        return out.reshape(-1)[0]

    for start in range(0, n, chunk_size):
        index = slice(start, min(start + chunk_size, n))
        chunk = slice_batch(batch, index)
        diff = {k: all_params[k] for k in keys}
        if method == "vmap":
            with warnings.catch_warnings():  # SDPA's CPU backward has no batching rule yet: a known, harmless slow path
                warnings.filterwarnings("ignore", message="There is a performance drop")
                grads = vmap(grad(scalar), in_dims=(None, 0))(diff, chunk)
            out = {name: grads[k] for name, k in zip(names, keys)}
        elif method == "loop":
            rows: list[tuple[torch.Tensor, ...]] = []
            for i in range(index.stop - index.start):
                leaves = {k: v.detach().requires_grad_(True) for k, v in diff.items()}
                with torch.enable_grad():
                    value = scalar(leaves, slice_batch(chunk, i))
                    rows.append(torch.autograd.grad(value, list(leaves.values()), allow_unused=True))
            out = {}
            for j, (name, k) in enumerate(zip(names, keys)):
                column = [torch.zeros_like(diff[k]) if r[j] is None else r[j] for r in rows]
                out[name] = column[0].unsqueeze(0) if len(column) == 1 else torch.stack(column)  # no copy for one
        else:
            raise DeltalensError(f"gradient method '{method}': expected 'vmap' or 'loop'")
        yield index, out


class CountSketch:
    """Seeded CountSketch of a parameter vector into R^d, block by block (SPEC §6, ours).

    For block b with P_b coordinates: S_b x = Σ_j s_b(j) x_j e_{h_b(j)}, with h_b(j) uniform in
    [0, d) and s_b(j) = ±1, drawn from ``torch.Generator`` seeded by crc32(block name) ⊕ seed,
    so the same (seed, name) always gives the same projection, on any device.
    E[⟨Sx, Sy⟩] = ⟨x, y⟩; Var ⟨Sx, Sy⟩ ≤ (‖x‖²‖y‖² + ⟨x, y⟩²)/d.
    Hashes are cached per block (one int64 per parameter).
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
            # int64 on purpose: index_add_ is an order of magnitude slower with int32 indices on CPU
            self._cache[name] = torch.randint(0, 2 * self.dim, (numel,), generator=gen).to(device)
        return self._cache[name]

    def project(self, name: str, grads: torch.Tensor) -> torch.Tensor:
        """Sketch rows of ``grads`` (c × block shape) of block ``name`` → c × d.

        The signs cost no multiply: coordinates are added into 2d slots (bucket, sign bit) and
        each bucket is (odd slot − even slot).
        """
        rows = grads.reshape(grads.shape[0], -1)
        draw = self._hash(name, rows.shape[1], rows.device)
        slots = torch.zeros(rows.shape[0], 2 * self.dim, dtype=rows.dtype, device=rows.device)
        slots.index_add_(1, draw, rows)
        return slots[:, 1::2] - slots[:, 0::2]
