"""Each objective's own dev metric, and the training gates built on it (SPEC §10).

The dev split is a set of target-task problems apart from the training prompts and the test
problems (``OUT/problems/target_dev.jsonl``). Two dev metrics, one per kind of objective:

- :func:`dev_reward`: per dev problem, the mean correctness reward of ``DEV_SAMPLES`` samples
  (``LabConfig.dev_samples``) at the arms' sampling temperature (the GRPO objective's own quantity);
- :func:`dev_loss`: per dev problem, the mean negative log-likelihood per token of the SFT
  target (:func:`dev_targets`: the answer in the base's format on the tiny lab, the teacher's
  worked solution on chat tasks, then ``<eos>``): the SFT objective's own quantity.

Which is whose: :func:`dev_kind` (RFT takes the loss on the tiny lab, the reward on a chat base).
Gates (per arm and seed; ``claims.json`` → ``gates``): reward kind: dev reward after training
above before, the paired 95% bootstrap interval over dev problems excluding 0; loss kind: dev loss
after below before, the interval excluding 0, and (``sft`` on the tiny lab) the format adopted: at least
``FORMAT_SHARE`` of the greedy dev completions in the target format. ``grpo-random`` has no
gate: its reward carries nothing to learn, so no dev metric can show it trained.
"""

from __future__ import annotations

import math
import re

import numpy as np

from deltalens.lab.bootstrap import Table, effect_interval
from deltalens.lab.config import DEV_SAMPLES

DEV_SEED = 4321
FORMAT_SHARE = 0.9
#: the base's answer format for the tiny lab's target task: digits only
TARGET_FORMAT = re.compile(r"^\d+$")

GATE_METRIC = {"reward": "dev mean reward", "loss": "dev loss on targets (nats/token)"}


def dev_kind(objective: str, base: str = "tiny") -> str:
    """Which dev metric is the objective's own: ``"reward"`` (:func:`dev_reward`, to raise) or
    ``"loss"`` (:func:`dev_loss` on :func:`dev_targets`, to lower).

    GRPO: reward. SFT: loss on its own demonstrations. RFT trains on the base's own correct
    samples: on the tiny lab those are the answer in the base's format (the SFT targets there),
    so its dev loss on them is its objective's own quantity; on a chat base the correct samples
    are free-form text with no one target string, so its own dev metric is the reward its
    rejection step selects for.
    """
    from deltalens.lab.arms import REGISTRY

    if objective in REGISTRY and REGISTRY[objective].trainer == "grpo":
        return "reward"
    if objective == "rft" and base != "tiny":
        return "reward"
    return "loss"


def dev_targets(problems: list[dict]) -> list[str]:
    """The loss kind's targets: the SFT arm's demonstrations (:func:`deltalens.lab.arms.sft_target`)."""
    from deltalens.lab.arms import sft_target

    return [sft_target(p) for p in problems]


def dev_scores(kind: str, model, tokenizer, problems: list[dict], *, max_new_tokens: int, temperature: float,
               n: int = DEV_SAMPLES) -> list[float]:
    """Per dev problem, the ``kind`` metric (:func:`dev_kind`) of ``model``."""
    if kind == "reward":
        return dev_reward(model, tokenizer, problems, max_new_tokens=max_new_tokens, temperature=temperature, n=n)
    return dev_loss(model, tokenizer, problems, dev_targets(problems))


def dev_reward(model, tokenizer, problems: list[dict], *, max_new_tokens: int, temperature: float,
               n: int = DEV_SAMPLES, seed: int = DEV_SEED) -> list[float]:
    """Per dev problem: the mean correctness reward over ``n`` samples (common random numbers:
    the same ``seed`` for every model)."""
    from deltalens.behavior.sampling import SamplingConfig, sample_in_memory
    from deltalens.lab.tasks import is_correct

    cfg = SamplingConfig(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    texts = sample_in_memory(model, tokenizer, problems, cfg)
    return [sum(float(is_correct(p, c)) for c in texts[p["id"]]) / n for p in problems]


def dev_loss(model, tokenizer, problems: list[dict], targets: list[str]) -> list[float]:
    """Per dev problem: mean NLL per token of ``target + <eos>`` given the prompt (float64)."""
    import torch

    from deltalens.behavior.divergence import completion_logprobs

    prompts = [tokenizer(p["prompt"])["input_ids"] for p in problems]
    completions = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in targets]
    out = []
    for batch, start in zip(completion_logprobs(model, prompts, completions, batch_size=64),
                            range(0, len(prompts), 64)):
        for i, lp in enumerate(batch):
            ids = torch.tensor(completions[start + i], dtype=torch.long)
            out.append(float(-lp.gather(-1, ids[:, None]).mean()))
    return out


def format_share(model, tokenizer, problems: list[dict], *, max_new_tokens: int) -> float:
    """Share of greedy dev completions (up to ``<eos>``) in :data:`TARGET_FORMAT`."""
    from deltalens.behavior.sampling import SamplingConfig, sample_in_memory

    cfg = SamplingConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=DEV_SEED)
    texts = sample_in_memory(model, tokenizer, problems, cfg)
    ok = [bool(TARGET_FORMAT.match(texts[p["id"]][0].split("<eos>")[0].strip())) for p in problems]
    return sum(ok) / len(ok)


def paired_change(before: list[float], after: list[float], n_boot: int = 2000) -> dict:
    """after − before (mean over dev problems) and its paired 95% bootstrap interval over problems."""
    table = Table()
    table.add("dev", "before", [before], "dev")
    table.add("dev", "after", [after], "dev")
    iv = effect_interval(table, [("dev", "after"), ("dev", "before")], lambda v: v[("dev", "after")] - v[("dev", "before")],
                         n_boot=n_boot)
    return {"before": float(np.mean(before)), "after": float(np.mean(after)), "change": iv.estimate,
            "ci": [iv.lo, iv.hi]}


def gate(arm: str, before: list[float], after: list[float], fmt: float | None = None, kind: str | None = None) -> dict:
    """The gate record ``{passed, metric, before, after, ci, ...}`` of one arm and seed; ``kind``:
    the arm's dev metric (:func:`dev_kind`; default: reward for GRPO, loss otherwise)."""
    from deltalens.lab.arms import arm_spec

    if not arm_spec(arm).gated:
        return {"passed": True, "metric": "none: a random reward has no dev metric to improve", "before": None,
                "after": None, "ci": [None, None]}
    kind = kind or dev_kind(arm)
    ch = paired_change(before, after)
    if kind == "reward":
        passed = math.isfinite(ch["ci"][0]) and ch["ci"][0] > 0
        rule = "after − before dev mean reward: 95% interval above 0"
    else:
        passed = math.isfinite(ch["ci"][1]) and ch["ci"][1] < 0
        rule = "after − before dev loss: 95% interval below 0"
    if fmt is not None:
        passed = passed and fmt >= FORMAT_SHARE
        rule += f"; greedy dev completions in the target format ≥ {FORMAT_SHARE}"
    record = {"passed": bool(passed), "metric": GATE_METRIC[kind], "before": round(ch["before"], 6),
              "after": round(ch["after"], 6), "change": round(ch["change"], 6),
              "ci": [round(ch["ci"][0], 6), round(ch["ci"][1], 6)], "rule": rule, "n_dev": len(before)}
    if fmt is not None:
        record["format_share"] = round(fmt, 4)
    return record
