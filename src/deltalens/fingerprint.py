"""Content fingerprints of checkpoints: which weights a result was computed from (issue #20).

A fingerprint is ``{"sha256": H}`` (and, for a hub snapshot, ``"revision"``: its commit), where H
is the SHA-256 of the sorted SHA-256 digests, one a line, of the files the checkpoint's tensors
are read from (:meth:`deltalens.checkpoints.TensorSource.content_files`: the safetensors file or
shards, the pickle files; for a LoRA adapter the base's files plus ``adapter_config.json`` and
the adapter weights). So two byte-identical copies of a checkpoint, in any folders, share a
fingerprint, a folder path or a single ``.safetensors`` file path of the same weights too, and any
changed byte of a weight file gives another. Not part of it: ``config.json``, the tokenizer, and
the layout of a re-save (the same tensors re-sharded or saved with other metadata are other bytes,
so another fingerprint).

Cost: one streamed read of each weight file (8 MiB buffer, hashlib's SHA-256, which uses the
CPU's SHA instructions where present); measured 0.38 s (idle) to 0.98 s (load 10) for 500 MB
in the page cache on this project's 2-core machine (docs/report.md). A file's digest is remembered by its (device,
inode, size, mtime_ns): in the process, and in ``fingerprints.jsonl`` under ``$DELTALENS_CACHE``
(default ``~/.cache/deltalens``; ``DELTALENS_FINGERPRINT_CACHE`` names another file, empty for
none), so a checkpoint is read once however many commands use it; changing the file changes its
mtime and so its entry. A file in a Hugging Face hub cache (``…/blobs/<64 hex digits>``) is not
read at all: its blob name is its SHA-256 (the hub's LFS object id).
``DELTALENS_FINGERPRINT=0`` turns fingerprints off: producers then record ``None``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from deltalens.errors import DeltalensError

FINGERPRINT_ENV = "DELTALENS_FINGERPRINT"
CACHE_ENV = "DELTALENS_FINGERPRINT_CACHE"
BUFFER_BYTES = 8 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_memo: dict[tuple, str] = {}
_disk: dict[str, dict[tuple, str]] = {}  # cache file → its entries, read once per process


def enabled() -> bool:
    return os.environ.get(FINGERPRINT_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def cache_file() -> Path | None:
    """Where file digests are remembered across processes (None: only in this process)."""
    if CACHE_ENV in os.environ:
        return Path(os.environ[CACHE_ENV]) if os.environ[CACHE_ENV] else None
    root = os.environ.get("DELTALENS_CACHE") or Path.home() / ".cache" / "deltalens"
    return Path(root) / "fingerprints.jsonl"


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _disk_entries(cache: Path) -> dict[tuple, str]:
    if str(cache) not in _disk:
        entries = {}
        try:
            with cache.open() as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                        entries[tuple(row["key"])] = row["sha256"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a line cut by a kill, or not ours: skip it
        except OSError:
            pass
        _disk[str(cache)] = entries
    return _disk[str(cache)]


def _remember(cache: Path | None, key: tuple, path: Path, digest: str) -> None:
    _memo[key] = digest
    if cache is None:
        return
    _disk_entries(cache)[key] = digest
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with cache.open("a") as fh:  # one short line per append: concurrent writers do not interleave
            fh.write(json.dumps({"key": list(key), "path": str(path), "sha256": digest}) + "\n")
    except OSError:
        pass  # an unwritable cache only costs a re-read next time


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, streamed; remembered by (device, inode, size, mtime_ns);
    a hub-cache blob's name is taken as its digest."""
    real = Path(path).resolve()
    if real.parent.name == "blobs" and _SHA256.fullmatch(real.name):
        return real.name
    try:
        key = _stat_key(real)
    except OSError as exc:
        raise DeltalensError(f"{path}: cannot read for its fingerprint ({exc.strerror})") from None
    if key in _memo:
        return _memo[key]
    cache = cache_file()
    if cache is not None and key in _disk_entries(cache):
        _memo[key] = _disk_entries(cache)[key]
        return _memo[key]
    digest = hashlib.sha256()
    buf = bytearray(BUFFER_BYTES)
    view = memoryview(buf)
    with open(real, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    _remember(cache, key, real, digest.hexdigest())
    return _memo[key]


def files_sha256(files) -> str:
    """The fingerprint's ``sha256`` of a set of weight files: SHA-256 of their sorted digests."""
    digests = sorted(file_sha256(f) for f in files)
    return hashlib.sha256("".join(d + "\n" for d in digests).encode()).hexdigest()


def _revision(files: list[Path]) -> str | None:
    """The commit of a hub-cache snapshot (``…/snapshots/<commit>/…``) the files were read from."""
    for f in files:
        parts = Path(os.path.abspath(f)).parts
        for i in range(len(parts) - 2, 0, -1):
            if parts[i - 1] == "snapshots" and _COMMIT.fullmatch(parts[i]):
                return parts[i]
    return None


def source_fingerprint(source) -> dict | None:
    """The fingerprint of an open :class:`~deltalens.checkpoints.TensorSource` (None when off
    or when the source has no files)."""
    files = source.content_files()
    if not enabled() or not files:
        return None
    out = {"sha256": files_sha256(files)}
    revision = _revision(files)
    if revision:
        out["revision"] = revision
    return out


def model_fingerprint(model, revision: str | None = None) -> dict | None:
    """The fingerprint of a checkpoint given as a local path (a model folder, a safetensors or
    pickle file) or a hub id ``owner/name[@revision]`` (``revision`` for an id without ``@``)
    whose snapshot is already in the local hub cache (the producer has just loaded it; nothing
    is downloaded here). None for an already-loaded module, a served model's name, a hub id not
    in the cache, or when off."""
    if not enabled() or not isinstance(model, (str, os.PathLike)):
        return None
    local = Path(model).expanduser()
    if not local.exists():
        local = _cached_snapshot(str(model), revision)
        if local is None:
            return None
    from deltalens.checkpoints import open_checkpoint

    try:
        # pickle files are opened memory-mapped with weights_only=True: the caller has already
        # loaded this model, so this only lists its files
        source = open_checkpoint(local, allow_pickle=True)
    except DeltalensError:
        return None
    return source_fingerprint(source)


def _cached_snapshot(spec: str, revision: str | None) -> Path | None:
    """The local hub-cache snapshot folder of hub id ``spec``, without going to the network."""
    from deltalens.checkpoints.sources import looks_like_hub_id

    if not looks_like_hub_id(spec):
        return None
    repo, _, rev = spec.partition("@")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, revision=rev or revision or None, local_files_only=True))
    except Exception:  # not in the cache (LocalEntryNotFoundError), or no huggingface_hub: no fingerprint
        return None


def same_weights(a, b) -> bool | None:
    """True/False when both fingerprints hold a ``sha256`` (equal or not); None when either
    lacks one (the caller falls back to paths or names)."""
    sa = a.get("sha256") if isinstance(a, dict) else None
    sb = b.get("sha256") if isinstance(b, dict) else None
    if not (isinstance(sa, str) and isinstance(sb, str)):
        return None
    return sa == sb
