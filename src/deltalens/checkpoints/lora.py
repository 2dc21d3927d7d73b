"""A PEFT LoRA adapter as the tuned side (SPEC §1): W1 = W0 + scale·B·A.

scale = lora_alpha / r, or lora_alpha / √r with ``use_rslora``; per-module ``alpha_pattern``
entries override lora_alpha, and r is read from each A matrix (so ``rank_pattern`` is honoured).
Embedding adapters (``lora_embedding_A``/``_B``) give Δ = scale·(B·A)ᵀ; ``fan_in_fan_out``
(GPT-2 Conv1D) transposes Δ. Full tensors saved in the adapter (``modules_to_save``, saved
embedding layers) replace the base tensor. The merged weight is kept in float32 (its stored
dtype is reported as float32), so an update too small to survive a bf16 save is still seen.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from deltalens.checkpoints.names import canonical_name
from deltalens.checkpoints.sources import TensorInfo, TensorSource, _safe_open
from deltalens.errors import DeltalensError

ADAPTER_CONFIG = "adapter_config.json"
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?(?:\.weight)?$")


def is_lora_adapter(path) -> bool:
    """True when ``path`` is a folder with a PEFT ``adapter_config.json``."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def lora_scale(alpha: float, r: int, use_rslora: bool) -> float:
    """LoRA scale: alpha/r, or alpha/√r for rank-stabilised LoRA (SPEC §1)."""
    return float(alpha) / (math.sqrt(r) if use_rslora else r)


def _pattern_value(pattern: dict, module: str, default):
    for key, value in pattern.items():
        if re.match(rf"(^|.*\.){key}$", module):
            return value
    return default


class LoraAdapterSource(TensorSource):
    """The tuned side given by a base source plus a LoRA adapter, merged one tensor at a time."""

    def __init__(self, folder: Path, base: TensorSource, label: str):
        super().__init__(label=label, kind="lora-adapter", config=base.config)
        cfg_path = folder / ADAPTER_CONFIG
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise DeltalensError(f"{cfg_path}: not valid JSON ({exc.msg})") from None
        if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
            raise DeltalensError(f"{cfg_path}: peft_type is {cfg.get('peft_type')!r}; only LORA adapters are supported")
        if cfg.get("use_dora"):
            raise DeltalensError(f"{cfg_path}: DoRA adapters (use_dora) rescale W0 column norms and are not supported")
        for field in ("r", "lora_alpha"):
            if not isinstance(cfg.get(field), (int, float)):
                raise DeltalensError(f"{cfg_path}: expected a number in field '{field}'")
        weights = folder / "adapter_model.safetensors"
        if not weights.is_file():
            if (folder / "adapter_model.bin").is_file():
                raise DeltalensError(f"{folder / 'adapter_model.bin'}: pickle adapters are not read; save it with safetensors")
            raise DeltalensError(f"{folder}: adapter_config.json without adapter_model.safetensors")
        self.adapter_config = cfg
        self._files = [cfg_path, weights]
        self._base = base
        handle = _safe_open(weights)
        self._handle = handle
        parts: dict[str, dict[str, str]] = {}
        self._replacements: dict[str, str] = {}  # base key → stored adapter name
        for stored in handle.keys():
            match = _LORA_KEY.match(stored)
            if match:
                parts.setdefault(match["module"], {})[match["part"]] = stored
            else:
                key = canonical_name(stored.replace(".base_layer.", ".").replace(".modules_to_save.default.", "."))
                self._replacements[key] = stored
        use_rslora = bool(cfg.get("use_rslora", False))
        fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
        self._lora: dict[str, tuple[str, str, float, bool]] = {}  # key → (A name, B name, scale, transpose)
        for module, p in sorted(parts.items()):
            key = canonical_name(module) + ".weight"
            embedding = "lora_embedding_A" in p or "lora_embedding_B" in p
            a_name = p.get("lora_embedding_A" if embedding else "lora_A")
            b_name = p.get("lora_embedding_B" if embedding else "lora_B")
            if a_name is None or b_name is None:
                raise DeltalensError(f"{weights}: module '{module}' has only one of lora_A/lora_B")
            if key not in base.infos:
                raise DeltalensError(f"{weights}: adapter targets '{module}.weight', which is absent from base {base.label}")
            a_shape = tuple(handle.get_slice(a_name).get_shape())
            b_shape = tuple(handle.get_slice(b_name).get_shape())
            r = a_shape[0]
            alpha = _pattern_value(cfg.get("alpha_pattern") or {}, canonical_name(module), cfg["lora_alpha"])
            transpose = embedding or fan_in_fan_out
            delta_shape = (a_shape[1], b_shape[0]) if transpose else (b_shape[0], a_shape[1])
            if len(a_shape) != 2 or len(b_shape) != 2 or b_shape[1] != r or base.infos[key].shape != delta_shape:
                raise DeltalensError(
                    f"{weights}: '{module}' gives B·A of shape {delta_shape}, base tensor has {base.infos[key].shape}"
                )
            self._lora[key] = (a_name, b_name, lora_scale(alpha, r, use_rslora), transpose)
        for key, stored in self._replacements.items():
            if key not in base.infos:
                raise DeltalensError(f"{weights}: adapter saves tensor '{stored}', which is absent from base {base.label}")
            shape = tuple(handle.get_slice(stored).get_shape())
            if shape != base.infos[key].shape:
                raise DeltalensError(f"{weights}: '{stored}' has shape {shape}, base tensor has {base.infos[key].shape}")
        if not self._lora and not self._replacements:
            raise DeltalensError(f"{weights}: no LoRA tensors found")
        for key, info in base.infos.items():
            dtype = "float32" if key in self._lora else info.dtype
            if key in self._replacements:
                dtype = _dtype_of(handle, self._replacements[key])
            self.infos[key] = TensorInfo(info.name, info.shape, dtype)

    @property
    def scales(self) -> dict[str, float]:
        """The LoRA scale applied to each targeted base tensor (canonical name → scale)."""
        return {key: v[2] for key, v in self._lora.items()}

    def get(self, key: str):
        import torch

        if key in self._replacements:
            return self._handle.get_tensor(self._replacements[key])
        w0 = self._base.get(key)
        if key not in self._lora:
            return w0
        a_name, b_name, scale, transpose = self._lora[key]
        a = self._handle.get_tensor(a_name).to(torch.float32)
        b = self._handle.get_tensor(b_name).to(torch.float32)
        delta = b @ a
        if transpose:
            delta = delta.T
        return w0.to(torch.float32) + scale * delta

    def content_files(self) -> list[Path]:
        return self._base.content_files() + self._files

    def fingerprint(self) -> list:
        return self._base.fingerprint() + [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in self._files]


def _dtype_of(handle, stored: str) -> str:
    from deltalens.checkpoints.sources import _ST_DTYPES

    raw = handle.get_slice(stored).get_dtype()
    return _ST_DTYPES.get(raw, raw.lower())


def open_lora(folder, base: TensorSource) -> LoraAdapterSource:
    """Open a PEFT LoRA adapter folder as the tuned side over ``base`` (SPEC §1)."""
    return LoraAdapterSource(Path(folder), base, str(folder))
