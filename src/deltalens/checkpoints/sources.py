"""Checkpoint sources (SPEC §1): HF folders (single file or shards), single ``.safetensors``
files, pickle files behind an explicit flag, hub ids. Tensors are read one at a time through
``safetensors.safe_open`` (memory-mapped: a tensor's pages live in the page cache, not in
the process's anonymous memory).

Every source maps *canonical* names (wrapper prefixes removed, :func:`canonical_name`) to
stored tensors. All files are opened and their headers checked when the source is opened, so
a truncated shard, a corrupted header or a missing shard fails before any output is written.
"""

from __future__ import annotations

import math
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from deltalens.checkpoints.names import canonical_name
from deltalens.errors import DeltalensError

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
PICKLE_INDEX = "pytorch_model.bin.index.json"

_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
}
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")


@dataclass(frozen=True)
class TensorInfo:
    """What a source says about one tensor without reading it."""

    name: str  # the name as stored
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without ``torch.``: "bfloat16", "float32", "int64", ...

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass
class TensorSource(ABC):
    """A checkpoint: canonical name → stored tensor, read lazily one tensor at a time."""

    label: str
    kind: str  # "hf-folder", "safetensors-file", "pickle", "lora-adapter"
    infos: dict[str, TensorInfo] = field(default_factory=dict)  # canonical name → info
    config: dict = field(default_factory=dict)  # config.json when present
    tied_dropped: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return list(self.infos)

    def info(self, key: str) -> TensorInfo:
        return self.infos[key]

    @abstractmethod
    def get(self, key: str):
        """The stored tensor (original dtype, possibly memory-mapped)."""

    def fingerprint(self) -> list:
        """Cheap identity of the files behind this source (paths, sizes, mtimes) for resume."""
        return []

    def content_files(self) -> list[Path]:
        """The files whose bytes determine this source's tensors (for a content fingerprint,
        :mod:`deltalens.fingerprint`); empty when there are none (e.g. an in-memory source)."""
        return list(getattr(self, "_files", []))

    def byte_range(self, key: str) -> tuple[Path, int, int] | None:
        """(file, offset, length) of the tensor's stored bytes, where it sits in a file as is
        (for read-ahead); None otherwise."""
        return None


def _data_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """Stored name → (offset, length) of its bytes in a safetensors file, from the header that
    ``safe_open`` has already validated (8-byte little-endian length, JSON, then the data)."""
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    out = {}
    for name, meta in header.items():
        if name != "__metadata__":
            begin, end = meta["data_offsets"]
            out[name] = (8 + size + begin, end - begin)
    return out


def _safe_open(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt")
    except Exception as exc:  # SafetensorError, OSError
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DeltalensError(f"{path}: not a readable safetensors file ({msg})") from None


class SafetensorsSource(TensorSource):
    """One or several safetensors files read through ``safe_open``."""

    def __init__(self, label: str, kind: str, files: list[Path], config: dict | None = None,
                 expected: dict[str, str] | None = None):
        super().__init__(label=label, kind=kind, config=config or {})
        self._files = files
        self._handles: dict[str, tuple[object, str]] = {}  # canonical name → (open handle, stored name)
        self._ranges: dict[str, tuple[Path, int, int]] = {}  # canonical name → (file, offset, length)
        for path in files:
            handle = _safe_open(path)
            ranges = _data_ranges(path)
            for stored in handle.keys():
                sl = handle.get_slice(stored)
                dtype = _ST_DTYPES.get(sl.get_dtype(), sl.get_dtype().lower())
                key = canonical_name(stored)
                if key in self.infos:  # a collision after stripping: keep the stored name
                    key = stored
                self.infos[key] = TensorInfo(stored, tuple(sl.get_shape()), dtype)
                self._handles[key] = (handle, stored)
                if stored in ranges:
                    self._ranges[key] = (path, *ranges[stored])
        if expected:
            stored_names = {i.name for i in self.infos.values()}
            for name, shard in expected.items():
                if name not in stored_names:
                    raise DeltalensError(f"{label}: index names tensor '{name}' in {shard}, but that shard does not hold it")

    def get(self, key: str):
        handle, stored = self._handles[key]
        return handle.get_tensor(stored)

    def byte_range(self, key: str) -> tuple[Path, int, int] | None:
        return self._ranges.get(key)

    def fingerprint(self) -> list:
        out = []
        for p in self._files:
            st = p.stat()
            out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        return out


class PickleSource(TensorSource):
    """``.bin``/``.pt`` state dicts, loaded with ``torch.load(weights_only=True)`` only."""

    def __init__(self, label: str, files: list[Path], config: dict | None = None):
        import torch

        super().__init__(label=label, kind="pickle", config=config or {})
        self._files = files
        self._tensors = {}
        for path in files:
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:
                raise DeltalensError(f"{path}: cannot load as a weights-only pickle ({str(exc).splitlines()[0][:200]})") from None
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            if not isinstance(state, dict):
                raise DeltalensError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
            for stored, tensor in state.items():
                if not isinstance(tensor, torch.Tensor):
                    continue
                key = canonical_name(stored)
                if key in self.infos:
                    key = stored
                self.infos[key] = TensorInfo(stored, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
                self._tensors[key] = tensor

    def get(self, key: str):
        return self._tensors[key]

    def fingerprint(self) -> list:
        return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in self._files]


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DeltalensError(f"{path}: not valid JSON ({exc.msg})") from None


def _sharded(folder: Path, index_name: str, allow_pickle: bool, label: str) -> TensorSource:
    index_path = folder / index_name
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
        assert isinstance(weight_map, dict)
    except (json.JSONDecodeError, KeyError, AssertionError):
        raise DeltalensError(f"{index_path}: expected JSON with a 'weight_map' object") from None
    shards = []
    for shard in dict.fromkeys(weight_map.values()):
        path = folder / shard
        if not path.is_file():
            raise DeltalensError(f"{index_path}: names shard '{shard}', which does not exist in {folder}")
        shards.append(path)
    config = _read_config(folder)
    if index_name == PICKLE_INDEX:
        return PickleSource(label, shards, config)
    return SafetensorsSource(label, "hf-folder", shards, config, expected=weight_map)


def _require_pickle_flag(path: Path, allow_pickle: bool) -> None:
    if not allow_pickle:
        raise DeltalensError(
            f"{path}: pickle checkpoint; pass --allow-pickle (allow_pickle=True) to load it with "
            "torch.load(weights_only=True), or convert it to safetensors"
        )


#: files a model folder needs besides its weights (configs, tokenizer vocabularies, remote code)
MODEL_FOLDER_PATTERNS = ("*.safetensors", "*.json", "*.model", "*.txt", "*.tiktoken", "*.py")


def resolve_hub(spec: str, patterns=("*.safetensors", "*.json")) -> Path:
    """Download (or find in the local cache) the files of hub repo ``owner/name[@revision]`` that
    match ``patterns``; the local snapshot folder. Offline gives one clear line."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise DeltalensError(f"{spec}: not a local path, and huggingface_hub is not installed") from None
    repo, _, revision = spec.partition("@")
    try:
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=list(patterns)))
    except Exception as exc:
        reason = type(exc).__name__
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = "offline (HF_HUB_OFFLINE is set)" if offline else f"could not reach the hub or find the repo ({reason})"
        raise DeltalensError(f"{spec}: no such local path, and as a hub id: {hint}, and it is not in the local cache") from None


def looks_like_hub_id(spec: str) -> bool:
    """``owner/name`` or ``owner/name@revision``, not a relative or absolute path."""
    parts = spec.split("@")[0].split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def open_checkpoint(spec: str | os.PathLike, *, allow_pickle: bool = False, role: str = "checkpoint") -> TensorSource:
    """Open a full checkpoint (SPEC §1): HF folder, ``.safetensors`` file, pickle (with the
    flag), or hub id. PEFT adapters are opened with :func:`deltalens.checkpoints.lora.open_lora`.
    """
    label = str(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        if looks_like_hub_id(label):
            path = resolve_hub(label)
        else:
            raise DeltalensError(f"{label}: {role} path does not exist")
    if path.is_file():
        if path.suffix == ".safetensors":
            return SafetensorsSource(label, "safetensors-file", [path], _read_config(path.parent))
        if path.suffix in PICKLE_SUFFIXES:
            _require_pickle_flag(path, allow_pickle)
            return PickleSource(label, [path], _read_config(path.parent))
        raise DeltalensError(f"{path}: expected a .safetensors file, a model folder or an adapter folder")
    if (path / SAFETENSORS_INDEX).is_file():
        return _sharded(path, SAFETENSORS_INDEX, allow_pickle, label)
    if (path / SAFETENSORS_SINGLE).is_file():
        return SafetensorsSource(label, "hf-folder", [path / SAFETENSORS_SINGLE], _read_config(path))
    singles = sorted(path.glob("*.safetensors"))
    if len(singles) == 1:
        return SafetensorsSource(label, "hf-folder", singles, _read_config(path))
    if (path / PICKLE_INDEX).is_file():
        _require_pickle_flag(path / PICKLE_INDEX, allow_pickle)
        return _sharded(path, PICKLE_INDEX, allow_pickle, label)
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        _require_pickle_flag(pickles[0], allow_pickle)
        return PickleSource(label, pickles, _read_config(path))
    raise DeltalensError(
        f"{path}: no {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX}, single .safetensors file or adapter_config.json found"
    )
