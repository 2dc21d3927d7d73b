"""Tiny float64 language models and explicit curvature matrices for the curvature tests.

Everything here is built independently of ``deltalens.curvature``: H by ``torch.func.hessian``,
J by ``torch.func.jacrev``, G = (1/n) Jᵀ diag(H_z) J with H_z = diag(p) − ppᵀ written out, the
kernels as J Jᵀ with the symmetric square root of H_z from ``eigh``, all in float64.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, hessian, jacrev


class TinyLM(torch.nn.Module):
    """Causal toy LM: embed, a tanh mixing layer, a causal running mean, a head (≈100 parameters).

    ``linear=True`` freezes the embedding and drops the tanh layer: logits are then linear in the
    parameters (the head), so the loss's Hessian equals its Gauss-Newton matrix exactly.
    """

    def __init__(self, vocab: int = 7, width: int = 4, seed: int = 0, linear: bool = False):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.linear = linear
        emb = torch.randn(vocab, width, generator=gen, dtype=torch.float64)
        if linear:
            self.register_buffer("embed", emb)
        else:
            self.embed = torch.nn.Parameter(emb)
            self.mix = torch.nn.Linear(width, width, dtype=torch.float64)
            with torch.no_grad():
                self.mix.weight.copy_(torch.randn(width, width, generator=gen, dtype=torch.float64))
                self.mix.bias.copy_(torch.randn(width, generator=gen, dtype=torch.float64) * 0.3)
        self.head = torch.nn.Linear(width, vocab, dtype=torch.float64)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(vocab, width, generator=gen, dtype=torch.float64))
            self.head.bias.copy_(torch.randn(vocab, generator=gen, dtype=torch.float64) * 0.3)

    def forward(self, input_ids):
        h = self.embed[input_ids]
        if not self.linear:
            h = h + torch.tanh(self.mix(h))
        steps = torch.arange(1, h.shape[1] + 1, dtype=h.dtype)[None, :, None]
        h = h.cumsum(1) / steps
        return self.head(h)


def toy_batch(vocab: int = 7, n: int = 6, length: int = 5, seed: int = 1) -> dict:
    """n right-padded sequences of random tokens; the last 2–3 real tokens are the completion."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=gen)
    mask = torch.zeros(n, length)
    for i in range(n):
        real = length - (i % 2)  # every other probe one token shorter (padding at the end)
        mask[i, real - 2 - (i % 3 == 0):real] = 1.0
    return {"input_ids": ids, "completion_mask": mask}


class Explicit:
    """H, G, J, the kernels and the residual term of a model on a batch, as explicit matrices."""

    def __init__(self, model: torch.nn.Module, batch: dict, names: list[str] | None = None,
                 columns: torch.Tensor | None = None):
        params = {k: v.detach() for k, v in model.named_parameters()}
        self.names = names or list(params)
        self.shapes = [params[k].shape for k in self.names]
        self.numels = [params[k].numel() for k in self.names]
        self.theta = torch.cat([params[k].reshape(-1) for k in self.names])
        fixed = {k: v for k, v in params.items() if k not in self.names}
        ids = batch["input_ids"]
        mask = batch["completion_mask"][:, 1:] > 0
        targets = ids[:, 1:][mask]
        self.n = ids.shape[0]
        probe = mask.nonzero()[:, 0]

        def unflat(theta):
            parts = torch.split(theta, self.numels)
            return {**fixed, **{k: p.reshape(s) for k, p, s in zip(self.names, parts, self.shapes)}}

        def full_logits(theta):
            out = functional_call(model, unflat(theta), (ids,))
            return (out.logits if hasattr(out, "logits") else out)[:, :-1][mask]

        def outputs(theta):
            z = full_logits(theta)
            return (z if columns is None else z.gather(-1, columns)).reshape(-1)

        def loss(theta):
            return torch.nn.functional.cross_entropy(full_logits(theta), targets, reduction="sum") / self.n

        def logprob(theta):
            lp = torch.log_softmax(full_logits(theta), -1).gather(-1, targets[:, None])[:, 0]
            return torch.zeros(self.n, dtype=lp.dtype).index_add(0, probe, lp)

        theta = self.theta
        self.hessian = hessian(loss)(theta)
        z = full_logits(theta)
        p_full = torch.softmax(z, -1)
        p = p_full if columns is None else p_full.gather(-1, columns)
        rows, width = p.shape
        self.jacobian = jacrev(outputs)(theta)  # (rows·width) × P
        hz = torch.zeros(rows * width, rows * width, dtype=torch.float64)
        sqrt_hz = torch.zeros_like(hz)
        for r in range(rows):
            block = torch.diag(p[r]) - torch.outer(p[r], p[r])
            w, v = torch.linalg.eigh(block)
            s = slice(r * width, (r + 1) * width)
            hz[s, s] = block
            sqrt_hz[s, s] = v @ torch.diag(w.clamp_min(0).sqrt()) @ v.T
        self.hz = hz
        j = self.jacobian
        self.gauss_newton = j.T @ hz @ j / self.n
        self.kernel_logits = j @ j.T
        self.kernel_weighted = sqrt_hz @ j @ j.T @ sqrt_hz
        self.jacobian_logprob = jacrev(logprob)(theta)
        self.kernel_logprob = self.jacobian_logprob @ self.jacobian_logprob.T
        residual = (p_full - torch.nn.functional.one_hot(targets, p_full.shape[-1])).detach()
        self.residual_term = hessian(lambda t: (residual * full_logits(t)).sum() / self.n)(theta)


def top_by_magnitude(matrix: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, vectors) of the r eigenpairs of largest |λ|, |λ| descending, by full eigh."""
    w, v = torch.linalg.eigh((matrix + matrix.T) / 2)
    order = torch.argsort(w.abs(), descending=True)[:r]
    return w[order], v[:, order]
