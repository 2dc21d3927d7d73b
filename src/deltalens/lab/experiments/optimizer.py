"""Experiment ``optimizer``: the main SFT and GRPO arms once more with plain SGD.

Adam's update is close to a sign step (every parameter moves by about the learning rate whatever
its gradient), which by itself makes updates dense and small; so "RL's bf16 sparsity and low
rotation" could be Adam's doing. Here both objectives train with AdamW (the lab's arms, its
learning rates) and with plain SGD (no momentum, the same clipping at gradient norm 1), SGD's
learning rate chosen per objective by the lab's tuning rule on the dev split over
:data:`SGD_GRID` (:func:`deltalens.lab.experiments.common.select_rate`).

Rule (one claim, ``optimizer.survives``): holds when all four parts hold: bf16-unchanged fraction
grpo − sft > 0 and mean top-k principal angle grpo − sft < 0, each with SGD and with AdamW;
contradicted when any part is contradicted; inconclusive otherwise or when a gate failed.
Beside it: the angle per unit ‖Δ‖_F (rotation at equal update size, to first order).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from deltalens.lab.claims import Claim, diff
from deltalens.lab.experiments import common

#: SGD learning-rate candidates. The rule behind them (fixed before any run): a clipped SGD step has
#: norm ≤ lr, an Adam step of the lab's rate 1e-4 on the tiny base's 682,368 parameters about
#: 1e-4·√682368 ≈ 0.08 (a sign step); the grid spans 0.4–12× that size in half-decades.
SGD_GRID = (0.03, 0.1, 0.3, 1.0)
SGD_QUICK_GRID = (0.1, 0.3)


@dataclass(frozen=True)
class Settings:
    steps: int = 24
    batch_size: int = 128
    seeds: int = 3
    sgd_grid: tuple[float, ...] = SGD_GRID


QUICK = Settings(steps=12, batch_size=64, seeds=2, sgd_grid=SGD_QUICK_GRID)
DEFAULT = Settings()

ARMS = ("sft-adamw", "grpo-adamw", "sft-sgd", "grpo-sgd")
METRICS = {"bf16_unchanged": "per tensor: bf16-unchanged fraction of the final model vs the base (parameter-weighted)",
           "principal_angle_deg": "per 2-D tensor: mean top-k principal angle (gap-limited excluded)",
           "angle_per_fro": "per 2-D tensor: principal angle / ‖Δ‖_F (degrees per unit update norm)"}

CLAIMS = (
    Claim("optimizer.survives", "RL's bf16 sparsity and low rotation survive a change of optimizer (AdamW → SGD)",
          "all four hold: bf16-unchanged grpo − sft > 0 and principal angle grpo − sft < 0, with SGD and with AdamW "
          "(SGD's learning rates chosen by the lab's tuning rule); secondary: angle per unit ‖Δ‖_F, grpo − sft",
          (diff("bf16_unchanged", "grpo-sgd", "sft-sgd", "positive", "fraction"),
           diff("principal_angle_deg", "grpo-sgd", "sft-sgd", "negative", "degrees"),
           diff("bf16_unchanged", "grpo-adamw", "sft-adamw", "positive", "fraction"),
           diff("principal_angle_deg", "grpo-adamw", "sft-adamw", "negative", "degrees")),
          ARMS,
          secondary=(diff("angle_per_fro", "grpo-sgd", "sft-sgd", "negative", "degrees per unit ‖Δ‖_F"),
                     diff("angle_per_fro", "grpo-adamw", "sft-adamw", "negative", "degrees per unit ‖Δ‖_F"))),
)


def run(ctx: common.Context, settings: Settings) -> dict:
    from deltalens.lab.analyses import Items

    arm_cfg = replace(ctx.run.cfg.arm, steps=settings.steps, batch_size=settings.batch_size)
    rates = {("sft", "adamw"): common.adam_rates()["sft"], ("grpo", "adamw"): common.adam_rates()["grpo"]}
    tuning = {f"{obj}-adamw": {"chosen": {"learning_rate": rates[(obj, "adamw")]},
                               "source": "fixed: the lab's tuning rule for the tiny base (deltalens.lab.config."
                                         "QUICK_RATES)"} for obj in ("sft", "grpo")}
    for obj in ("sft", "grpo"):
        rec = common.select_rate(ctx, obj, arm_cfg, settings.sgd_grid, "sgd")
        tuning[f"{obj}-sgd"] = rec
        rates[(obj, "sgd")] = rec["chosen"]["learning_rate"]
    base = common.base_state(ctx)
    names = common.matrix_names(base)
    items, gates = Items(), common.Gates(ctx)
    curves: dict = {"experiment": ctx.name, "figures": []}
    points: dict = {}
    for arm in ARMS:
        obj, opt = arm.split("-")
        cfg = replace(arm_cfg, learning_rate=rates[(obj, opt)])
        for seed in range(ctx.seeds):
            model, _, _ = common.train(ctx, arm, obj, cfg, seed, optim="sgd" if opt == "sgd" else None)
            state = {n: t.detach() for n, t in model.state_dict().items()}
            common.put_bf16_items(items, arm, base, state)
            per = common.put_matrix_items(items, arm, base, state, names,
                                          {"principal_angle_deg": "angle", "angle_per_fro": "angle_per_fro"})
            gates.check(arm, obj, seed, model)
            points.setdefault(arm, []).append((sum(v["fro"] ** 2 for v in per.values()) ** 0.5,
                                               common.mean(v["angle"] for v in per.values())))
    curves["figures"].append({
        "title": "optimizer: rotation against update size, per arm and seed",
        "panels": [{"title": "mean top-k principal angle vs ‖Δ‖_F (2-D tensors)", "x_label": "‖Δ‖_F (all 2-D tensors)",
                    "y_label": "mean principal angle (degrees)", "kind": "scatter",
                    "series": [{"label": arm, "x": [[p[0]] for p in pts], "y": [[p[1]] for p in pts]}
                               for arm, pts in points.items()]}]})
    return common.finish(ctx, items=items, gates=gates.doc, arms=list(ARMS), claims=CLAIMS, metrics=METRICS,
                         settings=settings, curves=curves, tuning=tuning)
