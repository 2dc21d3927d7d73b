"""Curvature-vector products on the kernel's probes (SPEC §9), none of which forms H, G or J.

Outputs z = the logits at the completion positions: position t of probe i is scored when token
t+1 belongs to the completion, the (i, t) rows stacked into an M × V matrix (all vocabulary
entries, or with ``vocab_index`` the V columns chosen per row, e.g. the base's top-V).
Loss L(θ) = (1/n) Σ_i Σ_{t ∈ completion_i} CE(z_it, y_it) over the full vocabulary.

- :meth:`CurvatureProducts.hvp`: H v, H = ∇²L, by a cached double backward (∇L with its graph
  is built once; each product is one backward through it).
- :meth:`CurvatureProducts.ggn_vp`: G v = (1/n) Jᵀ H_z J v with H_z = diag(p) − ppᵀ per row (the
  softmax cross-entropy curvature, restricted to the chosen columns): one JVP (forward mode),
  H_z per row, one VJP through the cached graph of z.
- :meth:`CurvatureProducts.kernel_vp`: the logit eNTK in function space, K u = J Jᵀ u, or its
  loss-weighted form Bᵀ J Jᵀ B u with B Bᵀ = H_z (:func:`weight_factor`): one VJP, one JVP.
- :meth:`CurvatureProducts.jt`: Jᵀ u (or Jᵀ B u), the eNTK's parameter-space directions.

Products act on the parameters of a *block* (``names``; default all trainable ones), the
others held fixed: the block's principal submatrices H_BB, G_BB and kernels J_B J_Bᵀ. Vectors are
flat, in ``model.named_parameters()`` order, each tensor flattened row-major. Forward-mode AD
needs an attention implementation with forward derivatives: load Hugging Face models with
``attn_implementation="eager"`` (:func:`eager_attention`), since SDPA's CPU kernel has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deltalens.errors import DeltalensError
from deltalens.kernel.gradients import trainable_parameters


JVP_MODES = ("dual", "linearize")


def check_jvp_mode(jvp: str) -> None:
    """``--jvp``: one of :data:`JVP_MODES` (one :class:`DeltalensError` line otherwise)."""
    if jvp not in JVP_MODES:
        raise DeltalensError(f"--jvp: expected one of {', '.join(JVP_MODES)}, got '{jvp}'")


def eager_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a Hugging Face model to eager attention (forward-mode AD has no SDPA rule on CPU); other modules pass."""
    if hasattr(model, "set_attn_implementation") and getattr(model, "config", None) is not None:
        if getattr(model.config, "_attn_implementation", None) != "eager":
            model.set_attn_implementation("eager")
    return model


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep`` (positions to project onto the vocabulary)."""
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def model_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """b × L × V logits of ``model(input_ids=...)`` (a Hugging Face output or a plain tensor)."""
    out = model(input_ids=input_ids)
    return out.logits if hasattr(out, "logits") else out


def completion_rows(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(M × 2 index of (probe, position) rows scored, their M target token ids): position t of
    probe i is a row when token t+1 is in probe i's completion (SPEC §9)."""
    ids = batch["input_ids"]
    mask = batch["completion_mask"][:, 1:] > 0
    rows = mask.nonzero()
    return rows, ids[:, 1:][mask]


def weight_factor(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(√p, α) such that B = diag(√p) − α p √pᵀ satisfies B Bᵀ = diag(p) − ppᵀ row by row.

    With s = √p and m = Σ p (1 over the full vocabulary, less over a top-V subset):
    B Bᵀ = D^{1/2}(I − α ssᵀ)² D^{1/2} and (I − α ssᵀ)² = I − ssᵀ for α = 1/(1 + √(1 − m)).
    Any factor of H_z gives the loss-weighted kernel Bᵀ K B the same nonzero eigenvalues, and
    the same parameter-space directions Jᵀ B u/√λ, as the symmetric square root (SPEC §9).
    """
    m = p.sum(-1, keepdim=True)
    alpha = 1.0 / (1.0 + (1.0 - m).clamp_min(0.0).sqrt())
    return p.sqrt(), alpha


@dataclass
class _Chunk:
    ids: torch.Tensor  # c × L input ids
    mask: torch.Tensor  # c × (L−1) bool, rows scored
    targets: torch.Tensor  # M_c target ids
    columns: torch.Tensor | None  # M_c × V chosen vocabulary columns, or None for all
    positions: torch.Tensor  # the positions t (of L − 1) that some probe of the chunk scores, ascending
    z: torch.Tensor | None = None  # M_c × V outputs with their graph (GN, kernels)
    p: torch.Tensor | None = None  # M_c × V softmax probabilities at those columns (detached)
    leaves: dict | None = None  # the block's leaf tensors z was built from
    grads: tuple[torch.Tensor, ...] | None = None  # ∇L_c with its graph (Hessian)
    hleaves: dict | None = None  # the block's leaf tensors ∇L_c was built from
    linear: object = None  # the chunk's linearized outputs t ↦ J t (None: not built; False: not traceable)


class CurvatureProducts:
    """H v, G v, K u and Jᵀ u for one model, one probe batch and one block of parameters (SPEC §9).

    ``batch``: ``{"input_ids", "completion_mask"}`` as :func:`deltalens.kernel.encode_probes`
    makes them (right-padded; no attention mask is needed under causal attention).
    ``names``: the block (default: every trainable parameter). ``vocab_index``: M × V columns
    of z per row (None: the full vocabulary). ``chunk_size``: probes per cached graph (all the
    caches are kept: memory is that of the whole batch's graphs; the chunks bound the transient
    JVP buffers). The caches are built on first use and kept; ``products`` counts calls.
    ``jvp``: how J v is computed (:meth:`_jvp`: ``"dual"`` or ``"linearize"``).
    """

    def __init__(self, model: torch.nn.Module, batch: dict, *, names: Sequence[str] | None = None,
                 vocab_index: torch.Tensor | None = None, chunk_size: int = 64, jvp: str = "dual"):
        check_jvp_mode(jvp)
        self.jvp_mode = jvp
        self.model = model
        everything = trainable_parameters(model)
        self.names = list(everything) if names is None else list(names)
        missing = [k for k in self.names if k not in everything]
        if missing:
            raise DeltalensError(f"block: {missing[0]} is not a trainable parameter of the model")
        if not self.names:
            raise DeltalensError("block: no parameters")
        self.params = {k: everything[k].detach() for k in self.names}
        self.constants = {k: v.detach() for k, v in everything.items() if k not in set(self.names)}
        self.shapes = [self.params[k].shape for k in self.names]
        self.numels = [self.params[k].numel() for k in self.names]
        self.dim = sum(self.numels)
        ref = self.params[self.names[0]]
        self.dtype, self.device = ref.dtype, ref.device
        ids = batch["input_ids"].to(self.device)
        mask = (batch["completion_mask"][:, 1:] > 0).to(self.device)
        self.n = int(ids.shape[0])
        if self.n < 1 or not bool(mask.any()):
            raise DeltalensError("probes: no completion tokens to score")
        self.chunks: list[_Chunk] = []
        offset = 0
        for start in range(0, self.n, max(1, chunk_size)):
            c_ids, c_mask = ids[start:start + chunk_size], mask[start:start + chunk_size]
            rows = int(c_mask.sum())
            cols = None if vocab_index is None else vocab_index[offset:offset + rows].to(self.device)
            self.chunks.append(_Chunk(c_ids, c_mask, c_ids[:, 1:][c_mask], cols, c_mask.any(0).nonzero()[:, 0]))
            offset += rows
        self.rows = offset
        if vocab_index is not None and vocab_index.shape[0] != offset:
            raise DeltalensError(f"vocab_index: {vocab_index.shape[0]} rows for {offset} scored positions")
        self.width = None if vocab_index is None else int(vocab_index.shape[1])
        self.products = {"hvp": 0, "ggn": 0, "kernel": 0, "jt": 0}
        self._keeps_logits = accepts_logits_to_keep(model)

    # ------------------------------------------------------------------ flat ↔ named
    def split(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat vector (P_block) → {name: tensor} in the model's dtype and device."""
        v = v.to(device=self.device, dtype=self.dtype)
        parts = torch.split(v, self.numels)
        return {k: part.reshape(shape) for k, part, shape in zip(self.names, parts, self.shapes)}

    def flat(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Tensors in block order → one flat float64 vector (a missing gradient is zero)."""
        return torch.cat([torch.zeros(n, dtype=torch.float64, device=self.device) if t is None else
                          t.reshape(-1).double() for t, n in zip(tensors, self.numels)])

    def flat_parameters(self) -> torch.Tensor:
        """θ of the block as one flat float64 vector."""
        return self.flat([self.params[k] for k in self.names])

    # ------------------------------------------------------------------ outputs
    def _logits(self, chunk: _Chunk, block: dict[str, torch.Tensor]) -> torch.Tensor:
        """M_c × V_full logits at the chunk's scored positions. Models that take ``logits_to_keep``
        (Hugging Face causal LMs) project only the positions some probe of the chunk scores onto
        the vocabulary, not all b × L (the output head is ~20% of SmolLM2's forward, and its
        logits the largest tensor of the cached graph); the rows are the same either way."""
        from torch.func import functional_call

        kwargs = {"input_ids": chunk.ids}
        if self._keeps_logits:
            kwargs["logits_to_keep"] = chunk.positions
        out = functional_call(self.model, {**self.constants, **block}, (), kwargs, strict=False)
        logits = out.logits if hasattr(out, "logits") else out
        if self._keeps_logits:
            return logits[chunk.mask[:, chunk.positions]]
        return logits[:, :-1][chunk.mask]  # M_c × V_full

    def _select(self, chunk: _Chunk, z: torch.Tensor) -> torch.Tensor:
        return z if chunk.columns is None else z.gather(-1, chunk.columns)

    def _leaves(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().requires_grad_(True) for k, v in self.params.items()}

    def _output_graphs(self) -> None:
        if self.chunks[0].z is not None:
            return
        for chunk in self.chunks:
            leaves = self._leaves()
            with torch.enable_grad():
                full = self._logits(chunk, leaves)
                chunk.z = self._select(chunk, full)
            chunk.leaves = leaves
            probs = torch.softmax(full.detach().double(), dim=-1)
            chunk.p = self._select(chunk, probs)

    def _hessian_graphs(self) -> None:
        if self.chunks[0].grads is not None:
            return
        for chunk in self.chunks:
            leaves = self._leaves()
            with torch.enable_grad():
                z = self._logits(chunk, leaves)
                loss = torch.nn.functional.cross_entropy(z, chunk.targets, reduction="sum") / self.n
                chunk.grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
            chunk.hleaves = leaves

    def loss(self) -> float:
        """L(θ) = (1/n) Σ_i Σ_t CE(z_it, y_it) (float64 sum of the chunks)."""
        with torch.no_grad():
            return sum(float(torch.nn.functional.cross_entropy(self._logits(c, self.params).double(), c.targets,
                                                               reduction="sum")) for c in self.chunks) / self.n

    def output_residuals(self) -> dict:
        """Size of the residuals r = p − e_y that the term H − G is linear in (SPEC §9): zero at an
        interpolating minimum. Mean over scored positions of ‖p − e_y‖₂ and of p(y)."""
        norms, target_p = [], []
        with torch.no_grad():
            for c in self.chunks:
                p = torch.softmax(self._logits(c, self.params).double(), dim=-1)
                py = p.gather(-1, c.targets[:, None])[:, 0]
                norms.append((p.square().sum(-1) - 2 * py + 1).clamp_min(0).sqrt())
                target_p.append(py)
        norms, target_p = torch.cat(norms), torch.cat(target_p)
        return {"mean_norm": float(norms.mean()), "max_norm": float(norms.max()),
                "mean_target_probability": float(target_p.mean()), "positions": int(norms.numel())}

    # ------------------------------------------------------------------ products
    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H_BB v (flat float64 in, flat float64 out): cached double backward."""
        self._hessian_graphs()
        parts = list(self.split(v).values())
        total = None
        for chunk in self.chunks:
            hv = torch.autograd.grad(chunk.grads, list(chunk.hleaves.values()), grad_outputs=parts,
                                     retain_graph=True, allow_unused=True)
            flat = self.flat(hv)
            total = flat if total is None else total + flat
        self.products["hvp"] += 1
        return total

    def _jvp(self, chunk: _Chunk, tangent: dict[str, torch.Tensor]) -> torch.Tensor:
        """J v by forward mode: dual tensors (default), or with ``jvp="linearize"`` the chunk's
        outputs linearized once (``torch.func.linearize``: the forward traced with the primal values
        it needs kept, so each JVP runs only the tangent half). Measured: on the lab model 29 ms
        against 61 ms per JVP after a 3 s trace; on SmolLM2 with 32 probes 4.2 s against 7.6 s, but
        a 29 s trace and 21.8 GB resident against 4.5 GB, hence opt-in. A model that cannot be
        traced falls back to dual tensors."""
        if self.jvp_mode == "linearize" and chunk.linear is None:
            chunk.linear = self._linearize(chunk)
        if chunk.linear:
            return chunk.linear(tangent).double()
        return self._dual_jvp(chunk, tangent)

    def _linearize(self, chunk: _Chunk):
        from torch.func import linearize

        import warnings

        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")  # torch.fx const folding
                _, jvp_fn = linearize(lambda block: self._select(chunk, self._logits(chunk, block)), dict(self.params))
        except Exception:  # noqa: BLE001 - tracing is an optimisation; dual tensors compute the same J v
            return False
        return jvp_fn

    def _dual_jvp(self, chunk: _Chunk, tangent: dict[str, torch.Tensor]) -> torch.Tensor:
        """J v with dual tensors (``torch.autograd.forward_ad``; ~9% faster than ``torch.func.jvp``)."""
        import torch.autograd.forward_ad as fwad

        with fwad.dual_level():
            duals = {k: fwad.make_dual(self.params[k], tangent[k]) for k in self.names}
            out = fwad.unpack_dual(self._select(chunk, self._logits(chunk, duals))).tangent
        return out.double()

    def _vjp(self, chunk: _Chunk, w: torch.Tensor) -> torch.Tensor:
        g = torch.autograd.grad(chunk.z, list(chunk.leaves.values()), grad_outputs=w.to(chunk.z.dtype),
                                retain_graph=True, allow_unused=True)
        return self.flat(g)

    def ggn_vp(self, v: torch.Tensor) -> torch.Tensor:
        """G_BB v = (1/n) Jᵀ H_z J v: one JVP, H_z w = p⊙w − p (pᵀw) per row, one cached VJP."""
        self._output_graphs()
        tangent = self.split(v)
        total = None
        for chunk in self.chunks:
            jv = self._jvp(chunk, tangent)
            w = chunk.p * jv - chunk.p * (chunk.p * jv).sum(-1, keepdim=True)
            part = self._vjp(chunk, w / self.n)
            total = part if total is None else total + part
        self.products["ggn"] += 1
        return total

    @property
    def outputs(self) -> int:
        """N = M × V: the logit kernel's size (rows scored × columns per row)."""
        self._output_graphs()
        return self.rows * int(self.chunks[0].z.shape[-1])

    def _rows(self, u: torch.Tensor) -> list[torch.Tensor]:
        self._output_graphs()
        width = self.chunks[0].z.shape[-1]
        u = u.to(device=self.device, dtype=torch.float64).reshape(self.rows, width)
        return list(torch.split(u, [int(c.z.shape[0]) for c in self.chunks]))

    def _b(self, chunk: _Chunk, u: torch.Tensor) -> torch.Tensor:
        s, alpha = weight_factor(chunk.p)
        return s * u - alpha * chunk.p * (s * u).sum(-1, keepdim=True)

    def _bt(self, chunk: _Chunk, w: torch.Tensor) -> torch.Tensor:
        s, alpha = weight_factor(chunk.p)
        return s * w - alpha * s * (chunk.p * w).sum(-1, keepdim=True)

    def jt_parts(self, u: torch.Tensor, weighted: bool) -> list[torch.Tensor]:
        """Jᵀ u (or Jᵀ B u) as the block's tensors in the model's dtype, summed over the chunks."""
        total = None
        for chunk, part in zip(self.chunks, self._rows(u)):
            w = self._b(chunk, part) if weighted else part
            g = torch.autograd.grad(chunk.z, list(chunk.leaves.values()), grad_outputs=w.to(chunk.z.dtype),
                                    retain_graph=True, allow_unused=True)
            g = [torch.zeros_like(p) if t is None else t for t, p in zip(g, chunk.leaves.values())]
            total = g if total is None else [a + b for a, b in zip(total, g)]
        return total

    def jt(self, u: torch.Tensor, *, weighted: bool) -> torch.Tensor:
        """Jᵀ u, or Jᵀ B u when ``weighted`` (u flat over the N = M × V outputs, row-major)."""
        self.products["jt"] += 1
        return self.flat(self.jt_parts(u, weighted))

    def kernel_vp(self, u: torch.Tensor, *, weighted: bool) -> torch.Tensor:
        """K u = J Jᵀ u (the logit eNTK), or Bᵀ J Jᵀ B u when ``weighted`` (its loss-weighted form).
        The parameter-space vector between the two halves stays in the model's dtype (no float64
        copy of the parameters: 1 GB saved per product on SmolLM2)."""
        out = self.outputs_along(self.jt_parts(u, weighted), weighted=weighted)
        self.products["kernel"] += 1
        return out

    def outputs_along(self, tangent: Sequence[torch.Tensor], *, weighted: bool) -> torch.Tensor:
        """J t (or Bᵀ J t when ``weighted``) for a parameter-space tangent given as the block's
        tensors: one JVP, flat float64 over the N outputs."""
        tangent = dict(zip(self.names, tangent))
        out = []
        for chunk in self.chunks:
            jv = self._jvp(chunk, tangent)
            out.append((self._bt(chunk, jv) if weighted else jv).reshape(-1))
        return torch.cat(out)

    def release(self) -> None:
        """Drop the cached graphs (memory)."""
        for chunk in self.chunks:
            chunk.z = chunk.p = chunk.grads = chunk.leaves = chunk.hleaves = chunk.linear = None


def logprob_jt(products: CurvatureProducts, u: torch.Tensor) -> torch.Tensor:
    """J_fᵀ u for the scalar log-prob outputs f_i = Σ_t log p(y_it) (SPEC §6's default kernel
    output): the gradient of Σ_i u_i f_i over the block, one backward (u has n entries)."""
    u = u.to(device=products.device, dtype=torch.float64)
    total, start = None, 0
    for chunk in products.chunks:
        leaves = products._leaves()
        c = chunk.ids.shape[0]
        with torch.enable_grad():
            logp = torch.log_softmax(products._logits(chunk, leaves), dim=-1).gather(-1, chunk.targets[:, None])[:, 0]
            probe = chunk.mask.nonzero()[:, 0]
            weight = u[start:start + c][probe].to(logp.dtype)
            g = torch.autograd.grad((logp * weight).sum(), list(leaves.values()), allow_unused=True)
        part = products.flat(g)
        total = part if total is None else total + part
        start += c
    products.products["jt"] += 1
    return total


@torch.no_grad()
def top_vocabulary(model: torch.nn.Module, batch: dict, width: int, *, chunk_size: int = 64) -> torch.Tensor:
    """M × V indices of the V largest logits of ``model`` at each scored position (``--vocab V``),
    rows in :func:`completion_rows` order."""
    ids = batch["input_ids"]
    mask = batch["completion_mask"][:, 1:] > 0
    out = []
    for start in range(0, ids.shape[0], chunk_size):
        logits = model_logits(model, ids[start:start + chunk_size].to(next(model.parameters()).device))
        if width > logits.shape[-1]:
            raise DeltalensError(f"--vocab {width}: the model's vocabulary has only {logits.shape[-1]} entries")
        rows = logits[:, :-1][mask[start:start + chunk_size].to(logits.device)]
        out.append(torch.topk(rows, width, dim=-1).indices)
    return torch.cat(out)
