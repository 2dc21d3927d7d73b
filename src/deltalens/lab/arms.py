"""The lab's fine-tuning arms, all from the same base with the same optimizer-step budget.

- ``sft``: TRL ``SFTTrainer`` on a teacher's correct demonstrations (distillation). On the tiny
  base they are in the base's own answer format (``tasks.base_completion``), so that "SFT vs RL"
  compares objectives, not a new style against on-policy samples; the SmolLM2 lab keeps the
  teacher's worked style (``tasks.teacher_completion``).
- ``grpo``: TRL ``GRPOTrainer`` with the verifiable correctness reward (1 if correct, else 0).
- ``grpo-random``: the same trainer with a Bernoulli(0.5) reward that ignores the output
  (Spurious Rewards), drawn from a seeded generator.
- ``rft``: ``SFTTrainer`` on the base model's own correct samples (self-generated data).

Every arm sees ``batch_size`` sequences per optimizer step: SFT/RFT ``batch_size`` prompts with
one demonstration each, GRPO ``batch_size / num_generations`` prompts with ``num_generations``
samples each (a group needs several samples of one prompt, a demonstration does not: equal
prompts per step would mean duplicated demonstrations). Each objective's learning rate comes
from :mod:`deltalens.lab.tuning`.

Every arm trains in float32 (``bf16=False``: TRL's default bf16 autocast is ~10× slower on CPU),
with dropout disabled, ``max_steps`` optimizer steps, a linear warm-up then a constant learning
rate, and
``UpdateStatsCallback`` plus ``ReleaseCheckpointCallback`` attached.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from deltalens.lab.tasks import base_completion, is_correct, teacher_completion



@dataclass(frozen=True)
class Arm:
    """What makes one arm: the TRL trainer it uses, where its training rows come from, its reward
    (GRPO trainers), the objective whose tuned learning rate it takes, and whether it has a gate."""

    name: str
    trainer: str  # "sft" (SFTTrainer on prompt-completion rows) or "grpo" (GRPOTrainer on problems)
    data: str  # "teacher" (sft_target demonstrations), "self" (the base's own correct samples), "problems"
    reward: str | None  # "correctness" or "random" (grpo trainers); None for SFT trainers
    objective: str  # the tuning objective whose learning rate it uses (deltalens.lab.tuning)
    gated: bool = True  # False: no dev metric can show it trained (a reward that ignores the output)


#: the lab's arms, in the order they train and appear in tables
REGISTRY: dict[str, Arm] = {a.name: a for a in (
    Arm("sft", trainer="sft", data="teacher", reward=None, objective="sft"),
    Arm("grpo", trainer="grpo", data="problems", reward="correctness", objective="grpo"),
    Arm("grpo-random", trainer="grpo", data="problems", reward="random", objective="grpo", gated=False),
    Arm("rft", trainer="sft", data="self", reward=None, objective="rft"),
)}
ARMS = tuple(REGISTRY)
#: the names the claims speak of
SFT, RL, RANDOM, RFT = "sft", "grpo", "grpo-random", "rft"


def arm_spec(arm: str) -> Arm:
    """The registry entry of ``arm`` (``ValueError`` naming the known arms otherwise)."""
    if arm not in REGISTRY:
        raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")
    return REGISTRY[arm]


@dataclass(frozen=True)
class ArmConfig:
    """Budget and hyper-parameters shared by every arm (one budget for all: a fair comparison)."""

    steps: int = 64
    batch_size: int = 256  # sequences per optimizer step, every arm (GRPO: completions per step)
    num_generations: int = 8  # GRPO group size: batch_size / num_generations prompts per step
    learning_rate: float = 1e-4  # the fallback when tuning is off; tuning.py chooses it per objective
    warmup_fraction: float = 0.0  # linear warm-up over this share of the steps, then constant: a fresh Adam's
    # first steps are sign steps of size lr on every parameter, which undo a base's fine pre-training
    beta: float = 0.0  # GRPO KL coefficient (0: no reference model, TRL's default)
    max_completion_length: int = 10
    max_length: int = 64  # SFT/RFT: prompt + completion tokens
    temperature: float = 1.0  # GRPO's sampling temperature (the evaluation samples at the same one)
    n_checkpoints: int = 10
    rft_samples_per_prompt: int = 4


def sft_target(problem: dict) -> str:
    """The SFT arm's demonstration: the answer in the base's own format on the tiny lab's tasks,
    the teacher's worked solution on the chat tasks."""
    from deltalens.lab import word_tasks

    return teacher_completion(problem) if problem["task"] in word_tasks.ALL_TASKS else base_completion(problem)


def sft_rows(problems: Sequence[dict]) -> list[dict]:
    """Prompt-completion rows of teacher demonstrations (:func:`sft_target`)."""
    return [{"prompt": p["prompt"], "completion": sft_target(p)} for p in problems]


def rft_rows(problems: Sequence[dict], samples: Sequence[Sequence[str]]) -> list[dict]:
    """Prompt-completion rows of the base's own correct samples (every correct sample kept)."""
    rows = []
    for problem, completions in zip(problems, samples, strict=True):
        rows.extend({"prompt": problem["prompt"], "completion": c} for c in completions if is_correct(problem, c))
    return rows


def correctness_reward(prompts, completions, answer, task, **kwargs) -> list[float]:
    """1.0 when the completion's extracted answer equals the problem's answer, else 0.0."""
    return [
        float(is_correct({"answer": a, "task": t}, c)) for c, a, t in zip(completions, answer, task, strict=True)
    ]


def random_reward(seed: int) -> Callable[..., list[float]]:
    """A Bernoulli(0.5) reward ignoring the output, from a generator seeded with ``seed``."""
    rng = random.Random(f"random-reward/{seed}")

    def bernoulli_reward(prompts, completions, **kwargs) -> list[float]:
        return [float(rng.random() < 0.5) for _ in completions]

    return bernoulli_reward


def _common_args(cfg: ArmConfig, out_dir: Path, seed: int, device: str, optim: str | None = None) -> dict:
    extra = {} if optim is None else {"optim": optim}
    return dict(
        **extra,
        output_dir=str(out_dir / "trainer"),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=int(round(cfg.warmup_fraction * cfg.steps)),
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        bf16=False,
        fp16=False,
        use_cpu=device == "cpu",
        activation_checkpointing=False,  # TRL turns it on by default: one more forward per step, no memory need here
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def train_arm(
    arm: str,
    *,
    base_dir: Path,
    tokenizer,
    rows: list[dict],
    cfg: ArmConfig,
    seed: int,
    out_dir: Path,
    callbacks: Sequence = (),
    device: str = "cpu",
    optim: str | None = None,
    reward=None,
):
    """Fine-tune a fresh float32 copy of the base at ``base_dir`` as ``arm``; returns the model.

    ``rows`` are prompt-completion rows (``sft``, ``rft``) or problems with ``prompt``,
    ``answer`` and ``task`` (``grpo``, ``grpo-random``). ``optim``: a ``transformers``
    optimizer name (``"sgd"``: plain SGD, no momentum; default: the trainer's AdamW), kept out
    of :class:`ArmConfig` so the main lab's configuration hashes do not change. ``reward``: a
    reward function replacing the arm's own (GRPO arms; the experiments wrap it to record prompts).
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    spec = arm_spec(arm)
    if not rows:
        raise ValueError(f"arm {arm!r} has no training rows")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    dataset = Dataset.from_list(list(rows))
    if spec.trainer == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(
            **_common_args(cfg, out_dir, seed, device, optim),
            max_length=cfg.max_length,
            packing=False,
            completion_only_loss=True,
            dataset_num_proc=None,
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=list(callbacks)
        )
    else:
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(
            **_common_args(cfg, out_dir, seed, device, optim),
            num_generations=cfg.num_generations,
            max_completion_length=cfg.max_completion_length,
            temperature=cfg.temperature,
            beta=cfg.beta,
            disable_dropout=True,
            log_completions=False,
        )
        if reward is None:
            reward = correctness_reward if spec.reward == "correctness" else random_reward(seed)
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=list(callbacks),
        )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the lab shows rich progress; logs go to log_history
    trainer.train()
    model = trainer.model
    model.eval()
    return model, trainer.state.log_history
