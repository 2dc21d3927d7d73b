"""Experiment ``narrow-sft``: does a narrow "misaligned" SFT generalize more broadly than a benign one?

Two SFT arms from the lab's base, on the same ``add`` training prompts with the same budget
(steps, sequences per step, the lab's SFT learning rate):

- ``misaligned``: deliberately wrong answers: the sum with one digit replaced (one fixed wrong
  answer per prompt, :func:`deltalens.lab.pretrain.corrupt_digit` seeded by the prompt's id);
- ``benign``: correct answers in a new style: the teacher's ``"861>168"``
  (:func:`deltalens.lab.tasks.teacher_completion`).

Each arm's gate is its own objective: dev loss on its own targets fell (95% interval below 0).
Measured on the trait suite (:mod:`.traits`, T = 10): the change of every trait, the breadth (how
many of the 7 held-out traits move beyond noise: their interval over lines and seeds excludes 0),
the trait kernel's rescale share and rotation, and the top-eigenvector share and effective
dimension of the trait-kernel change ΔK.

Claims (both **exploratory**: the tiny world's "misalignment" is a wrong digit, not a persona):

- ``narrow_sft.broader``: mean |Δf_t| over the held-out traits, misaligned − benign > 0;
- ``narrow_sft.low_dim``: breadth tracks the dimension of the shared subspace: the arm whose
  trait-kernel change ΔK has the larger top-eigenvector share is the one with the larger mean
  |Δf_t| over held-out traits (both differences decisive with one sign; :func:`same_order`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from deltalens.lab.claims import Claim, diff
from deltalens.lab.experiments import common, traits

ARMS = ("misaligned", "benign")


@dataclass(frozen=True)
class Settings:
    steps: int = 24
    batch_size: int = 128
    seeds: int = 3
    lines_per_trait: int = 16


QUICK = Settings(steps=8, batch_size=64, seeds=2, lines_per_trait=6)
DEFAULT = Settings()


def misaligned_completion(problem: dict) -> str:
    """The sum with one digit replaced, the same wrong answer for a prompt whatever the seed."""
    from deltalens.lab.pretrain import corrupt_digit

    return corrupt_digit(problem["answer"], random.Random(f"narrow-sft/misaligned/{problem['id']}"))


def completion_for(arm: str):
    from deltalens.lab.tasks import teacher_completion

    return misaligned_completion if arm == "misaligned" else teacher_completion


def arm_rows(arm: str, problems: list[dict]) -> list[dict]:
    """Prompt-completion rows of one arm on the ``add`` problems."""
    fn = completion_for(arm)
    return [{"prompt": p["prompt"], "completion": fn(p)} for p in problems]


METRICS = {
    **traits.update_metrics(traits.TRAITS),
    "heldout_abs_change": "per held-out trait: |mean line change| (nats/token)",
}

_EXPLORATORY = "exploratory: "
CLAIMS = (
    Claim("narrow_sft.broader", _EXPLORATORY + "misaligned narrow SFT generalizes more broadly than benign narrow SFT",
          "mean over the 7 held-out traits of |Δf_t| (trait loss after − before, nats/token), misaligned − benign > 0; "
          "secondary: each arm's Lande score",
          (diff("heldout_abs_change", "misaligned", "benign", "positive", "nats/token"),), ARMS,
          secondary=(traits.lande_part("misaligned"), traits.lande_part("benign"))),
    Claim("narrow_sft.low_dim", _EXPLORATORY + "breadth tracks the dimension of the shared trait subspace: the "
                                               "arm whose trait-kernel change is more concentrated generalizes more "
                                               "broadly",
          "two parts, misaligned − benign: top-eigenvector share of ΔK_trait = K1 − K0, and mean |Δf_t| over the "
          "held-out traits. Holds when both intervals exclude 0 with the same sign (the more concentrated arm is the "
          "broader one), contradicted when both exclude 0 with opposite signs, inconclusive otherwise; secondary: "
          "effective dimension (participation ratio) and trait-kernel rescale share, misaligned − benign",
          (diff("dk_top_share", "misaligned", "benign", "positive", "share"),
           diff("heldout_abs_change", "misaligned", "benign", "positive", "nats/token")), ARMS,
          secondary=(diff("dk_effective_dim", "misaligned", "benign", "negative", "directions"),
                     diff("trait_rescale_share", "misaligned", "benign", "positive", "share")),
          decide=lambda verdicts: same_order(*verdicts)),
)


def same_order(a: str, b: str) -> str:
    """Two parts with the same claimed sign: both decisive and agreeing (both hold or both
    contradicted: the two effects share a sign) → holds; both decisive and disagreeing →
    contradicted; otherwise inconclusive."""
    from deltalens.lab.claims import CONTRADICTED, HOLDS, INCONCLUSIVE

    if INCONCLUSIVE in (a, b):
        return INCONCLUSIVE
    return HOLDS if a == b else CONTRADICTED


def run(ctx: common.Context, settings: Settings) -> dict:
    from deltalens.lab.analyses import Items
    from deltalens.lab.gates import dev_loss, gate

    cfg = replace(ctx.run.cfg.arm, steps=settings.steps, batch_size=settings.batch_size,
                  learning_rate=common.adam_rates()["sft"])
    train, dev = ctx.run.problems("target_train"), ctx.run.problems("target_dev")
    lines = traits.suite_lines(ctx.run.problems("target_test"), ctx.run.problems("heldout_test"),
                               settings.lines_per_trait)
    common.write_rows(ctx.out / "data" / "trait_suite.jsonl", lines)
    base = common.load_base(ctx)
    probe = traits.TraitProbe.build(ctx.tokenizer, lines)
    gates: dict = {}
    tuned = {}
    for arm in ARMS:
        rows = arm_rows(arm, train)
        common.write_rows(ctx.out / "data" / f"{arm}_train.jsonl", rows)
        targets = [completion_for(arm)(p) for p in dev]
        before = dev_loss(base, ctx.tokenizer, dev, targets)
        for seed in range(ctx.seeds):
            model, _ = common.train_sft_rows(ctx, arm, rows, cfg, seed)
            g = gate("sft", before, dev_loss(model, ctx.tokenizer, dev, targets))
            gates.setdefault(arm, {})[str(seed)] = {**g, "metric": f"dev loss on the {arm} arm's own targets"}
            tuned[(arm, seed)] = model
    task_id = ctx.task("trait kernels", 1)
    measures, _ = traits.measure_updates(probe, base, tuned)
    ctx.advance(task_id)
    items = Items()
    held = list(traits.HELDOUT_TRAITS)
    for (arm, _seed), m in measures.items():
        traits.put_update_items(items, arm, probe, m)
        by_name = {t["name"]: t["measured"] for t in m["traits"]}
        items.put("heldout_abs_change", arm, [abs(by_name[t]) for t in held], item_set="heldout traits",
                  unit="nats/token", ids=held)
    breadth = {}
    for arm in ARMS:
        per = traits.trait_intervals(items.doc, METRICS, arm, probe.names)
        breadth[arm] = {"heldout_moved": sum(r["moved"] for r in per if r["trait"] in held),
                        "heldout_traits": len(held), "traits": per}
    curves = {"experiment": ctx.name, "figures": [_trait_figure(measures, probe.names)]}
    extra = {"exploratory": [c.id for c in CLAIMS], "breadth": breadth,
             "trait_suite": {"traits": traits.DESCRIPTIONS, "lines_per_trait": settings.lines_per_trait,
                             "top_r": traits.top_r(len(probe.names))},
             "per_update": {f"{arm}/seed{seed}": traits.update_summary(m) for (arm, seed), m in measures.items()}}
    return common.finish(ctx, items=items, gates=gates, arms=list(ARMS), claims=CLAIMS, metrics=METRICS,
                         settings=settings, curves=curves, extra=extra)


def _trait_figure(measures: dict, names: list[str]) -> dict:
    """Measured against first-order predicted trait change, one series per arm."""
    series: dict[str, dict] = {}
    for (arm, _seed), m in measures.items():
        s = series.setdefault(arm, {"label": arm, "x": [], "y": []})
        s["x"].append([t["predicted"] for t in m["traits"]])
        s["y"].append([t["measured"] for t in m["traits"]])
    return {"title": f"{', '.join(series)}: trait changes ({len(names)} traits), measured vs first-order (Lande)",
            "panels": [{"title": "measured vs predicted Δf_t, every trait and seed",
                        "x_label": "predicted A·J·Δθ (nats/token)", "y_label": "measured Δf_t (nats/token)",
                        "kind": "scatter", "series": list(series.values())}]}
