"""What every sampling backend (``hf`` in :mod:`deltalens.behavior.sampling`, ``openai``, ``vllm``)
shares: the settings, the per-sample seed and the batching of (problem, sample indices) jobs.

The backends import this module and nothing of each other's, and :mod:`~deltalens.behavior.sampling`
(the resumable driver) imports the backends: no import cycle.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from deltalens.errors import DeltalensError


@dataclass
class SamplingConfig:
    """The settings of one sampling run (checked by :meth:`check`; one line per bad value)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    batch_size: int = 64  # rows decoded together (hf); requests in flight (openai)
    stop: list[str] = field(default_factory=list)

    def check(self) -> None:
        if self.n < 1:
            raise DeltalensError(f"-n must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise DeltalensError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise DeltalensError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise DeltalensError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise DeltalensError(f"--batch-size must be at least 1, got {self.batch_size}")


def sample_seed(seed: int, problem_id: str, sample_index: int) -> int:
    """A 63-bit seed for one sample, stable across runs, platforms and batchings."""
    digest = hashlib.sha256(f"{seed}\x00{problem_id}\x00{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def row_batches(jobs, batch_size: int):
    """Split [(problem, indices)] into batches of at most ``batch_size`` rows."""
    batch, size = [], 0
    for problem, idxs in jobs:
        idxs = list(idxs)
        while idxs:
            take = idxs[: batch_size - size]
            idxs = idxs[len(take):]
            batch.append((problem, take))
            size += len(take)
            if size == batch_size:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch
