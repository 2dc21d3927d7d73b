"""Pairing base and tuned tensors by name (SPEC §1).

Names are compared after removing wrapper prefixes. Tied weights (``lm_head`` sharing
``embed_tokens``) are analysed once. Non-float tensors are listed as skipped. A tensor whose
shapes differ only in the first (vocabulary) dimension of an embedding or output head is a
vocabulary resize: the overlapping rows are compared. Any other shape mismatch is an error.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from deltalens.checkpoints.names import layer_index, module_kind
from deltalens.checkpoints.sources import TensorSource, open_checkpoint
from deltalens.errors import DeltalensError

_TIED_HEAD = "lm_head.weight"
_TIED_EMBED = "embed_tokens.weight"


@dataclass(frozen=True)
class TensorPair:
    """One base/tuned tensor pair to compare; ``rows`` limits a vocabulary resize."""

    key: str  # canonical name
    name: str  # base's stored name (what outputs show)
    shape: tuple[int, ...]  # the compared shape (overlap for a resize)
    dtype0: str
    dtype1: str
    rows: int | None = None  # compare only the first ``rows`` rows (vocabulary resize)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def module(self) -> str:
        return module_kind(self.name)

    @property
    def layer(self) -> int | None:
        return layer_index(self.name)


@dataclass
class Pairing:
    pairs: list[TensorPair] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    unmatched: dict[str, list[str]] = field(default_factory=lambda: {"base_only": [], "tuned_only": []})
    resized: list[dict] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)


def _config_ties(source: TensorSource) -> bool | None:
    cfg = source.config or {}
    if "tie_word_embeddings" in cfg:
        return bool(cfg["tie_word_embeddings"])
    text = cfg.get("text_config")
    if isinstance(text, dict) and "tie_word_embeddings" in text:
        return bool(text["tie_word_embeddings"])
    return None


def drop_tied_head(source: TensorSource) -> None:
    """Remove ``lm_head.weight`` from ``source`` when it is the tied embedding (SPEC §1: once).

    Tied means config.json says ``tie_word_embeddings``, or (no config) both tensors are stored
    with identical bits.
    """
    import torch

    if _TIED_HEAD not in source.infos or _TIED_EMBED not in source.infos:
        return
    head, embed = source.infos[_TIED_HEAD], source.infos[_TIED_EMBED]
    ties = _config_ties(source)
    if ties is None and head.shape == embed.shape and head.dtype == embed.dtype:
        a, b = source.get(_TIED_HEAD), source.get(_TIED_EMBED)
        ties = a.data_ptr() == b.data_ptr() or bool(torch.equal(_bits(a), _bits(b)))
    if ties and head.shape == embed.shape:
        del source.infos[_TIED_HEAD]
        source.tied_dropped.append(head.name)


def _bits(t):
    import torch

    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(width)


def pair_sources(base: TensorSource, tuned: TensorSource) -> Pairing:
    """Pair tensors of two opened sources by canonical name (SPEC §1)."""
    for src in (base, tuned):
        drop_tied_head(src)
    out = Pairing(tied=base.tied_dropped + [n for n in tuned.tied_dropped if n not in base.tied_dropped])
    mismatches = []
    for key, i0 in base.infos.items():
        i1 = tuned.infos.get(key)
        if i1 is None:
            out.unmatched["base_only"].append(i0.name)
            continue
        if not (i0.is_float and i1.is_float):
            out.skipped.append({"name": i0.name, "dtype": i0.dtype if not i0.is_float else i1.dtype,
                                "reason": "not a floating-point tensor"})
            continue
        rows = None
        shape = i0.shape
        if i0.shape != i1.shape:
            resize = (len(i0.shape) == len(i1.shape) >= 1 and i0.shape[1:] == i1.shape[1:]
                      and module_kind(i0.name) in ("embed", "lm_head"))
            if not resize:
                mismatches.append(f"'{i0.name}' base {list(i0.shape)} vs tuned {list(i1.shape)}")
                continue
            rows = min(i0.shape[0], i1.shape[0])
            shape = (rows,) + i0.shape[1:]
            out.resized.append({"name": i0.name, "base_shape": list(i0.shape), "tuned_shape": list(i1.shape),
                                "compared_rows": rows})
        out.pairs.append(TensorPair(key, i0.name, shape, i0.dtype, i1.dtype, rows))
    if mismatches:
        more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        raise DeltalensError(
            f"shape mismatch {mismatches[0]}{more}; only a vocabulary resize of embeddings/lm_head is compared"
        )
    out.unmatched["tuned_only"] = [i.name for k, i in tuned.infos.items() if k not in base.infos]
    return out


def open_pair(base: str | os.PathLike, tuned: str | os.PathLike, *, allow_pickle: bool = False
              ) -> tuple[TensorSource, TensorSource]:
    """Open BASE and TUNED (TUNED may be a PEFT LoRA adapter folder) per SPEC §1."""
    from deltalens.checkpoints.lora import is_lora_adapter, open_lora

    b = open_checkpoint(base, allow_pickle=allow_pickle, role="base")
    if is_lora_adapter(tuned):
        return b, open_lora(tuned, b)
    return b, open_checkpoint(tuned, allow_pickle=allow_pickle, role="tuned")
