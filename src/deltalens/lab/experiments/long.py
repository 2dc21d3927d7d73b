"""Experiment ``long``: SFT and GRPO for 5× the lab's default steps, with dense checkpoints.

"Likely true over short periods of training, but I'm not sure over longer periods." Both arms
train from the base with the lab's AdamW learning rates for :attr:`Settings.steps` optimizer
steps (320 = 5 × the lab's default 64; smaller batches keep it within the CPU budget), and at
:attr:`Settings.checkpoints` evenly spaced steps the model is measured against the base: per
2-D tensor mean top-k principal angle, NSS, rescale share and ‖Δ‖_F; forward KL(base ‖ model)
on the target test prompts; pass@1 on the first :attr:`Settings.eval_problems` test problems
(:attr:`Settings.eval_samples` samples each at the arms' temperature); the curves start at the base.

Rules: ``long.rotation_gap_persists``: grpo − sft mean principal angle at the last checkpoint
< 0 (beside it: the same at the checkpoint nearest one fifth of the steps, the lab's default
horizon). ``long.rl_rotation_sublinear``: per 2-D tensor and seed, the least-squares slope of
log(angle) on log(‖Δ‖_F) over the checkpoints (tensors with < 3 usable checkpoints excluded);
grpo's slope − 1 < 0 (sub-linear growth); beside it: sft's slope − 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from deltalens.lab.claims import Claim, Part, diff
from deltalens.lab.experiments import common


@dataclass(frozen=True)
class Settings:
    steps: int = 320
    batch_size: int = 32
    checkpoints: int = 16
    seeds: int = 2
    eval_problems: int = 40
    eval_samples: int = 8


QUICK = Settings(steps=120, batch_size=16, checkpoints=6, seeds=2, eval_problems=20, eval_samples=4)
DEFAULT = Settings()

ARMS = ("sft", "grpo")
METRICS = {"angle_final": "per 2-D tensor: mean top-k principal angle at the last checkpoint (gap-limited excluded)",
           "angle_early": "per 2-D tensor: the same at the checkpoint nearest one fifth of the steps",
           "growth_exponent": "per 2-D tensor: slope of log angle on log ‖Δ‖_F over the checkpoints"}


def _slope_minus_one(arm: str) -> Part:
    return Part(f"{arm} growth exponent − 1", (("growth_exponent", arm),),
                lambda v: v[("growth_exponent", arm)] - 1.0, "negative", "exponent")


CLAIMS = (
    Claim("long.rotation_gap_persists", "the RL–SFT rotation gap persists at long horizons",
          "grpo − sft mean top-k principal angle over 2-D tensors at the last checkpoint (5× the lab's default "
          "steps) < 0; secondary: the same at one fifth of the steps",
          (diff("angle_final", "grpo", "sft", "negative", "degrees"),), ARMS,
          secondary=(diff("angle_early", "grpo", "sft", "negative", "degrees"),)),
    Claim("long.rl_rotation_sublinear", "RL's rotation grows sub-linearly in ‖Δ‖",
          "per 2-D tensor and seed: least-squares slope of log angle on log ‖Δ‖_F over the checkpoints; grpo's "
          "mean slope − 1 < 0; secondary: sft's",
          (_slope_minus_one("grpo"),), ("grpo",), secondary=(_slope_minus_one("sft"),)),
)


def log_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y on log x over the points with x, y > 0 (None with < 3 points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len(pts) < 3:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return None if den == 0 else sum((p[0] - mx) * (p[1] - my) for p in pts) / den


def run(ctx: common.Context, settings: Settings) -> dict:
    from deltalens.lab.analyses import Items
    from deltalens.lab.gates import dev_reward
    from deltalens.lab.release import checkpoint_steps

    rates = common.adam_rates()
    arm_cfg = replace(ctx.run.cfg.arm, steps=settings.steps, batch_size=settings.batch_size)
    steps = checkpoint_steps(settings.steps, settings.checkpoints)
    early = min(steps, key=lambda s: (abs(s - settings.steps / 5), s))
    base = common.base_state(ctx)
    names = common.matrix_names(base)
    items, gates, kl = Items(), common.Gates(ctx), common.ForwardKL(ctx)
    test = kl.test[: settings.eval_problems]
    acfg = ctx.run.cfg.arm
    series = ("angle", "nss", "rescale", "fro", "kl", "pass1")
    curves_by_arm = {arm: {k: [] for k in series} for arm in ARMS}
    # every curve starts at the base (step 0, Δ = 0: angle, NSS, ‖Δ‖, KL 0; rescale share undefined)
    base_pass1 = common.mean(dev_reward(kl.base, ctx.tokenizer, test, max_new_tokens=acfg.max_completion_length,
                                        temperature=acfg.temperature, n=settings.eval_samples))
    at_base = {"angle": 0.0, "nss": 0.0, "rescale": None, "fro": 0.0, "kl": 0.0, "pass1": base_pass1}
    for arm in ARMS:
        cfg = replace(arm_cfg, learning_rate=rates[arm])
        for seed in range(ctx.seeds):
            model, _, states = common.train(ctx, arm, arm, cfg, seed, snapshot_steps=steps)
            gates.check(arm, arm, seed, model)
            task_id = ctx.task(f"{arm} seed {seed}: checkpoints", len(steps))
            per_step, row = [], {k: [at_base[k]] for k in series}
            for step in steps:
                model.load_state_dict(states[step])
                model.eval()
                per = {n: common.matrix_values(base[n], states[step][n]) for n in names}
                per_step.append(per)
                row["angle"].append(common.mean(v["angle"] for v in per.values()))
                row["nss"].append(common.mean(v["nss"] for v in per.values()))
                row["rescale"].append(common.mean(v["rescale"] for v in per.values()))
                row["fro"].append(math.sqrt(sum(v["fro"] ** 2 for v in per.values())))
                row["kl"].append(common.mean(kl(model)))
                row["pass1"].append(common.mean(dev_reward(model, ctx.tokenizer, test,
                                                           max_new_tokens=acfg.max_completion_length,
                                                           temperature=acfg.temperature, n=settings.eval_samples)))
                ctx.advance(task_id)
            for k in series:
                curves_by_arm[arm][k].append(row[k])
            for metric, at in (("angle_final", -1), ("angle_early", steps.index(early))):
                vals = [per_step[at][n]["angle"] for n in names]
                items.put(metric, arm, vals, item_set="matrices", unit="degrees", ids=names,
                          excluded={"gap-limited or Δ = 0": sum(v is None for v in vals)} if None in vals else None)
            slopes = [log_slope([p[n]["fro"] for p in per_step], [p[n]["angle"] for p in per_step]) for n in names]
            items.put("growth_exponent", arm, slopes, item_set="matrices", unit="exponent", ids=names,
                      excluded={"< 3 checkpoints with an angle": sum(v is None for v in slopes)} if None in slopes
                      else None)
    labels = {"angle": ("mean principal angle", "degrees"), "nss": ("mean NSS", "NSS"),
              "rescale": ("mean rescale share", "share"), "fro": ("‖Δ‖_F over 2-D tensors", "‖Δ‖_F"),
              "kl": ("forward KL(base ‖ model)", "nats/token"), "pass1": ("pass@1 (test problems)", "pass@1")}

    def panels(x_of, x_label, keys):
        return [{"title": labels[k][0], "x_label": x_label, "y_label": labels[k][1],
                 "series": [{"label": arm, "x": x_of(arm), "y": curves_by_arm[arm][k]} for arm in ARMS]} for k in keys]

    curves = {"experiment": ctx.name, "figures": [
        {"title": "long: against optimizer steps (mean over seeds, min–max band)",
         "panels": panels(lambda arm: [[0, *steps]] * ctx.seeds, "optimizer step", series)},
        {"title": "long: against update size ‖Δ‖_F (one line per seed)",
         "panels": panels(lambda arm: curves_by_arm[arm]["fro"], "‖Δ‖_F over 2-D tensors",
                          ("angle", "nss", "rescale", "kl", "pass1"))}]}
    return common.finish(ctx, items=items, gates=gates.doc, arms=list(ARMS), claims=CLAIMS, metrics=METRICS,
                         settings=settings, curves=curves, extra={"checkpoint_steps": steps, "early_step": early},
                         tuning={k: {"chosen": {"learning_rate": v}, "source": "fixed: deltalens.lab.config.QUICK_RATES"}
                                 for k, v in rates.items() if k in ARMS})
