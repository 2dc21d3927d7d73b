"""Structured derivatives of ``nn.Linear`` layers for the eNTK (SPEC §6; Novak et al. 2022, "Fast
finite width neural tangent kernel", the structured-derivatives implementation of neural-tangents).

A linear layer y_t = W x_t + b over T positions (t = 1..T; T = 1 for an MLP) has, for any
output f_r of the model (a row r of J: a probe, or a (probe, output) pair),

    ∂f_r/∂W = Σ_t g_rt x_tᵀ,   ∂f_r/∂b = Σ_t g_rt,   g_rt = ∂f_r/∂y_t,

so the layer's share of K = J Jᵀ is, without ever forming the n × (d_out·d_in) block of J,

    K_W[r, r'] = ⟨Σ_t g_rt x_tᵀ, Σ_s g_r's x'_sᵀ⟩_F = Σ_{t,s} (x_t · x'_s)(g_rt · g_r's).

Costs per pair of rows: T²·(d_in + d_out) multiply-adds here against d_in·d_out for the
Jacobian contraction (plus T·d_in·d_out per row to form the Jacobian in the backward pass). So a
layer is contracted this way when

    T² < d_in·d_out / (d_in + d_out)                                  (:func:`prefers_structured`)

and by its Jacobian otherwise. The activations x come from a forward hook; the cotangents g are
the gradients with respect to a zero tensor ε that the same hook adds to the layer's output
(∂f/∂ε = ∂f/∂y), so one backward (vmapped over examples and, for vector outputs, over output
cotangents) yields g for every structured layer and the Jacobian rows of every other parameter.
A layer whose weight is shared with another module (tied embeddings) or that runs more or less
than once per forward keeps the Jacobian route.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch


def prefers_structured(positions: int, d_in: int, d_out: int) -> bool:
    """The per-layer rule: T² < d_in·d_out/(d_in + d_out) (structured derivatives beat the Jacobian)."""
    return positions * positions * (d_in + d_out) < d_in * d_out


@dataclass(frozen=True)
class LinearLayer:
    """One ``nn.Linear`` eligible for structured derivatives, as seen in a one-example forward."""

    module: str  # module path, e.g. "model.layers.0.mlp.up_proj"
    weight: str  # parameter names (of the model)
    bias: str | None
    d_in: int
    d_out: int
    positions: int  # T: the product of the output's dimensions between the example and the feature axes
    out_shape: tuple[int, ...]  # the layer's output shape in a one-example forward (ε's shape)

    @property
    def structured_row_numel(self) -> int:
        """Numbers kept per row of J by the structured route: T·(d_in + d_out)."""
        return self.positions * (self.d_in + self.d_out)


class LinearTaps:
    """Forward hooks on chosen ``nn.Linear`` modules: record the input x, return y + ε.

    ``begin(eps)`` arms the hooks with the ε tensors of one forward; ``end()`` returns the
    recorded inputs {module: x} and disarms them. Outside begin/end the hooks do nothing.
    """

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.modules = modules
        self._names = {id(m): name for name, m in modules.items()}
        self._eps: dict[str, torch.Tensor] | None = None
        self._x: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._handles: list = []

    def _hook(self, module, inputs, output):
        name = self._names[id(module)]
        self._calls[name] = self._calls.get(name, 0) + 1
        self._shapes[name] = tuple(output.shape)
        if self._eps is None:
            return None
        self._x[name] = inputs[0]
        return output + self._eps[name]

    @contextlib.contextmanager
    def installed(self) -> Iterator["LinearTaps"]:
        self._handles = [m.register_forward_hook(self._hook) for m in self.modules.values()]
        try:
            yield self
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []
            self._eps = None

    def begin(self, eps: dict[str, torch.Tensor]) -> None:
        self._eps, self._x = eps, {}

    def end(self) -> dict[str, torch.Tensor]:
        x, self._eps, self._x = self._x, None, {}
        return x

    def count(self) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
        """Calls and output shapes seen since the last ``reset_count``."""
        return dict(self._calls), dict(self._shapes)

    def reset_count(self) -> None:
        self._calls, self._shapes = {}, {}


def linear_candidates(model: torch.nn.Module, names) -> dict[str, tuple[torch.nn.Linear, str, str | None]]:
    """``nn.Linear`` modules whose weight is among ``names`` and whose differentiated parameters are
    used by no other module (a tied weight's gradient has a second term the layer does not see):
    {module name: (module, weight, bias or None when the layer has none or it is not among ``names``)}."""
    wanted = set(names)
    owners: dict[int, int] = {}
    linears = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for p in module._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
        if type(module) is torch.nn.Linear:  # subclasses may change forward (LoRA, quantised)
            linears.setdefault(id(module), (mname, module))  # a module reached twice: its first name
    out = {}
    for mname, module in linears.values():
        w = f"{mname}.weight" if mname else "weight"
        b = (f"{mname}.bias" if mname else "bias") if module.bias is not None else None
        if w not in wanted or owners.get(id(module.weight)) != 1:
            continue
        if b is not None and b not in wanted:
            b = None  # a constant bias: nothing to differentiate
        if b is not None and owners.get(id(module.bias)) != 1:
            continue
        out[mname] = (module, w, b)
    return out


def add_structured_block(out: torch.Tensor, a: tuple, b: tuple, trace: bool) -> None:
    """Add one layer's kernel block between two chunks of examples to ``out`` (SPEC §6, structured derivatives).

    ``a``, ``b``: the two chunks' taps (x, g, bias) of the same layer, x: (c, T, d_in) layer inputs,
    g: (c, m, T, d_out) cotangents ∂f_{i,o}/∂y_{i,t}, bias: whether the layer's bias is
    differentiated. Adds K_W[(i,o), (j,p)] = Σ_{t,s} (x_it·x_js)(g_iot·g_jps) to ``out`` as
    (c_a·m, c_b·m) when ``trace`` is false, and Σ_o K_W[(i,o), (j,o)] as (c_a, c_b) when it is
    true. With the bias, y = W x + b = [W b]·[x; 1], so K_W + K_b = Σ_{t,s} (x_it·x_js + 1)(g_iot·g_jps)
    in the same block. At T = 1 the product of the two Gram blocks is formed in ``out``'s dtype
    (float64: exact products of float32 entries).
    """
    (x_a, g_a, bias), (x_b, g_b, _) = a, b
    ca, m, t, dout = g_a.shape
    cb = g_b.shape[0]
    a = x_a.reshape(ca * t, -1) @ x_b.reshape(cb * t, -1).T
    if bias:
        a += 1.0
    if trace or m == 1:
        if t > 1:
            g_a, g_b = g_a.transpose(1, 2), g_b.transpose(1, 2)  # (c, T, m, d_out): rows per position
        b = g_a.reshape(ca * t, m * dout) @ g_b.reshape(cb * t, m * dout).T
        if t == 1:
            out.addcmul_(a, b)
        else:
            out += (a.view(ca, t, cb, t) * b.view(ca, t, cb, t)).sum((1, 3))
        return
    b = g_a.reshape(ca * m * t, dout) @ g_b.reshape(cb * m * t, dout).T
    if t == 1:
        out.view(ca, m, cb, m).addcmul_(b.view(ca, m, cb, m), a.view(ca, 1, cb, 1))
        return
    out += torch.einsum("itjs,iotjps->iojp", a.view(ca, t, cb, t), b.view(ca, m, t, cb, m, t)).reshape(ca * m, cb * m)


def structured_jv(x: torch.Tensor, g: torch.Tensor, weight_vector: torch.Tensor,
                  bias_vector: torch.Tensor | None = None) -> torch.Tensor:
    """⟨∂f_{i,o}/∂W, V⟩ (+ ⟨∂f_{i,o}/∂b, v_b⟩) = Σ_t g_iot · (V x_it + v_b) for every row: (c, m), in float64."""
    xv = x.double() @ weight_vector.double().T  # (c, T, d_out)
    if bias_vector is not None:
        xv = xv + bias_vector.double()
    return torch.einsum("itk,iotk->io", xv, g.double())


def positions_of(out_shape: tuple[int, ...]) -> int:
    """T of a layer from its output shape in a one-example forward: all axes but the first and last."""
    return int(math.prod(out_shape[1:-1])) if len(out_shape) > 2 else 1
