"""The lab's configuration: one frozen dataclass, a quick and a default preset, a hash.

The base model is cached by :func:`base_hash`, the hash of everything that determines it
(model shape, pre-training recipe, base seed, and the test problems it must never see).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from deltalens.lab.arms import ARMS, ArmConfig
from deltalens.lab.pretrain import PretrainConfig
from deltalens.lab.tiny_model import TinyConfig

LAB_MODEL = TinyConfig(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
)
#: Test problems come from a fixed pool per task (the first n of it), all excluded from
#: pre-training, so quick and default runs share one base.
TEST_POOL = 200


@dataclass(frozen=True)
class LabConfig:
    """Everything one lab run depends on."""

    model: TinyConfig = LAB_MODEL
    pretrain: PretrainConfig = PretrainConfig()  # 900 steps, 55% add: base pass@1 16.6%, pass@64 73% (bench_lab)
    arm: ArmConfig = ArmConfig(steps=120)
    arms: tuple[str, ...] = ARMS
    seeds: int = 2
    base_seed: int = 0
    digits: int = 3
    n_train: int = 2000  # target-task prompts the arms train on
    n_test: int = 100  # target-task test problems (never trained on; ≤ TEST_POOL)
    n_heldout: int = 60  # per held-out task (≤ TEST_POOL)
    eval_samples: int = 64  # n samples per test problem (pass@k up to k = n)
    kl_samples: int = 4  # base samples per target prompt along which KL(base‖arm) is summed exactly
    n_probes: int = 64  # eNTK probes (target test problems) for the kernel analysis
    quick: bool = False
    extra: dict = field(default_factory=dict)

    def with_seeds(self, seeds: int | None) -> LabConfig:
        return self if seeds is None else replace(self, seeds=seeds)


def quick_config() -> LabConfig:
    """``--quick``: the same base, shorter arms, one seed, smaller evaluation sets."""
    return LabConfig(arm=ArmConfig(steps=16, n_checkpoints=4), seeds=1, n_train=256, n_test=40,
                     n_heldout=20, eval_samples=32, kl_samples=2, n_probes=32, quick=True)


def default_config() -> LabConfig:
    return LabConfig()


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def base_hash(cfg: LabConfig) -> str:
    """Hash of what determines the base: model, pre-training, base seed, digits, excluded test sets."""
    return _digest({"model": asdict(cfg.model), "pretrain": asdict(cfg.pretrain), "seed": cfg.base_seed,
                    "digits": cfg.digits, "test_pool": TEST_POOL, "v": 1})


def run_hash(cfg: LabConfig) -> str:
    """Hash of the whole configuration (a finished stage is reused only under the same hash)."""
    return _digest({"cfg": asdict(cfg), "v": 1})
