"""Experiment ``kl-penalty``: GRPO with β ∈ :data:`BETAS`, the same everything else, beside SFT.

Path Not Taken attributes RL's small rotation largely to the KL penalty; other papers disagree.
The β values follow a rule fixed before any run: 0 (TRL's default, the main lab's arm), the
published GRPO value 0.04 (DeepSeekMath; TRL's earlier default) and ten times it. Every GRPO arm
uses the lab's GRPO learning rate, and SFT the lab's SFT arm (AdamW, its learning rate).

Rule (``kl_penalty.keeps_rotation_small``), with two parts on the mean top-k principal angle
over 2-D tensors: A = angle(β=0) − angle(β=0.4), claimed > 0 (rotation falls with β), and
B = angle(β=0) − angle(sft), claimed ≥ 0 (β = 0 already rotates as much as SFT). Contradicted
when B's interval lies below 0 (β = 0 already rotates less than SFT: no penalty is needed for
it) or A's lies below 0 (rotation rises with β); holds when A's interval lies above 0 and B is
not contradicted; otherwise inconclusive (also when a gate failed). Beside it: angle(β=0) −
angle(β=0.04), the angle per unit ‖Δ‖_F of A, and each arm's forward KL (does β bind at all).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from deltalens.lab.claims import CONTRADICTED, HOLDS, INCONCLUSIVE, Claim, Part, diff
from deltalens.lab.experiments import common

BETAS = (0.0, 0.04, 0.4)


@dataclass(frozen=True)
class Settings:
    steps: int = 24
    batch_size: int = 128
    seeds: int = 3
    betas: tuple[float, ...] = BETAS


QUICK = Settings(steps=12, batch_size=64, seeds=2)
DEFAULT = Settings()


def arm_name(beta: float) -> str:
    return f"grpo-beta{beta:g}"


B0, BS, BL = (arm_name(b) for b in BETAS)
ARMS = ("sft", B0, BS, BL)
METRICS = {"principal_angle_deg": "per 2-D tensor: mean top-k principal angle (gap-limited excluded)",
           "angle_per_fro": "per 2-D tensor: principal angle / ‖Δ‖_F (degrees per unit update norm)",
           "forward_kl": "per target test prompt: token-mean KL(base ‖ arm) along the base's samples"}


def decide(verdicts) -> str:
    """The claim's own rule from its parts' verdicts (A: β=0 − β=0.4 > 0; B: β=0 − sft ≥ 0)."""
    a, b = verdicts
    if b == CONTRADICTED or a == CONTRADICTED:
        return CONTRADICTED
    return HOLDS if a == HOLDS else INCONCLUSIVE


def _kl(arm: str) -> Part:
    return Part(f"{arm} forward KL", (("forward_kl", arm),), lambda v: v[("forward_kl", arm)], "positive",
                "nats/token")


CLAIMS = (
    Claim("kl_penalty.keeps_rotation_small", "the KL penalty is what keeps RL's rotation small",
          "A: angle(grpo β=0) − angle(grpo β=0.4) > 0 and B: angle(grpo β=0) − angle(sft) not below 0 → holds; "
          "B's interval below 0 (β = 0 already rotates less than SFT) or A's below 0 → contradicted; else "
          "inconclusive (mean top-k principal angle over 2-D tensors, gap-limited excluded)",
          (diff("principal_angle_deg", B0, BL, "positive", "degrees"),
           diff("principal_angle_deg", B0, "sft", "positive", "degrees")),
          ARMS, decide=decide,
          secondary=(diff("principal_angle_deg", B0, BS, "positive", "degrees"),
                     diff("angle_per_fro", B0, BL, "positive", "degrees per unit ‖Δ‖_F"),
                     *(_kl(a) for a in ARMS))),
)


def run(ctx: common.Context, settings: Settings) -> dict:
    from deltalens.lab.analyses import Items

    if tuple(settings.betas) != BETAS:
        from deltalens.errors import DeltalensError

        raise DeltalensError(f"kl-penalty: the claim is written for β = {BETAS}, got {settings.betas}")
    arm_cfg = replace(ctx.run.cfg.arm, steps=settings.steps, batch_size=settings.batch_size)
    rates = common.adam_rates()
    base = common.base_state(ctx)
    names = common.matrix_names(base)
    items, gates, kl = Items(), common.Gates(ctx), common.ForwardKL(ctx)
    test_ids = [p["id"] for p in kl.test]
    per_arm: dict = {}
    for arm, beta in (("sft", None), *((arm_name(b), b) for b in BETAS)):
        obj = "sft" if beta is None else "grpo"
        cfg = replace(arm_cfg, learning_rate=rates[obj], beta=arm_cfg.beta if beta is None else beta)
        for seed in range(ctx.seeds):
            model, _, _ = common.train(ctx, arm, obj, cfg, seed)
            state = {n: t.detach() for n, t in model.state_dict().items()}
            per = common.put_matrix_items(items, arm, base, state, names,
                                          {"principal_angle_deg": "angle", "angle_per_fro": "angle_per_fro"})
            kls = kl(model)
            items.put("forward_kl", arm, kls, item_set="problems", unit="nats/token", ids=test_ids,
                      excluded={"every base sample empty": sum(v is None for v in kls)} if None in kls else None)
            gates.check(arm, obj, seed, model)
            per_arm.setdefault(arm, []).append((common.mean(v["angle"] for v in per.values()), common.mean(kls),
                                                sum(v["fro"] ** 2 for v in per.values()) ** 0.5))
    grpo = [arm_name(b) for b in BETAS]
    x_beta = [list(range(len(BETAS)))] * ctx.seeds
    curves = {"experiment": ctx.name, "figures": [{
        "title": "kl-penalty: rotation, KL and update size against β (x: 0, 0.04, 0.4), seed bands",
        "panels": [
            {"title": "mean principal angle", "x_label": "β index (0, 0.04, 0.4)", "y_label": "degrees",
             "series": [{"label": "grpo", "x": x_beta,
                         "y": [[per_arm[a][s][0] for a in grpo] for s in range(ctx.seeds)]},
                        {"label": "sft (reference)", "x": x_beta,
                         "y": [[per_arm["sft"][s][0]] * len(BETAS) for s in range(ctx.seeds)]}]},
            {"title": "forward KL(base ‖ arm)", "x_label": "β index (0, 0.04, 0.4)", "y_label": "nats/token",
             "series": [{"label": "grpo", "x": x_beta,
                         "y": [[per_arm[a][s][1] for a in grpo] for s in range(ctx.seeds)]}]},
            {"title": "‖Δ‖_F over 2-D tensors", "x_label": "β index (0, 0.04, 0.4)", "y_label": "‖Δ‖_F",
             "series": [{"label": "grpo", "x": x_beta,
                         "y": [[per_arm[a][s][2] for a in grpo] for s in range(ctx.seeds)]}]}]}]}
    return common.finish(ctx, items=items, gates=gates.doc, arms=list(ARMS), claims=CLAIMS, metrics=METRICS,
                         settings=settings, curves=curves,
                         tuning={k: {"chosen": {"learning_rate": v}, "source": "fixed: deltalens.lab.config.QUICK_RATES"}
                                 for k, v in rates.items() if k in ("sft", "grpo")})
