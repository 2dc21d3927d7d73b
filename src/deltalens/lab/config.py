"""The lab's configuration: one frozen dataclass, a quick and a default preset, a hash.

The base model is cached by :func:`base_hash`, the hash of everything that determines it
(model shape, pre-training recipe, base seed, and the test problems it must never see).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

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
#: Samples per dev problem behind the dev reward (the GRPO/RFT tuning metric and gate), default
DEV_SAMPLES = 16
#: Test problems come from a fixed pool per task (the first n of it), all excluded from
#: pre-training, so quick and default runs share one base.
TEST_POOL = 200


@dataclass(frozen=True)
class LabConfig:
    """Everything one lab run depends on. ``base``: ``tiny`` (pre-trained here from scratch on
    the ``add`` family) or ``smollm2`` (SmolLM2-135M-Instruct, chat word problems)."""

    base: str = "tiny"
    model: TinyConfig = LAB_MODEL
    pretrain: PretrainConfig = PretrainConfig()  # 900 steps, 55% add, 15% of add answers with one digit wrong
    arm: ArmConfig = ArmConfig(steps=64, n_checkpoints=8)
    arms: tuple[str, ...] = ARMS
    seeds: int = 3
    base_seed: int = 0
    digits: int = 3
    n_train: int = 4096  # target-task prompts the arms train on (64 steps × 256 sequences: 4 epochs for SFT)
    n_test: int = 100  # target-task test problems (never trained on; ≤ TEST_POOL)
    n_dev: int = 200  # target-task dev problems (apart from train and test): tuning and gates read only these
    dev_samples: int = DEV_SAMPLES  # samples per dev problem behind the dev reward (GRPO's tuning metric and gate)
    tune: bool = True  # choose each objective's learning rate on the dev split (deltalens.lab.tuning)
    #: with ``tune=False``: ((objective, learning rate), ...) recorded earlier by the tuning rule
    #: (empty: the arm configuration's learning_rate for every objective)
    fixed_rates: tuple[tuple[str, float], ...] = ()
    n_heldout: int = 60  # per held-out task (≤ TEST_POOL)
    eval_samples: int = 64  # n samples per test problem (pass@k up to k = n)
    kl_samples: int = 4  # base samples per target prompt along which KL(base‖arm) is summed exactly
    n_probes: int = 64  # eNTK probes (target test problems) for the kernel analysis
    kernel_mode: str = "exact"  # eNTK mode; "sketch" (dimension kernel_dim) where J does not fit
    kernel_dim: int | None = None
    trait_lines: int | None = None  # lines per held-out task in the trait-kernel suite (None: all)
    device: str = "cpu"  # where training, sampling and kernels run ("cuda" when the CLI finds one)
    track: tuple[str, ...] | None = None  # tracked matrices (regexes; None: every matrix in the layers)
    quick: bool = False

    def with_seeds(self, seeds: int | None) -> LabConfig:
        return self if seeds is None else replace(self, seeds=seeds)


BASES = ("tiny", "smollm2")


def quick_config(base: str = "tiny") -> LabConfig:
    """``--quick``: the same base, shorter arms, two seeds, smaller evaluation and dev sets."""
    check_base(base)
    if base == "smollm2":
        return replace(SMOLLM2, arm=replace(SMOLLM2.arm, steps=SMOLLM2_QUICK_STEPS, n_checkpoints=2),
                       n_train=16, n_test=6, n_heldout=5, eval_samples=8, kl_samples=1, n_probes=4, trait_lines=1,
                       n_dev=8, quick=True)
    return LabConfig(arm=ArmConfig(steps=24, batch_size=128, n_checkpoints=4), seeds=2, n_train=2048, n_test=40,
                     n_heldout=20, eval_samples=32, kl_samples=2, n_probes=16, quick=True, tune=False,
                     fixed_rates=QUICK_RATES)


#: ``--quick``'s learning rates: what the tuning rule (deltalens.lab.tuning, each objective's own
#: dev metric, candidates 3e-5/1e-4 for SFT/RFT and 1e-4/2e-4 for GRPO) chose for 24 steps of 256
#: sequences from this base, 2026-11-30 (docs/lab.md), kept here because running the rule costs
#: more than the quick budget; quick then trains 128 sequences per step, where the GRPO gate still
#: passed (dev reward +0.04, interval [0.016, 0.068], measured while building).
#: ``run_lab(config=replace(quick_config(), tune=True))`` re-runs the rule.
QUICK_RATES = (("sft", 1e-4), ("rft", 1e-4), ("grpo", 2e-4))


def default_config(base: str = "tiny", device: str = "cpu") -> LabConfig:
    """The default run of ``base``; on a GPU the SmolLM2 budget grows (:data:`SMOLLM2_CUDA`)."""
    check_base(base)
    if base == "smollm2":
        return SMOLLM2_CUDA if device.startswith("cuda") else SMOLLM2
    return LabConfig()


def check_base(base: str) -> None:
    """One line naming the known bases when ``base`` is not one of them (CLI and ``run_lab(config=...)``)."""
    if base not in BASES:
        from deltalens.errors import DeltalensError

        raise DeltalensError(f"--base must be one of {', '.join(BASES)}, got {base!r}")


#: ``--base smollm2``'s learning rates: what the tuning rule (deltalens.lab.tuning, SMOLLM2_GRID:
#: SFT 1e-5/3e-5, RFT and GRPO 3e-5/1e-4; each objective's own dev metric on 32 one-digit dev
#: problems, 8 samples each for the reward kind) chose for this preset's arms, 2026-11-30
#: (docs/lab.md: SFT dev loss 0.0122 vs 0.0034 nats/token, GRPO dev reward 0.375 vs 0.035, RFT dev
#: reward 0.668 vs 0.566), kept here because the rule's six trainings cost more than the default's
#: budget. ``run_lab(config=replace(default_config("smollm2"), tune=True))`` re-runs the rule.
SMOLLM2_RATES = (("sft", 3e-5), ("rft", 3e-5), ("grpo", 3e-5))

#: SmolLM2-135M-Instruct (``--base smollm2``): budgets measured on a 2-core CPU (docs/lab.md).
SMOLLM2_QUICK_STEPS = 2
SMOLLM2 = LabConfig(
    base="smollm2",
    arm=ArmConfig(steps=12, batch_size=16, num_generations=8, learning_rate=1e-5, max_completion_length=32,
                  max_length=96, temperature=0.7, n_checkpoints=2, rft_samples_per_prompt=4),
    seeds=1, digits=1, n_train=96, n_test=16, n_heldout=20, n_dev=32, dev_samples=8, tune=False,
    fixed_rates=SMOLLM2_RATES,
    eval_samples=32, kl_samples=2, n_probes=8,
    kernel_mode="sketch", kernel_dim=4096, trait_lines=2,
    # 9 of 210 matrices (q, v, down in the first, middle and last layer): a float64 SVD each per step
    track=(r"layers\.(0|15|29)\.(self_attn\.(q|v)_proj|mlp\.down_proj)\.",),
)

#: The SmolLM2 default on a GPU: the same recipe with ~17× the optimizer steps, 2 seeds, 4× the
#: test problems, 6× the probes, learning rates by the tuning rule (a CPU budget that merely ran faster would waste the card).
SMOLLM2_CUDA = replace(SMOLLM2, arm=replace(SMOLLM2.arm, steps=200, n_checkpoints=10), seeds=2, n_train=1024,
                       n_test=64, n_probes=48, trait_lines=8, device="cuda",
                       tune=True)  # the CPU rates were chosen for 12 steps; a GPU runs the rule for its own budget


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def base_hash(cfg: LabConfig) -> str:
    """Hash of what determines the base: model, pre-training, base seed, digits, excluded test sets."""
    if cfg.base != "tiny":
        return _digest({"base": cfg.base, "v": 1})  # a released model: nothing of the run shapes it
    return _digest({"model": asdict(cfg.model), "pretrain": asdict(cfg.pretrain), "seed": cfg.base_seed,
                    "digits": cfg.digits, "test_pool": TEST_POOL, "v": 1})


def run_hash(cfg: LabConfig) -> str:
    """Hash of the whole configuration (a finished stage is reused only under the same hash)."""
    return _digest({"cfg": asdict(cfg), "v": 1})
