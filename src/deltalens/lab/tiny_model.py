"""Tiny Llama-style causal language models built from a transformers config, offline.

Llama naming (``q_proj``, ``gate_proj``, ``embed_tokens``, ...) matches the real checkpoints
users diff, so module-kind aggregation is exercised on the same names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TinyConfig:
    """Shape of a tiny Llama; the defaults give ~0.2M parameters."""

    vocab_size: int = 104
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 128
    tie_word_embeddings: bool = False


def build_tiny_llama(cfg: TinyConfig | None = None, *, seed: int = 0, tokenizer=None):
    """Return a randomly initialised ``LlamaForCausalLM`` (float32, eval mode).

    With a ``tokenizer`` the vocabulary size and special-token ids are taken from it.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = cfg or TinyConfig()
    kwargs = asdict(cfg)
    if tokenizer is not None:
        kwargs["vocab_size"] = len(tokenizer)
        kwargs.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    config = LlamaConfig(**kwargs)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    return model
