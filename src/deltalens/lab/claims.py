"""The seed's claims as rules in code: per-item values per arm and seed in, a verdict out (SPEC §10).

Input is the ``items`` section of ``metrics.json``::

    items[metric] = {"item_set": "problems" | "tensors" | ..., "unit": str, "weights": [w per item] | None,
                     "arms": {arm: [[value per item] per seed]}, "excluded": {arm: [{reason: count} per seed]}}

``None`` marks an excluded item value (gap-limited angle, unresolved ratio); it is left out of
every mean and counted under ``excluded``. ``"base"`` is an arm with one seed.

Each claim names one or more *parts*; a part is an effect (a difference of arm values, or of
their logarithms) with the sign the published result predicts (``direction``), and
:mod:`deltalens.lab.bootstrap` gives its 95% interval over seeds and items. A part **holds**
when the interval excludes 0 in the claimed direction, is **contradicted** when it excludes 0
the other way, and is **inconclusive** otherwise. A claim holds when all its parts hold, is
contradicted when any part is contradicted, and is otherwise inconclusive; it is inconclusive
whatever its numbers when an arm it needs failed its training gate (:mod:`deltalens.lab.gates`)
on any seed, and then names that gate. Functions here are pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from deltalens.lab.arms import ARMS, RANDOM, RFT, RL, SFT
from deltalens.lab.bootstrap import N_BOOT, SEED, Interval, Table, effect_interval, point, seed_means, verdict

HOLDS, CONTRADICTED, INCONCLUSIVE = "holds", "contradicted", "inconclusive"
VERDICTS = (HOLDS, CONTRADICTED, INCONCLUSIVE)
BASE = "base"
TRAINED = ARMS

#: "RL stays inside the base's support": SRR above this (Invisible Leash report 0.93–0.99; SPEC §8).
SRR_HIGH = 0.9
#: "numerically near full rank": numerical rank / min(m, n) above this (Mukherjee report 0.992–0.998).
NEAR_FULL_RANK = 0.95

METRICS: dict[str, str] = {
    "bf16_unchanged": "per tensor: bitwise-unchanged fraction of the bf16 release vs the base, weighted by parameter "
                      "count (SPEC §2; diff)",
    "principal_angle_deg": "per 2-D tensor: mean top-k principal angle, left and right averaged; gap-limited tensors "
                           "(Wedin bound > 1) excluded (SPEC §4; spectral)",
    "nss": "per 2-D tensor: normalised spectrum shift NSS; gap-limited tensors excluded (SPEC §4; spectral)",
    "matched_angle_deg": "per tracked 2-D tensor: principal angle interpolated along the saved float32 checkpoints "
                         "to the ‖Δ‖_F of the smaller of the two compared arms (SPEC §4; spectral)",
    "matched_nss": "per 2-D tensor: NSS interpolated along the saved checkpoints to matched ‖Δ‖_F (SPEC §4)",
    "log_effective_rank": "per 2-D tensor: log of the entropy effective rank of Δ (SPEC §3; rank)",
    "log_stable_rank": "per 2-D tensor: log of the stable rank ‖Δ‖_F²/‖Δ‖₂² (SPEC §3; rank)",
    "numerical_rank_fraction": "per 2-D tensor: numerical rank of Δ / min(m, n) (SPEC §3; rank)",
    "pass_at_1": "per test problem: unbiased pass@1 (SPEC §7; behaviour)",
    "pass_at_kmax": "per test problem: unbiased pass@k at k = n samples (SPEC §7; behaviour)",
    "support_base": "per test problem: 1 when the base found a correct answer in n samples (SPEC §7)",
    "support_kept": "per test problem: 1 when both the base and the arm found one (class P)",
    "support_gained": "per test problem: 1 when only the arm found one (class E)",
    "support_lost": "per test problem: 1 when only the base found one (class S)",
    "support_any": "per test problem: 1 when either found one (P + E + S)",
    "forward_kl": "per target test prompt: token-mean KL(base ‖ arm), exact over the vocabulary along the base's "
                  "samples (SPEC §7; behaviour)",
    "heldout_correct": "per held-out problem: greedy answer correct (1/0) (SPEC §7; behaviour)",
    "kernel_rescale_share": "per (arm, seed): rescale share of the eNTK change in the base's eigenbasis; gap-limited "
                            "or undefined kernels excluded (SPEC §6; kernel)",
    **{f"curv_margin_{link}_deg": f"per probe group: random-subspace baseline minus measured mean principal angle "
                                  f"between the top-r subspaces of {words} (SPEC §9; curvature)"
       for link, words in (("h_gn", "H and G"), ("gn_entk_weighted", "G and the loss-weighted logit eNTK"),
                           ("gn_entk_logits", "G and the plain logit eNTK"),
                           ("gn_entk_logprob", "G and the log-prob eNTK"))},
    **{f"curv_pp_log_ratio_{kind}": f"per probe group: log(pooled PP share of {words}' top-r directions in the "
                                    f"weights' top-k singular subspaces / its random baseline) (SPEC §5, §9; curvature)"
       for kind, words in (("gauss_newton", "G"), ("hessian", "H"), ("entk_logprob", "the log-prob eNTK"))},
    **{f"curv_rotation_{kind}_deg": f"per probe group: mean principal angle between the base's and the arm's top-r "
                                    f"{words} subspaces (SPEC §9; curvature)"
       for kind, words in (("gauss_newton", "Gauss-Newton"), ("hessian", "Hessian"))},
    "curv_log_update_norm": "per (arm, seed): log ‖Δθ‖₂ of the whole model, float32 masters (curvature)",
}

PUBLISHED = {
    "bf16_sparsity": {"source": "Path Not Taken, Table 1 (SPEC §8)", "sft": [0.006, 0.188], "grpo": [0.36, 0.92],
                      "unit": "bf16-unchanged fraction"},
    "rank": {"source": "Mukherjee et al., Table 2 (SPEC §8)", "numerical_rank_fraction": [0.992, 0.998]},
    "support_inside": {"source": "Invisible Leash, Table 1 (SPEC §8)", "srr": [0.93, 0.99]},
    "support_no_expansion": {"source": "Invisible Leash, Table 1 (SPEC §8)", "nscr": [-0.06, -0.01]},
    "forgetting_tracks_kl": {"source": "RL's Razor (SPEC §8)", "r_squared": {"ParityMNIST": 0.96, "LLMs": 0.71}},
}


@dataclass(frozen=True)
class Part:
    """One effect: ``effect(values)`` from the needed ``(metric, arm)`` arm values."""

    label: str
    needs: tuple[tuple[str, str], ...]
    effect: Callable[[Mapping], np.ndarray]
    direction: str
    unit: str


def diff(metric: str, a: str, b: str, direction: str, unit: str, label: str | None = None) -> Part:
    """``a − b`` of one metric."""
    return Part(label or f"{a} − {b} ({metric})", ((metric, a), (metric, b)),
                lambda v: v[(metric, a)] - v[(metric, b)], direction, unit)


def ratio_part(num: str, den: str, arm: str, offset: float, direction: str, unit: str, label: str) -> Part:
    """``num/den − offset`` of one arm (a ratio of two per-item means, e.g. SRR = P/(P+S))."""
    def effect(v):
        with np.errstate(invalid="ignore", divide="ignore"):
            return v[(num, arm)] / v[(den, arm)] - offset
    return Part(label, ((num, arm), (den, arm)), effect, direction, unit)


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    rule: str
    parts: tuple[Part, ...]
    arms: tuple[str, ...]  # the trained arms whose gates the claim needs
    published: dict | None = None
    secondary: tuple[Part, ...] = ()  # reported beside the verdict, never deciding it
    custom: Callable | None = field(default=None)  # (table, n_boot) -> list of (Part, Interval), replaces parts
    decide: Callable | None = field(default=None)  # (part verdicts) -> verdict, replaces combine()
    #: fewer seeds of a trained arm than this: inconclusive whatever the interval (few items, no seed level)
    min_seeds: int = 1


def _closer(metric: str, unit: str) -> tuple[Part, Part, Part]:
    """RFT closer to RL than to SFT (|rft − sft| − |rft − rl| > 0), and rft − rl, rft − sft."""
    needs = ((metric, RFT), (metric, RL), (metric, SFT))
    closer = Part(f"|rft − sft| − |rft − grpo| ({metric})", needs,
                  lambda v: np.abs(v[(metric, RFT)] - v[(metric, SFT)]) - np.abs(v[(metric, RFT)] - v[(metric, RL)]),
                  "positive", unit)
    return closer, diff(metric, RFT, RL, "positive", unit), diff(metric, RFT, SFT, "positive", unit)


RFT_METRICS = (("bf16_unchanged", "fraction"), ("principal_angle_deg", "degrees"), ("forward_kl", "nats/token"))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r = Σ(x−x̄)(y−ȳ) / √(Σ(x−x̄)² Σ(y−ȳ)²); NaN when either is constant."""
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else float("nan")


def forgetting_points(table: Table) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(forward KL, forgetting) per trained (arm, seed): forgetting = base − arm held-out accuracy."""
    base = table.get("heldout_correct", BASE)
    xs, ys, labels = [], [], []
    if base is None:
        return np.array([]), np.array([]), labels
    b = point(base)
    for arm in TRAINED:
        kl, hc = table.get("forward_kl", arm), table.get("heldout_correct", arm)
        if kl is None or hc is None:
            continue
        for s, (k, h) in enumerate(zip(seed_means(kl), seed_means(hc), strict=True)):
            if math.isfinite(k) and math.isfinite(h):
                xs.append(k)
                ys.append(b - h)
                labels.append(f"{arm}-seed{s}")
    return np.array(xs), np.array(ys), labels


def _correlation(table: Table, n_boot: int):
    """Pearson r(forward KL, forgetting) over (arm, seed) points; bootstrap over the points."""
    x, y, _ = forgetting_points(table)
    part = Part("Pearson r(forward KL, forgetting) over (arm, seed) points", (), lambda v: v, "positive", "r")
    if x.size < 4:
        return [(part, Interval(float("nan"), float("nan"), float("nan"), 0))]
    rng = np.random.default_rng(SEED)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    reps = np.array([_pearson(x[i], y[i]) for i in idx])
    reps = reps[np.isfinite(reps)]
    est = _pearson(x, y)
    if reps.size < n_boot // 2 or not math.isfinite(est):
        return [(part, Interval(est, float("nan"), float("nan"), int(reps.size)))]
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return [(part, Interval(est, float(lo), float(hi), int(reps.size)))]


#: every model the curvature claims look at: the base and each arm's final checkpoint
CURVATURE_MODELS = (BASE, SFT, RL, RANDOM, RFT)


def _over_models(metric: str, label: str, unit: str) -> Part:
    """The mean over :data:`CURVATURE_MODELS` of one metric (each model's mean over seeds and items), > 0."""
    needs = tuple((metric, m) for m in CURVATURE_MODELS)
    return Part(label, needs, lambda v: sum(v[k] for k in needs) / len(needs), "positive", unit)


def _per_model(metric: str, what: str, unit: str) -> tuple[Part, ...]:
    return tuple(Part(f"{m}: {what}", ((metric, m),), lambda v, m=m: v[(metric, m)], "positive", unit)
                 for m in CURVATURE_MODELS)


_MODELS_WORDS = "the base and every arm's final checkpoint (sft, grpo, grpo-random, rft; all seeds)"
_ONE_SEED = ("Needs ≥ 2 seeds per trained arm: with one seed the interval runs over the probe groups only and "
             "was decisive in 32–56% of simulated A/A draws (4 groups; 2 or 3 seeds: ≤ 2.5%).")
_NO_GATE = ("no training gate: the claim is about each model as it is, not about what its training achieved; "
            "no published value (SPEC §8 has none)")


def _rank_near_full(arm: str) -> Part:
    return Part(f"{arm}: numerical rank fraction − {NEAR_FULL_RANK}", (("numerical_rank_fraction", arm),),
                lambda v: v[("numerical_rank_fraction", arm)] - NEAR_FULL_RANK, "positive", "fraction")


CLAIMS: tuple[Claim, ...] = (
    Claim("bf16_sparsity", "bf16 update sparsity: RL > SFT",
          "grpo − sft bf16-unchanged fraction (parameter-weighted over tensors) > 0",
          (diff("bf16_unchanged", RL, SFT, "positive", "fraction"),), (RL, SFT), PUBLISHED["bf16_sparsity"]),
    Claim("principal_rotation", "principal rotation: RL < SFT",
          "grpo − sft mean top-k principal angle over 2-D tensors (gap-limited excluded) < 0; reported beside it: "
          "the same at matched ‖Δ‖_F along the saved checkpoints (its own claim, principal_rotation_matched)",
          (diff("principal_angle_deg", RL, SFT, "negative", "degrees"),), (RL, SFT)),
    Claim("principal_rotation_matched", "principal rotation at matched update size: RL < SFT",
          "grpo − sft principal angle per tensor, each arm interpolated along its saved float32 checkpoints to the "
          "smaller arm's ‖Δ‖_F for that tensor and seed, < 0",
          (diff("matched_angle_deg", RL, SFT, "negative", "degrees"),), (RL, SFT)),
    Claim("spectrum_drift", "spectrum drift: RL < SFT",
          "grpo − sft NSS over 2-D tensors (gap-limited excluded) < 0",
          (diff("nss", RL, SFT, "negative", "NSS"),), (RL, SFT)),
    Claim("spectrum_drift_matched", "spectrum drift at matched update size: RL < SFT",
          "grpo − sft NSS per tensor at matched ‖Δ‖_F along the saved checkpoints < 0",
          (diff("matched_nss", RL, SFT, "negative", "NSS"),), (RL, SFT)),
    Claim("update_rank", "RL's update has lower effective and stable rank than SFT's, both near full numerical rank",
          f"mean over 2-D tensors of log effective rank and of log stable rank of Δ: grpo − sft < 0 (both parts), and "
          f"each arm's mean numerical rank fraction − {NEAR_FULL_RANK} > 0",
          (diff("log_effective_rank", RL, SFT, "negative", "log ratio"),
           diff("log_stable_rank", RL, SFT, "negative", "log ratio"),
           _rank_near_full(RL), _rank_near_full(SFT)), (RL, SFT), PUBLISHED["rank"]),
    Claim("rl_raises_pass1", "RL raises pass@1",
          "grpo − base pass@1 over test problems > 0",
          (diff("pass_at_1", RL, BASE, "positive", "pass@1"),), (RL,)),
    Claim("crossover", "the base overtakes RL at large k (a crossover k* exists)",
          "both: grpo − base pass@1 > 0 and base − grpo pass@k at k = n > 0",
          (diff("pass_at_1", RL, BASE, "positive", "pass@1"),
           diff("pass_at_kmax", BASE, RL, "positive", "pass@k")), (RL,)),
    Claim("distillation_expands", "distillation (SFT) raises pass@k at large k above the base, where RL does not",
          "both: sft − base pass@k at k = n > 0 and sft − grpo pass@k at k = n > 0",
          (diff("pass_at_kmax", SFT, BASE, "positive", "pass@k"),
           diff("pass_at_kmax", SFT, RL, "positive", "pass@k")), (SFT, RL)),
    Claim("support_inside", "RL stays inside the base's support (SRR high)",
          f"grpo's SRR = P/(P+S) at k = n, minus {SRR_HIGH}, > 0",
          (ratio_part("support_kept", "support_base", RL, SRR_HIGH, "positive", "SRR", f"grpo SRR − {SRR_HIGH}"),),
          (RL,), PUBLISHED["support_inside"]),
    Claim("support_no_expansion", "RL does not expand the base's support (NSCR < 0)",
          "grpo's NSCR = (E − S)/(P + E + S) at k = n < 0 (a positive NSCR contradicts: RL expands it)",
          (Part("grpo NSCR", (("support_gained", RL), ("support_lost", RL), ("support_any", RL)),
                lambda v: (v[("support_gained", RL)] - v[("support_lost", RL)]) / v[("support_any", RL)],
                "negative", "NSCR"),), (RL,), PUBLISHED["support_no_expansion"]),
    Claim("kl_rl_below_sft", "forward KL: RL < SFT (RL's Razor)",
          "grpo − sft token-mean forward KL(base ‖ arm) over target prompts < 0",
          (diff("forward_kl", RL, SFT, "negative", "nats/token"),), (RL, SFT)),
    Claim("forgetting_rl_below_sft", "forgetting: RL < SFT (RL's Razor)",
          "held-out greedy accuracy grpo − sft > 0 (less forgetting)",
          (diff("heldout_correct", RL, SFT, "positive", "accuracy"),), (RL, SFT)),
    Claim("forgetting_tracks_kl", "forgetting tracks forward KL (RL's Razor)",
          "Pearson r(forward KL, forgetting) over all trained (arm, seed) points > 0; bootstrap over the points",
          (), TRAINED, PUBLISHED["forgetting_tracks_kl"], custom=_correlation),
    Claim("random_reward_raises_pass1", "a random reward raises pass@1 above the base (Spurious Rewards)",
          "grpo-random − base pass@1 > 0; secondary: how far it moves the model (forward KL), beside grpo's",
          (diff("pass_at_1", RANDOM, BASE, "positive", "pass@1"),), (RANDOM,),
          secondary=(Part("grpo-random forward KL", (("forward_kl", RANDOM),), lambda v: v[("forward_kl", RANDOM)],
                          "positive", "nats/token"),
                     Part("grpo forward KL", (("forward_kl", RL),), lambda v: v[("forward_kl", RL)],
                          "positive", "nats/token"))),
    Claim("kernel_rescale", "kernel rescale share: RL > SFT",
          "grpo − sft eNTK rescale share > 0 (gap-limited or undefined kernels excluded; bootstrap over seeds only)",
          (diff("kernel_rescale_share", RL, SFT, "positive", "share"),), (RL, SFT)),
    Claim("rft_like_rl", "RFT behaves like RL, not like SFT",
          "per metric (bf16 unchanged, principal angle, forward KL): |rft − sft| − |rft − grpo| > 0. Finding: like RL "
          "when every metric is closer to grpo; like SFT when every one is closer to sft; like neither when on every "
          "metric rft − grpo and rft − sft exclude 0 with one sign (rft beyond both). Holds: like RL; contradicted: "
          "like SFT or like neither",
          tuple(p for m, u in RFT_METRICS for p in _closer(m, u)), (RFT, RL, SFT)),
    Claim("curvature_agree", "Hessian, Gauss-Newton and eNTK top eigenvectors agree, well above the random baseline",
          f"verdict: H vs G margin = random-baseline minus measured mean principal angle between the top-r "
          f"subspaces (degrees), averaged over {_MODELS_WORDS}, > 0; the eNTK enters through G: the loss-weighted "
          f"logit eNTK's eigenvectors are G's by identity (its margin, beside the verdict, checks that), so H vs G "
          f"is the link that can fail. Beside it: each model's own H vs G margin, and G vs the weighted, plain "
          f"logit and log-prob eNTKs averaged over the models. Averaged rather than a part per model: the base is "
          f"one model on 4 probe groups (2 with --quick), whose items-only interval alone is decisive in ~25% of simulated null draws (a "
          f"conjunction of per-model parts would fail the A/A rule). {_ONE_SEED} {_NO_GATE}",
          (_over_models("curv_margin_h_gn_deg", "H vs G margin, mean over models", "degrees"),), (),
          secondary=(*_per_model("curv_margin_h_gn_deg", "H vs G margin", "degrees"),
                     *(_over_models(f"curv_margin_gn_{k}_deg", f"G vs {w} margin, mean over models", "degrees")
                       for k, w in (("entk_weighted", "weighted logit eNTK"), ("entk_logits", "plain logit eNTK"),
                                    ("entk_logprob", "log-prob eNTK")))), min_seeds=2),
    Claim("curvature_pp_capture", "the weights' principal subspaces capture the top curvature directions above baseline",
          f"verdict: log(pooled §5 PP share of G's top-r directions in each matrix's top-k singular subspaces / its "
          f"random baseline k²/mn, energy-weighted), averaged over {_MODELS_WORDS}, > 0. Beside it: each model's own, "
          f"and the same for H's and the log-prob eNTK's top directions averaged over the models. {_ONE_SEED} "
          f"{_NO_GATE}",
          (_over_models("curv_pp_log_ratio_gauss_newton", "G: log PP share / baseline, mean over models",
                        "log ratio"),), (),
          secondary=(*_per_model("curv_pp_log_ratio_gauss_newton", "G: log PP share / baseline", "log ratio"),
                     _over_models("curv_pp_log_ratio_hessian", "H: log PP share / baseline, mean over models",
                                  "log ratio"),
                     _over_models("curv_pp_log_ratio_entk_logprob",
                                  "log-prob eNTK: log PP share / baseline, mean over models", "log ratio")),
          min_seeds=2),
    Claim("curvature_rotation", "RL rotates the top Gauss-Newton/Hessian eigenvectors less than SFT",
          "grpo − sft mean principal angle between the base's and the arm's top-r Gauss-Newton subspaces (final "
          "checkpoints, per probe group) < 0; beside it: the same for the Hessian, and log ‖Δθ_grpo‖/‖Δθ_sft‖ (a "
          "smaller update rotates less). Not compared at matched update size: that needs the spectra at every saved "
          f"checkpoint (×n_checkpoints the cost), so read the verdict beside the ‖Δθ‖ ratio. {_ONE_SEED} No "
          f"published value (SPEC §8 has none)",
          (diff("curv_rotation_gauss_newton_deg", RL, SFT, "negative", "degrees"),), (RL, SFT),
          secondary=(diff("curv_rotation_hessian_deg", RL, SFT, "negative", "degrees"),
                     diff("curv_log_update_norm", RL, SFT, "negative", "log ratio",
                          "log ‖Δθ_grpo‖ − log ‖Δθ_sft‖ (seed means of the logs)")), min_seeds=2),
)


def build_table(items: Mapping, known: Mapping[str, str] = METRICS) -> Table:
    """A :class:`Table` from the ``items`` section (``None`` → NaN); metrics must be in ``known``."""
    table = Table()
    for metric, spec in items.items():
        if metric not in known:
            raise ValueError(f"unknown metric {metric!r}; expected some of {sorted(known)}")
        weights = spec.get("weights")
        for arm, per_seed in spec["arms"].items():
            if not per_seed or not per_seed[0]:
                continue
            values = np.array([[np.nan if v is None else float(v) for v in row] for row in per_seed], dtype=np.float64)
            table.add(metric, arm, values, spec.get("item_set", metric), weights)
    return table


def _round(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(f"{x:.6g}")


def _effect(part: Part, iv: Interval) -> dict:
    return {"label": part.label, "estimate": _round(iv.estimate), "ci": [_round(iv.lo), _round(iv.hi)],
            "unit": part.unit, "direction": part.direction, "verdict": verdict(iv, part.direction)}


def combine(verdicts: Sequence[str]) -> str:
    """All parts hold: holds; any part contradicted: contradicted; otherwise inconclusive."""
    if any(v == CONTRADICTED for v in verdicts):
        return CONTRADICTED
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    return INCONCLUSIVE


def _rft_finding(effects: list[dict]) -> tuple[str, str]:
    """(verdict, finding) of rft_like_rl from its parts (closer, rft − rl, rft − sft per metric)."""
    per_metric = [effects[i:i + 3] for i in range(0, len(effects), 3)]
    closer = [c["verdict"] for c, _, _ in per_metric]
    beyond = [r["verdict"] != INCONCLUSIVE and s["verdict"] != INCONCLUSIVE and r["verdict"] == s["verdict"]
              and (r["estimate"] > 0) == (s["estimate"] > 0) for _, r, s in per_metric]
    if all(beyond):
        return CONTRADICTED, "like neither"
    if all(v == HOLDS for v in closer):
        return HOLDS, "like RL"
    if all(v == CONTRADICTED for v in closer):
        return CONTRADICTED, "like SFT"
    return INCONCLUSIVE, "undecided (metrics disagree or overlap)"


def _numbers(table: Table, parts: Sequence[Part]) -> dict:
    out: dict = {}
    for part in parts:
        for metric, arm in part.needs:
            s = table.get(metric, arm)
            if s is not None:
                out.setdefault(metric, {})[arm] = [_round(v) for v in seed_means(s)]
    return out


def _excluded(items: Mapping, parts: Sequence[Part]) -> dict:
    out: dict = {}
    for part in parts:
        for metric, arm in part.needs:
            per_seed = (items.get(metric, {}).get("excluded") or {}).get(arm)
            if per_seed and any(per_seed):
                total: dict = {}
                for counts in per_seed:
                    for reason, n in (counts or {}).items():
                        total[reason] = total.get(reason, 0) + int(n)
                if total:
                    out.setdefault(metric, {})[arm] = {"per_seed": per_seed, "total": total}
    return out


def failed_gates(gates: Mapping | None, arms: Sequence[str]) -> list[str]:
    """``"<arm> seed <s>: <metric>"`` for every seed of the given arms whose gate did not pass."""
    out = []
    for arm in arms:
        for seed, g in sorted(((gates or {}).get(arm) or {}).items()):
            if not g.get("passed"):
                out.append(f"{arm} seed {seed}: {g.get('metric', 'gate')}")
    return out


def evaluate_claims(items: Mapping, gates: Mapping | None = None, n_boot: int = N_BOOT,
                    claims: Sequence[Claim] = CLAIMS, metrics: Mapping[str, str] = METRICS) -> list[dict]:
    """One record per claim (contract: docs/lab.md, SPEC §10); ``claims``/``metrics``: another
    registry in the same format (the lab's experiments, :mod:`deltalens.lab.experiments`)."""
    table = build_table(items, metrics)
    out = []
    for claim in claims:
        missing = sorted({f"{m} for {a}" for p in (*claim.parts, *claim.secondary) for m, a in p.needs
                          if table.get(m, a) is None})
        record = {"id": claim.id, "claim": claim.claim, "rule": claim.rule, "published": claim.published}
        note = []
        if claim.custom is not None:
            results = claim.custom(table, n_boot)
            effects = [_effect(p, iv) for p, iv in results]
            x, y, labels = forgetting_points(table)
            record["numbers"] = {"forward_kl": dict(zip(labels, map(_round, x))),
                                 "forgetting": dict(zip(labels, map(_round, y)))}
            if x.size < 4:
                note.append(f"{x.size} (arm, seed) points with KL and forgetting; the rule needs ≥ 4")
        elif missing and any(table.get(m, a) is None for p in claim.parts for m, a in p.needs):
            effects = [{"label": p.label, "estimate": None, "ci": [None, None], "unit": p.unit,
                        "direction": p.direction, "verdict": INCONCLUSIVE} for p in claim.parts]
            record["numbers"] = _numbers(table, (*claim.parts, *claim.secondary))
            note.append("not measured: " + ", ".join(missing))
        else:
            effects = [_effect(p, effect_interval(table, list(p.needs), p.effect, n_boot)) for p in claim.parts]
            record["numbers"] = _numbers(table, (*claim.parts, *claim.secondary))
        verdicts = [e["verdict"] for e in effects]
        if claim.id == "rft_like_rl" and effects and effects[0]["estimate"] is not None:
            v, finding = _rft_finding(effects)
            record["finding"] = finding
        elif claim.decide is not None:
            v = claim.decide(verdicts)
        else:
            v = combine(verdicts)
        failed = failed_gates(gates, claim.arms)
        if failed:
            v = INCONCLUSIVE
            note.append("training gate failed: " + "; ".join(failed))
        seeds = {a: table.get(m, a).values.shape[0] for p in claim.parts for m, a in p.needs
                 if table.get(m, a) is not None and a != BASE}
        if seeds and min(seeds.values()) < 2:
            note.append("one seed: the interval covers items only, not training randomness")
        if seeds and min(seeds.values()) < claim.min_seeds:
            v = INCONCLUSIVE
            note.append(f"the rule needs ≥ {claim.min_seeds} seeds per trained arm (see the rule)")
        if claim.secondary:
            record["secondary"] = [_effect(p, effect_interval(table, list(p.needs), p.effect, n_boot))
                                   for p in claim.secondary if all(table.get(m, a) is not None for m, a in p.needs)]
        first = effects[0] if effects else {"estimate": None, "ci": [None, None], "unit": None, "direction": "positive"}
        record.update(verdict=v, direction=first["direction"],
                      effect={"estimate": first["estimate"], "ci": first["ci"], "unit": first["unit"]},
                      parts=effects, excluded=_excluded(items, (*claim.parts, *claim.secondary)),
                      note="; ".join(note) or None)
        out.append(record)
    return out


def claims_document(items: Mapping, *, gates: Mapping | None, arms: Sequence[str], seeds: int, quick: bool,
                    n_boot: int = N_BOOT, claims: Sequence[Claim] = CLAIMS, metrics: Mapping[str, str] = METRICS) -> dict:
    """The ``claims.json`` object: ``{"arms", "seeds", "quick", "gates", "interval", "claims"}``."""
    return {"arms": list(arms), "seeds": int(seeds), "quick": bool(quick), "gates": dict(gates or {}),
            "interval": {"level": 0.95, "n_boot": n_boot, "seed": SEED,
                         "method": "two-level percentile bootstrap over training seeds (modified residuals, Student "
                                   "small-sample widening) and items shared across arms (deltalens.lab.bootstrap)"},
            "claims": evaluate_claims(items, gates, n_boot, claims, metrics)}
