"""Curvature products on a Hugging Face Llama (eager attention), against explicit float64 matrices.

HF Llama computes RMSNorm and the eager softmax in float32 even for a float64 model (H is then
asymmetric by ~5e-7), so these tests patch both to keep the input dtype: the tolerance then
tests the products, not transformers' casts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltalens.curvature import CurvatureProducts, curvature_block, eager_attention
from deltalens.kernel import encode_probes

from .reference import Explicit, top_by_magnitude


def _rms_norm_float64(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _eager_attention_float64(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    from transformers.models.llama.modeling_llama import repeat_kv

    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.softmax(weights, dim=-1)
    return torch.matmul(weights, value_states).transpose(1, 2).contiguous(), weights


@pytest.fixture()
def llama64(monkeypatch, char_tokenizer):
    from transformers.models.llama import modeling_llama

    from deltalens.lab.tiny_model import TinyConfig, build_tiny_llama

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", _rms_norm_float64)
    monkeypatch.setattr(modeling_llama, "eager_attention_forward", _eager_attention_float64)
    cfg = TinyConfig(hidden_size=4, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=True)  # tied, as SmolLM2
    model = eager_attention(build_tiny_llama(cfg, tokenizer=char_tokenizer, seed=0).double())
    probes = [{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(3, 8)]
    batch = encode_probes(char_tokenizer, probes)
    return model, batch


def test_llama_products_and_spectra_match_explicit_float64(llama64):
    model, batch = llama64
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params <= 5000 and model.lm_head.weight is model.model.embed_tokens.weight
    ref = Explicit(model, batch)
    assert float((ref.hessian - ref.hessian.T).abs().max()) < 1e-12  # the patches make H symmetric
    products = CurvatureProducts(model, batch)
    v = torch.randn(products.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(products.hvp(v), ref.hessian @ v, rtol=0, atol=1e-11)
    np.testing.assert_allclose(products.ggn_vp(v), ref.gauss_newton @ v, rtol=0, atol=1e-12)
    block, _ = curvature_block(model, batch, top=4, tol=1e-10)
    for kind, matrix in (("hessian", ref.hessian), ("gauss_newton", ref.gauss_newton)):
        values, vectors = top_by_magnitude(matrix, 4)
        np.testing.assert_allclose(block.spectra[kind].values, values, rtol=1e-6)
        from deltalens.linalg import principal_angles

        assert float(torch.rad2deg(principal_angles(block.spectra[kind].vectors, vectors)).max()) < 0.01


def test_llama_linearized_jvp_and_function_space_gauss_newton(llama64):
    """The opt-in linearized J v and the large-model route (G by Lanczos on the loss-weighted kernel)
    through a Hugging Face Llama (logits at the scored positions only), against explicit float64 G."""
    from deltalens.curvature.run import FUNCTION_SPACE
    from deltalens.linalg import principal_angles

    model, batch = llama64
    ref = Explicit(model, batch)
    products = CurvatureProducts(model, batch, jvp="linearize")
    v = torch.randn(products.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(products.ggn_vp(v), ref.gauss_newton @ v, rtol=0, atol=1e-12)
    assert products.chunks[0].linear  # traced, not the dual-tensor fallback
    block, _ = curvature_block(model, batch, top=4, tol=1e-10, operators=("gauss_newton",), route=FUNCTION_SPACE,
                               jvp="linearize")
    values, vectors = top_by_magnitude(ref.gauss_newton, 4)
    got = block.spectra["gauss_newton"]
    np.testing.assert_allclose(got.values, values, rtol=1e-6)
    assert float(torch.rad2deg(principal_angles(got.vectors, vectors)).max()) < 0.01
    np.testing.assert_allclose(got.residuals, torch.linalg.vector_norm(ref.gauss_newton @ got.vectors
                                                                       - got.vectors * got.values, dim=0), atol=1e-11)
