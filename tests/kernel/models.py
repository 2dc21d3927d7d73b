"""Tiny models with known kernels for the kernel tests (built in code, nothing downloaded)."""

from __future__ import annotations

import torch


class TinyMLP(torch.nn.Module):
    """f(x) = w₂ᵀ tanh(W₁ x + b₁) + b₂: one scalar per example."""

    def __init__(self, d_in: int = 5, hidden: int = 7, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.l1 = torch.nn.Linear(d_in, hidden)
        self.l2 = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


def mlp_output(model, batch):
    return model(batch["x"]).reshape(-1)


class LinearInParameters(torch.nn.Module):
    """f_i(θ) = φ_iᵀ θ with fixed features φ: J = Φ whatever θ is, so K = ΦΦᵀ never changes."""

    def __init__(self, n_features: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.theta = torch.nn.Parameter(torch.randn(n_features, dtype=torch.float64))

    def forward(self, phi):
        return phi @ self.theta


def linear_output(model, batch):
    return model(batch["phi"])


class PlantedKernel(torch.nn.Module):
    """f_i(θ) = Σ_k (Φ R(α))_ik θ_k² / 2 with Φ orthogonal (n×n) and R(α) a Givens rotation.

    J_ik = (ΦR)_ik θ_k, so K = ΦR diag(θ²) RᵀΦᵀ: eigenvectors the columns of ΦR, eigenvalues
    θ_k². Changing θ_k only rescales eigen-direction k; changing α rotates columns ``plane``.
    """

    def __init__(self, phi: torch.Tensor, theta: torch.Tensor, plane: tuple[int, int]):
        super().__init__()
        self.register_buffer("phi", phi.double())
        self.theta = torch.nn.Parameter(theta.double().clone())
        self.alpha = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.plane = plane

    def rotation(self):
        n = self.theta.numel()
        i, j = self.plane
        c, s = torch.cos(self.alpha), torch.sin(self.alpha)
        r = torch.eye(n, dtype=torch.float64)
        e = torch.zeros(n, n, dtype=torch.float64)
        e[i, i] = e[j, j] = 1.0
        rot = torch.zeros(n, n, dtype=torch.float64)
        rot[i, i] = rot[j, j] = 1.0
        rot2 = torch.zeros(n, n, dtype=torch.float64)
        rot2[i, j], rot2[j, i] = -1.0, 1.0
        return r - e + c * rot + s * rot2

    def forward(self, index):
        features = (self.phi @ self.rotation())[index]
        return (features * self.theta.square()).sum(-1) / 2


def planted_output(model, batch):
    return model(batch["index"])


def explicit_jacobian(model, output_fn, batch) -> torch.Tensor:
    """J as (n, m, P) in float64 from torch.autograd.functional.jacobian."""
    from torch.func import functional_call

    names = [k for k, _ in model.named_parameters()]
    values = tuple(p.detach() for _, p in model.named_parameters())

    def f(*flat):
        bound = lambda *a, **kw: functional_call(model, dict(zip(names, flat)), a, kw)  # noqa: E731
        return output_fn(bound, batch)

    jac = torch.autograd.functional.jacobian(f, values)
    out = f(*values)
    n, m = out.shape[0], (out.shape[1] if out.dim() == 2 else 1)
    return torch.cat([j.reshape(n, m, -1) for j in jac], dim=2).double()
