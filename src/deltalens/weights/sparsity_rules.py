"""The SPEC §2 rules, one function each, and the bit view they read (see
:mod:`deltalens.weights.sparsity`). Elementwise and written with operators only, so the same
function runs on torch tensors, numpy arrays and, compiled by numba, on scalars
(:mod:`deltalens.weights.sparsity_kernel`); this module imports neither of those, so both can
import it.
"""

from __future__ import annotations

import math

import torch

INF = math.inf
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# --- SPEC §2 rules: elementwise, operators only (torch, numpy and numba-compiled scalars alike) ---

def bitwise_unchanged(bits0, bits1):
    """SPEC §2 ``bitwise``: True where the stored bits (same-width integer views) are identical."""
    return bits0 == bits1


def update_abs(w0, w1):
    """|w1 − w0|, the update magnitude the relative and absolute rules compare (float64 values)."""
    return abs(w1 - w0)


def relative_unchanged(same, d, w0, w1, eta):
    """SPEC §2 ``relative`` (Path Not Taken): |w1 − w0| ≤ η·max(|w0|, |w1|), with ``d`` = |w1 − w0|
    and ``same`` the bitwise rule. max is spelled as an or (rounding is monotone, so
    fl(η·max(a, b)) = max(fl(η·a), fl(η·b))); ``d < INF`` keeps a NaN/Inf pair changed unless
    bit-identical (Inf − finite would otherwise pass as Inf ≤ η·Inf)."""
    return same | ((d < INF) & ((d <= eta * abs(w0)) | (d <= eta * abs(w1))))


def absolute_unchanged(same, d, tol):
    """SPEC §2 ``absolute`` (Mukherjee et al., tol = 1e-5 by default): |w1 − w0| ≤ tol, with
    ``d`` = |w1 − w0| and ``same`` the bitwise rule (a NaN/Inf pair is unchanged only bit-identical)."""
    return same | ((d < INF) & (d <= tol))


def bf16_visibility(d, half):
    """SPEC §2 precision visibility (ours), as (visible, vanishing): |Δ| ≥ half a bf16 ULP of w0
    (``half``, from :func:`bf16_half_ulp`) survives a bf16 save; 0 < |Δ| < half rounds back to w0.
    A non-finite Δ is neither."""
    return (d >= half) & (d < INF), (d > 0) & (d < half)



def bits_view(t: torch.Tensor) -> torch.Tensor:
    """The tensor's stored bits as a same-width integer tensor (no copy)."""
    return t.view(_INT_VIEW[t.element_size()])
