"""The seed's claims as rules in code: per-arm, per-seed numbers in, a verdict out.

Input is ``numbers[metric][arm] = [value per seed]`` (``"base"`` is an arm too; one value or
one per seed). Every claim reads named metrics (:data:`METRICS` says what each is and which
analysis provides it) and returns ``"holds"``, ``"does not hold"`` or ``"inconclusive"``.

The basic rule, :func:`compare`: A > B *holds* when every seed of A is above every seed of B
(min A > max B), *does not hold* when every seed of A is below every seed of B, and is
*inconclusive* otherwise: a difference inside the spread across seeds decides nothing. With a
single seed the spread is unknown and the point values decide (only an exact tie is
inconclusive); ``claims.json`` records the number of seeds so a reader can weigh that.
A metric that was not measured makes its claim inconclusive, with a note saying so.
Functions here are pure: no I/O. Thresholds are module constants, named and documented.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
RL, SFT, RANDOM, RFT, BASE = "grpo", "sft", "grpo-random", "rft", "base"

#: SRR at or above this counts as "high" (Invisible Leash report 0.93–0.99; SPEC §8).
SRR_HIGH = 0.9
#: "Forgetting tracks KL": Pearson r over all (arm, seed) points at least this (holds) ...
CORRELATION_HOLDS = 0.5
#: ... or at most this (does not hold); in between, inconclusive. Needs ≥ 3 points.
CORRELATION_FAILS = 0.0
#: "Random reward moves the model": its forward KL is at least this share of GRPO's ...
RANDOM_MOVES_SHARE = 0.1
#: ... and "does not move it" when below this share, on every seed.
RANDOM_STILL_SHARE = 0.01

METRICS: dict[str, str] = {
    "bf16_unchanged_fraction": "parameter-weighted bitwise-unchanged fraction of the bf16 release vs the base (SPEC §2; diff)",
    "principal_angle_mean_deg": "mean over 2-D tensors of the mean top-k principal angle, left and right (SPEC §4; spectral)",
    "nss": "mean over 2-D tensors of the normalised spectrum shift NSS (SPEC §4; spectral)",
    "pass_at_1": "pass@1 on the target task's test problems (SPEC §7; behaviour)",
    "pass_at_kmax": "pass@k at the largest k measured (n samples per problem) on the target task (SPEC §7; behaviour)",
    "srr": "support retention rate of the arm vs the base at the largest k (SPEC §7; behaviour)",
    "nscr": "net support change rate of the arm vs the base at the largest k (SPEC §7; behaviour)",
    "forward_kl": "token-mean forward KL(base ‖ arm) on the target task's prompts (SPEC §7; behaviour)",
    "forgetting": "base accuracy minus arm accuracy on the held-out tasks (SPEC §7; behaviour)",
    "kernel_rescale_share": "rescale share of the eNTK change in the base's eigenbasis (SPEC §6; kernel)",
}


def _values(numbers: Mapping, metric: str, arm: str) -> list[float] | None:
    vals = numbers.get(metric, {}).get(arm)
    if not vals or any(v is None or not math.isfinite(v) for v in vals):
        return None
    return [float(v) for v in vals]


def compare(a: Sequence[float], b: Sequence[float], direction: str) -> str:
    """Verdict on "A > B" (``direction="greater"``) or "A < B" (``"less"``) over seeds.

    Holds when the ranges are separated in the claimed direction (min A > max B for
    "greater"), does not hold when separated the other way, inconclusive when they overlap.
    """
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    if direction == "less":
        a, b = [-x for x in a], [-x for x in b]
    if min(a) > max(b):
        return HOLDS
    if max(a) < min(b):
        return DOES_NOT_HOLD
    return INCONCLUSIVE


def all_seeds(flags: Sequence[bool], *, fails: Sequence[bool] | None = None) -> str:
    """Holds when every seed satisfies the claim, does not hold when every seed fails it
    (``fails`` per seed; default: not ``flags``), inconclusive when seeds disagree."""
    fails = [not f for f in flags] if fails is None else list(fails)
    if flags and all(flags):
        return HOLDS
    if fails and all(fails):
        return DOES_NOT_HOLD
    return INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """All parts hold: holds; any part does not hold: does not hold; otherwise inconclusive."""
    if any(v == DOES_NOT_HOLD for v in verdicts):
        return DOES_NOT_HOLD
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    return INCONCLUSIVE


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation Σ(x−x̄)(y−ȳ) / √(Σ(x−x̄)² Σ(y−ȳ)²); NaN when either is constant."""
    n = len(x)
    if n != len(y) or n < 2:
        raise ValueError(f"pearson_r needs two sequences of equal length ≥ 2, got {len(x)} and {len(y)}")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


@dataclass(frozen=True)
class Claim:
    """One seed claim: what it says, the rule in words, and the rule in code."""

    id: str
    claim: str
    rule: str
    metric: str  # the primary metric reported under "numbers"
    arms: tuple[str, ...]
    decide: Callable[[Mapping], tuple[str, str | None]]  # numbers -> (verdict, note)
    secondary: tuple[str, ...] = ()


def _missing(metric: str, arms: Sequence[str]) -> str:
    return f"not measured: {metric} for {', '.join(arms)}"


def _pairwise(metric: str, a: str, b: str, direction: str):
    def decide(numbers):
        va, vb = _values(numbers, metric, a), _values(numbers, metric, b)
        if va is None or vb is None:
            return INCONCLUSIVE, _missing(metric, [a, b])
        return compare(va, vb, direction), None

    return decide


def _support(numbers):
    srr, nscr = _values(numbers, "srr", RL), _values(numbers, "nscr", RL)
    if srr is None or nscr is None or len(srr) != len(nscr):
        return INCONCLUSIVE, _missing("srr/nscr", [RL])
    ok = [s >= SRR_HIGH and n <= 0 for s, n in zip(srr, nscr, strict=True)]
    return all_seeds(ok), None


def _kl_forgetting(numbers):
    kl_rl, kl_sft = _values(numbers, "forward_kl", RL), _values(numbers, "forward_kl", SFT)
    if kl_rl is None or kl_sft is None:
        return INCONCLUSIVE, _missing("forward_kl", [RL, SFT])
    kl_part = compare(kl_rl, kl_sft, "less")
    xs, ys = [], []
    for arm in numbers.get("forward_kl", {}):
        kl, fg = _values(numbers, "forward_kl", arm), _values(numbers, "forgetting", arm)
        if arm != BASE and kl is not None and fg is not None and len(kl) == len(fg):
            xs.extend(kl)
            ys.extend(fg)
    if len(xs) < 3:
        return combine([kl_part, INCONCLUSIVE]), "fewer than 3 (arm, seed) points with both KL and forgetting"
    r = pearson_r(xs, ys)
    if math.isnan(r):
        corr_part, note = INCONCLUSIVE, "KL or forgetting constant across arms: correlation undefined"
    else:
        corr_part = HOLDS if r >= CORRELATION_HOLDS else DOES_NOT_HOLD if r <= CORRELATION_FAILS else INCONCLUSIVE
        note = f"Pearson r(forward_kl, forgetting) = {r:.3f} over {len(xs)} (arm, seed) points"
    return combine([kl_part, corr_part]), note


def _random_moves(numbers):
    rnd, rl = _values(numbers, "forward_kl", RANDOM), _values(numbers, "forward_kl", RL)
    if rnd is None or rl is None or len(rnd) != len(rl):
        return INCONCLUSIVE, _missing("forward_kl", [RANDOM, RL])
    moves = [r >= RANDOM_MOVES_SHARE * g for r, g in zip(rnd, rl, strict=True)]
    still = [r < RANDOM_STILL_SHARE * g for r, g in zip(rnd, rl, strict=True)]
    return all_seeds(moves, fails=still), None


RFT_METRICS = ("bf16_unchanged_fraction", "principal_angle_mean_deg", "forward_kl")


def _rft_like_rl(numbers):
    verdicts, missing = [], []
    for metric in RFT_METRICS:
        r, g, s = (_values(numbers, metric, arm) for arm in (RFT, RL, SFT))
        if r is None or g is None or s is None or not len(r) == len(g) == len(s):
            missing.append(metric)
            continue
        closer_rl = [abs(x - y) < abs(x - z) for x, y, z in zip(r, g, s, strict=True)]
        closer_sft = [abs(x - z) < abs(x - y) for x, y, z in zip(r, g, s, strict=True)]
        verdicts.append(all_seeds(closer_rl, fails=closer_sft))
    if not verdicts:
        return INCONCLUSIVE, _missing("/".join(RFT_METRICS), [RFT, RL, SFT])
    if all(v == HOLDS for v in verdicts) and not missing:
        return HOLDS, None
    if all(v == DOES_NOT_HOLD for v in verdicts) and not missing:
        return DOES_NOT_HOLD, None
    return INCONCLUSIVE, f"per metric: {dict(zip([m for m in RFT_METRICS if m not in missing], verdicts))}" + (
        f"; not measured: {', '.join(missing)}" if missing else ""
    )


CLAIMS: tuple[Claim, ...] = (
    Claim("bf16_sparsity", "bf16 update sparsity: RL > SFT",
          "grpo's bf16-unchanged fraction above sft's on every seed (ranges over seeds separated)",
          "bf16_unchanged_fraction", (RL, SFT), _pairwise("bf16_unchanged_fraction", RL, SFT, "greater")),
    Claim("principal_rotation", "principal rotation: RL < SFT",
          "grpo's mean top-k principal angle below sft's (ranges over seeds separated)",
          "principal_angle_mean_deg", (RL, SFT), _pairwise("principal_angle_mean_deg", RL, SFT, "less")),
    Claim("spectrum_drift", "spectrum drift: RL < SFT",
          "grpo's NSS below sft's (ranges over seeds separated)",
          "nss", (RL, SFT), _pairwise("nss", RL, SFT, "less")),
    Claim("rl_raises_pass1", "RL raises pass@1",
          "grpo's pass@1 above the base's (ranges over seeds separated)",
          "pass_at_1", (RL, BASE), _pairwise("pass_at_1", RL, BASE, "greater")),
    Claim("base_overtakes_rl", "the base overtakes RL at large k",
          "the base's pass@k at the largest k above grpo's (ranges over seeds separated)",
          "pass_at_kmax", (BASE, RL), _pairwise("pass_at_kmax", BASE, RL, "greater")),
    Claim("rl_keeps_support", "RL keeps the base's support (SRR high, NSCR ≤ 0)",
          f"on every seed grpo's SRR ≥ {SRR_HIGH} and NSCR ≤ 0; does not hold when every seed fails that",
          "srr", (RL,), _support, ("nscr",)),
    Claim("kl_forgetting", "forward KL: RL < SFT, and forgetting tracks KL",
          f"grpo's forward KL below sft's (ranges separated) and Pearson r(forward KL, forgetting) over all "
          f"(arm, seed) points ≥ {CORRELATION_HOLDS} (≤ {CORRELATION_FAILS}: does not hold); both parts must hold",
          "forward_kl", (RL, SFT, RANDOM, RFT), _kl_forgetting, ("forgetting",)),
    Claim("random_reward_moves", "a random reward moves the model anyway",
          f"on every seed grpo-random's forward KL ≥ {RANDOM_MOVES_SHARE} × grpo's; does not hold when on every "
          f"seed it is < {RANDOM_STILL_SHARE} × grpo's",
          "forward_kl", (RANDOM, RL), _random_moves),
    Claim("kernel_rescale", "kernel rescale share: RL > SFT",
          "grpo's eNTK rescale share above sft's (ranges over seeds separated)",
          "kernel_rescale_share", (RL, SFT), _pairwise("kernel_rescale_share", RL, SFT, "greater")),
    Claim("rft_like_rl", "rft behaves like RL, not like SFT",
          f"for each of {', '.join(RFT_METRICS)}, rft's value is closer to grpo's than to sft's on every seed; "
          "holds when all do, does not hold when all are closer to sft",
          "bf16_unchanged_fraction", (RFT, RL, SFT), _rft_like_rl, ("principal_angle_mean_deg", "forward_kl")),
)


def evaluate_claims(numbers: Mapping[str, Mapping[str, Sequence[float]]]) -> list[dict]:
    """One record per claim: ``{id, claim, verdict, rule, numbers, metric, note}`` (+ ``secondary``)."""
    unknown = set(numbers) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; expected some of {sorted(METRICS)}")
    out = []
    for claim in CLAIMS:
        verdict, note = claim.decide(numbers)
        record = {
            "id": claim.id,
            "claim": claim.claim,
            "verdict": verdict,
            "rule": claim.rule,
            "numbers": {arm: list(numbers.get(claim.metric, {}).get(arm, [])) for arm in claim.arms},
            "metric": claim.metric,
            "note": note,
        }
        if claim.secondary:
            record["secondary"] = {
                m: {arm: list(v) for arm, v in numbers.get(m, {}).items()} for m in claim.secondary
            }
        out.append(record)
    return out


def claims_document(numbers, *, arms: Sequence[str], seeds: int, quick: bool) -> dict:
    """The ``claims.json`` object: ``{"arms", "seeds", "quick", "claims"}`` (contracts)."""
    return {"arms": list(arms), "seeds": int(seeds), "quick": bool(quick), "claims": evaluate_claims(numbers)}
