"""Pre-training the lab's base model: a plain float32 torch loop on a task mixture.

Each step draws a fresh batch of problems from the mixture (seeded, never a test prompt),
formats them as ``prompt + completion + <eos>`` in the base style, and minimises the
cross-entropy of the completion tokens (prompt tokens are masked: the prompts are random
operands, there is nothing to learn from them). AdamW, linear warm-up then cosine decay.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from deltalens.lab.tasks import base_completion, make_problem

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PretrainConfig:
    """What the base is trained on and for how long."""

    steps: int = 900
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    digits: int = 3
    mixture: tuple[tuple[str, float], ...] = (("add", 0.55), ("copy", 0.15), ("reverse", 0.15), ("max", 0.15))
    #: share of ``add`` examples whose answer has one digit replaced by another (noisy pre-training
    #: data): the base then samples wrong digits it could avoid, the headroom RLVR is reported to
    #: use (sharpening the base's own distribution), and SFT on clean answers has something to fix
    answer_noise: float = 0.15


def encode_examples(tokenizer, examples: Sequence[tuple[str, str]]):
    """Right-padded ``input_ids``, ``attention_mask`` and completion-only ``labels`` for
    (prompt, completion) pairs; ``<eos>`` is appended to every completion."""
    import torch

    ids, labels = [], []
    for prompt, completion in examples:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(p + c)
        labels.append([IGNORE_INDEX] * len(p) + c)
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    label_t = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (x, y) in enumerate(zip(ids, labels, strict=True)):
        input_ids[i, : len(x)] = torch.tensor(x)
        label_t[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_t}


def mixture_batch(rng: random.Random, cfg: PretrainConfig, exclude: set[str]) -> list[tuple[str, str]]:
    """One batch of (prompt, base-style completion) pairs drawn from the mixture."""
    tasks = [t for t, _ in cfg.mixture]
    weights = [w for _, w in cfg.mixture]
    batch = []
    while len(batch) < cfg.batch_size:
        problem = make_problem(rng.choices(tasks, weights)[0], rng, digits=cfg.digits)
        if problem["prompt"] in exclude:
            continue
        completion = base_completion(problem)
        if problem["task"] == "add" and cfg.answer_noise > 0 and rng.random() < cfg.answer_noise:
            completion = corrupt_digit(completion, rng)
        batch.append((problem["prompt"], completion))
    return batch


def corrupt_digit(answer: str, rng: random.Random) -> str:
    """``answer`` with the digit at one uniformly chosen position replaced by a different digit
    (never a leading zero)."""
    i = rng.randrange(len(answer))
    choices = [d for d in "0123456789" if d != answer[i] and not (i == 0 and d == "0" and len(answer) > 1)]
    return answer[:i] + rng.choice(choices) + answer[i + 1:]


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def pretrain(
    model,
    tokenizer,
    cfg: PretrainConfig,
    *,
    seed: int,
    exclude: set[str] = frozenset(),
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place (float32) and return the loss per step.

    ``exclude`` holds prompts never to train on (the test sets); ``on_step(step, loss)`` is
    called after every optimizer step (progress bars).
    """
    import torch

    torch.manual_seed(seed)
    rng = random.Random(f"pretrain/{seed}")
    model.float().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    losses = []
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = encode_examples(tokenizer, mixture_batch(rng, cfg, exclude))
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, losses[-1])
    model.eval()
    return losses
