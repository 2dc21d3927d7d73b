"""The content fingerprint's documented definition, computed independently with hashlib."""

from __future__ import annotations

import hashlib
from pathlib import Path


def reference_sha256(*files: Path) -> str:
    """SHA-256 of the sorted SHA-256s (hex, one a line) of the files' whole bytes."""
    digests = sorted(hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files)
    return hashlib.sha256("".join(d + "\n" for d in digests).encode()).hexdigest()


def folder_sha256(folder: Path) -> str:
    """:func:`reference_sha256` of a model folder's safetensors files."""
    return reference_sha256(*sorted(Path(folder).glob("*.safetensors")))
