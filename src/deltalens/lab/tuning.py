"""Per-objective settings chosen before any claim is computed, by each objective's own dev metric.

The rule (fixed, documented in ``docs/lab.md``): for each objective (``sft``, ``rft``, ``grpo``)
train from the base once per candidate learning rate in :data:`LR_GRID` with the arm's own
budget and a selection seed that no claim uses (:data:`TUNE_SEED`), then keep the candidate
with the best dev metric of :mod:`deltalens.lab.gates` (SFT/RFT: lowest mean dev loss on their
targets; GRPO: highest dev mean reward). A claim metric (pass@k on the test problems, KL,
weights, kernels) is never read. ``grpo-random`` takes GRPO's choice. GRPO's β (0), group size
and prompts per step are the arm configuration's, not searched. The choice is cached under the
base's hash, the arm configuration and the grid, so a re-run or another run on the same base
reuses it; ``OUT/tuning.json`` records every candidate's dev metric.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from deltalens.lab.arms import REGISTRY
from deltalens.lab.config import DEV_SAMPLES
from deltalens.lab.gates import dev_kind

LR_GRID = {"sft": (1e-5, 3e-5, 1e-4), "rft": (1e-5, 3e-5, 1e-4), "grpo": (5e-5, 1e-4, 2e-4)}
#: ``--quick`` searches the upper two candidates only (the smallest rate never won a 24-step run
#: while this grid was built; the quick budget has no room for a third training per objective)
QUICK_GRID = {"sft": (3e-5, 1e-4), "rft": (3e-5, 1e-4), "grpo": (1e-4, 2e-4)}


#: ``--base smollm2``: a pretrained 135M model takes full fine-tuning rates an order below the tiny
#: model's; two candidates per objective, the CPU budget having no room for a third training per
#: objective (docs/lab.md). GRPO and RFT start a step higher than SFT: on the first grid
#: (1e-5/3e-5 for all, 2026-11-30) both chose the upper edge by their dev reward, SFT the lower.
SMOLLM2_GRID = {"sft": (1e-5, 3e-5), "rft": (3e-5, 1e-4), "grpo": (3e-5, 1e-4)}


#: GRPO's shape, searched after its learning rate on the tiny default (one change at a time from
#: the arm configuration's β = 0 and group of 8, at the chosen rate): the KL coefficient DeepSeekMath
#: used, and a group twice as large (half the prompts per step at the same sequences per step)
GRPO_SHAPES = ({"beta": 0.04}, {"num_generations": 16})


def shapes(objective: str, quick: bool, base: str = "tiny") -> tuple[dict, ...]:
    """The settings tried after the learning rate (GRPO on the tiny default; none elsewhere:
    ``--quick`` and the SmolLM2 CPU budget have no room for more trainings)."""
    return GRPO_SHAPES if objective == "grpo" and not quick and base == "tiny" else ()


def grid(objective: str, quick: bool, base: str = "tiny") -> tuple[float, ...]:
    """The candidate learning rates of ``objective`` for this base and preset."""
    if base == "smollm2":
        return SMOLLM2_GRID[objective]
    return (QUICK_GRID if quick else LR_GRID)[objective]


TUNE_SEED = 1000
#: which arm uses which objective's setting (from the arm registry)
OBJECTIVE = {arm.name: arm.objective for arm in REGISTRY.values()}


def problems_digest(problems: list[dict]) -> str:
    """A hash of the problems' prompts and answers (what a tuning result was measured on)."""
    blob = [[p["prompt"], p.get("answer")] for p in problems]
    return hashlib.sha256(json.dumps(blob).encode()).hexdigest()[:16]


def tuning_key(base_hash: str, arm_cfg, objective: str, problems: str, quick: bool = False, base: str = "tiny",
               dev_samples: int = DEV_SAMPLES) -> str:
    """The cache key of one objective's tuning result: everything the rule's answer depends on —
    the base, the arm configuration, the objective's candidates (rates and shapes), its dev metric
    and samples, the train and dev problems themselves (``problems``: :func:`problems_digest`),
    the selection seed — and ``v``, bumped when the rule's code changes what it computes (v2,
    2026-11-30: RFT's rows drawn through ``deltalens.behavior``; the problems hashed, not named by id)."""
    blob = {"base": base_hash, "arm": asdict(arm_cfg), "objective": objective, "grid": grid(objective, quick, base),
            "shapes": list(shapes(objective, quick, base)), "dev_samples": dev_samples,
            "dev_metric": dev_kind(objective, base), "problems": problems, "seed": TUNE_SEED, "v": 2}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def dev_metric(objective: str, model, tokenizer, dev: list[dict], arm_cfg, dev_samples: int = DEV_SAMPLES,
               base: str = "tiny") -> float:
    """The objective's own dev metric (:func:`deltalens.lab.gates.dev_kind`) as a number to
    maximise: the dev mean reward, or minus the dev loss on the targets."""
    import numpy as np

    from deltalens.lab.gates import dev_scores

    kind = dev_kind(objective, base)
    scores = dev_scores(kind, model, tokenizer, dev, max_new_tokens=arm_cfg.max_completion_length,
                        temperature=arm_cfg.temperature, n=dev_samples)
    return float(np.mean(scores)) * (1.0 if kind == "reward" else -1.0)


def select(objective: str, *, rows: list[dict], dev: list[dict], base_dir: Path, tokenizer, arm_cfg, device: str,
           on_candidate=None, quick: bool = False, base: str = "tiny", dev_samples: int = DEV_SAMPLES) -> dict:
    """Train once per candidate learning rate and keep the best by the objective's dev metric;
    then, where :func:`shapes` has any, once per shape change at that rate, and keep the best of all
    (ties: the earlier candidate, so the arm configuration's own shape and the smaller rate)."""
    from deltalens.lab.arms import train_arm

    def score(settings: dict) -> dict:
        cfg = replace(arm_cfg, **settings)
        with tempfile.TemporaryDirectory() as tmp:
            model, history = train_arm(objective, base_dir=base_dir, tokenizer=tokenizer, rows=rows, cfg=cfg,
                                       seed=TUNE_SEED, out_dir=Path(tmp), device=device)
            shutil.rmtree(Path(tmp) / "trainer", ignore_errors=True)
        result = {**settings, "dev_score": round(dev_metric(objective, model, tokenizer, dev, cfg, dev_samples, base), 6)}
        if on_candidate is not None:
            on_candidate()
        return result

    results = [score({"learning_rate": lr}) for lr in grid(objective, quick, base)]
    best = max(results, key=lambda r: (r["dev_score"], -r["learning_rate"]))
    for change in shapes(objective, quick, base):
        results.append(score({"learning_rate": best["learning_rate"], **change}))
    best = max(enumerate(results), key=lambda ir: (ir[1]["dev_score"], -ir[0]))[1]
    kind = dev_kind(objective, base)
    return {"objective": objective, "chosen": {k: v for k, v in best.items() if k != "dev_score"}, "candidates": results,
            "score": "dev mean reward" if kind == "reward" else "minus dev loss on targets (nats/token)"}
