"""Tensor names: wrapper prefixes, module kinds and layer indices (SPEC §1 pairing, §2 aggregates)."""

from __future__ import annotations

import re

# Wrapper prefixes removed before pairing, outermost first: PEFT, torch.compile, DDP, HF's
# ``model.`` inside ``*ForCausalLM``. Each is stripped at most once, in this order.
WRAPPER_PREFIXES = ("base_model.model.", "_orig_mod.", "module.", "model.")

MODULE_KINDS = ("q", "k", "v", "o", "gate", "up", "down", "embed", "norm", "lm_head", "other")

# (pattern on the dotted name, kind); first match wins. Llama/Qwen/Mistral names plus the
# common GPT-2/NeoX/Falcon spellings.
_KIND_PATTERNS = (
    (r"(^|\.)(q_proj|query)(\.|$)", "q"),
    (r"(^|\.)(k_proj|key)(\.|$)", "k"),
    (r"(^|\.)(v_proj|value)(\.|$)", "v"),
    (r"(^|\.)(o_proj|out_proj|dense|c_proj)(\.|$)", "o"),
    (r"(^|\.)(gate_proj|w1)(\.|$)", "gate"),
    (r"(^|\.)(up_proj|w3|c_fc|dense_h_to_4h)(\.|$)", "up"),
    (r"(^|\.)(down_proj|w2|dense_4h_to_h)(\.|$)", "down"),
    (r"(^|\.)(embed_tokens|wte|word_embeddings|embed_in|tok_embeddings)(\.|$)", "embed"),
    (r"(^|\.)(lm_head|embed_out|output)(\.|$)", "lm_head"),
    (r"(norm|ln_\w+|layernorm)(\.|$)", "norm"),
)
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def canonical_name(name: str) -> str:
    """The name used for pairing: ``name`` without its wrapper prefixes (SPEC §1)."""
    for prefix in WRAPPER_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def module_kind(name: str) -> str:
    """Module kind of a tensor name: one of :data:`MODULE_KINDS` (SPEC §2 aggregates)."""
    base = canonical_name(name)
    if base.endswith("mlp.c_proj.weight") or base.endswith("mlp.c_proj.bias"):
        return "down"  # GPT-2: c_proj under mlp is the down projection
    for pattern, kind in _KIND_PATTERNS:
        if re.search(pattern, base):
            return kind
    return "other"


def layer_index(name: str) -> int | None:
    """Transformer block index in ``name`` (``layers.N.``), or None for non-layer tensors."""
    match = _LAYER.search(canonical_name(name))
    return int(match.group(1)) if match else None
