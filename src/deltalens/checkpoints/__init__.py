"""Checkpoint readers (SPEC §1): safetensors folders/files, shards, PEFT LoRA adapters, hub ids,
pickle behind a flag; pairing by name; streaming one tensor at a time."""

from deltalens.checkpoints.names import MODULE_KINDS, canonical_name, layer_index, module_kind
from deltalens.checkpoints.pairing import Pairing, TensorPair, open_pair, pair_sources
from deltalens.checkpoints.sources import TensorInfo, TensorSource, open_checkpoint

__all__ = [
    "MODULE_KINDS", "Pairing", "TensorInfo", "TensorPair", "TensorSource", "canonical_name",
    "layer_index", "module_kind", "open_checkpoint", "open_pair", "pair_sources",
]
