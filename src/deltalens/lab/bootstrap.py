"""The lab's one interval: a two-level bootstrap over training seeds and items (SPEC §10).

An *arm* contributes, per metric, a matrix ``x[seed, item]`` (items: test problems, tensors,
probes; the same items in the same order for every arm of that metric, so arms are compared
on paired items). Excluded values (gap-limited angles, unresolved ratios) are NaN and are left
out of every mean. One replicate of the bootstrap

1. draws items with replacement, once per *item set* and shared by every arm and every metric
   of that set (the problems of pass@1 and pass@64 are resampled together, paired across arms);
2. draws each trained arm's seeds with replacement, once per arm and shared by all metrics of
   that arm (a seed is one trained model); before drawing, each seed's deviation from the
   arm's seed mean is scaled by √(s/(s−1)) (s seeds) so that the resampled seed-to-seed
   variance is the unbiased one (Davison & Hinkley 1997, §3.3, "modified residuals"), and the
   seed level of the interval then widened by t_{0.975, s−1}/z_{0.975} (a small-sample
   Student correction: with 3 seeds the bootstrap alone would be far too sure of itself);
3. computes each arm's value (per seed: the weighted mean over the drawn items of the non-NaN
   values; then the mean over the drawn seeds), then the claim's effect from those values.

The 95% interval is the 2.5 and 97.5 percentiles of the effect over the replicates, around the
point estimate (the same function on all items and seeds). Everything is numpy, seeded and
deterministic. An arm with one seed (the base; a one-seed run) has no seed level: its
interval covers items only, and the claim says so.
"""

from __future__ import annotations

import warnings

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

N_BOOT = 2000
LEVEL = 0.95
SEED = 20250514


@dataclass
class Series:
    """One metric of one arm: ``values[seed, item]`` (NaN = excluded) and optional item weights."""

    values: np.ndarray
    items: str  # the item set's name: metrics sharing it are resampled together
    weights: np.ndarray | None = None

    def __post_init__(self):
        self.values = np.atleast_2d(np.asarray(self.values, dtype=np.float64))
        if self.weights is not None:
            self.weights = np.asarray(self.weights, dtype=np.float64)
            if self.weights.shape != (self.values.shape[1],):
                raise ValueError(f"weights must have one entry per item ({self.values.shape[1]}), "
                                 f"got shape {self.weights.shape}")


@dataclass
class Table:
    """``series[(metric, arm)]``: what a set of claims reads."""

    series: dict[tuple[str, str], Series] = field(default_factory=dict)

    def add(self, metric: str, arm: str, values, items: str, weights=None) -> None:
        self.series[(metric, arm)] = Series(values, items, weights)

    def get(self, metric: str, arm: str) -> Series | None:
        return self.series.get((metric, arm))


def seed_means(s: Series) -> np.ndarray:
    """Per seed: the weighted mean over items of the non-NaN values (NaN when none is left)."""
    w = np.ones(s.values.shape[1]) if s.weights is None else s.weights
    ok = np.isfinite(s.values)
    num = np.where(ok, s.values, 0.0) @ w
    den = ok.astype(np.float64) @ w
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def point(s: Series) -> float:
    """The arm's value: the mean over seeds of :func:`seed_means` (seeds with nothing left are skipped)."""
    m = seed_means(s)
    return float(np.nanmean(m)) if np.isfinite(m).any() else float("nan")


def seed_inflation(n_seeds: int) -> float:
    """√(s/(s−1)) · t_{0.975,s−1}/z_{0.975}: how far a seed's deviation from its arm's mean is
    stretched before seeds are resampled (1 for one seed: nothing to resample)."""
    if n_seeds < 2:
        return 1.0
    z = stats.norm.ppf(0.5 + LEVEL / 2)
    return float(np.sqrt(n_seeds / (n_seeds - 1)) * stats.t.ppf(0.5 + LEVEL / 2, n_seeds - 1) / z)


def replicates(table: Table, needed: list[tuple[str, str]], n_boot: int = N_BOOT,
               seed: int = SEED) -> dict[tuple[str, str], np.ndarray]:
    """``{(metric, arm): array (n_boot,)}`` of each needed arm value over the replicates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate that drew only excluded items stays NaN
        return _replicates(table, needed, n_boot, seed)


def _replicates(table: Table, needed: list[tuple[str, str]], n_boot: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    item_sets: dict[str, int] = {}
    arm_seeds: dict[str, int] = {}
    for key in needed:
        s = table.series[key]
        n_items = s.values.shape[1]
        if item_sets.setdefault(s.items, n_items) != n_items:
            raise ValueError(f"item set {s.items!r} has {item_sets[s.items]} and {n_items} items")
        n_seeds = s.values.shape[0]
        if arm_seeds.setdefault(key[1], n_seeds) != n_seeds:
            raise ValueError(f"arm {key[1]!r} has {arm_seeds[key[1]]} and {n_seeds} seeds")
    # draws in a fixed order (sorted names) so that the result does not depend on dict order
    item_draws = {name: rng.integers(0, n, size=(n_boot, n)) for name, n in sorted(item_sets.items())}
    seed_draws = {arm: rng.integers(0, n, size=(n_boot, n)) for arm, n in sorted(arm_seeds.items())}
    out = {}
    for key in needed:
        s = table.series[key]
        idx = item_draws[s.items]  # (B, n_items)
        w = np.ones(s.values.shape[1]) if s.weights is None else s.weights
        x = s.values[:, idx]  # (seeds, B, items)
        ok = np.isfinite(x)
        num = (np.where(ok, x, 0.0) * w[idx]).sum(-1)
        den = (ok * w[idx]).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_seed = num / den  # (seeds, B)
        n_seeds = per_seed.shape[0]
        if n_seeds > 1:
            centre = np.nanmean(per_seed, axis=0, keepdims=True)
            per_seed = centre + seed_inflation(n_seeds) * (per_seed - centre)
            draw = seed_draws[key[1]]  # (B, seeds)
            picked = np.take_along_axis(per_seed.T, draw, axis=1)  # (B, seeds)
        else:
            picked = per_seed.T
        out[key] = np.nanmean(picked, axis=1)
    return out


@dataclass(frozen=True)
class Interval:
    estimate: float
    lo: float
    hi: float
    n_boot: int


def effect_interval(table: Table, needed: list[tuple[str, str]],
                    effect: Callable[[Mapping[tuple[str, str], np.ndarray]], np.ndarray],
                    n_boot: int = N_BOOT, seed: int = SEED) -> Interval:
    """Point estimate and 95% percentile interval of ``effect(values)`` where ``values`` maps
    each needed ``(metric, arm)`` to its arm value (arrays: one entry per replicate)."""
    est = float(np.asarray(effect({k: np.array([point(table.series[k])]) for k in needed}))[0])
    reps = np.asarray(effect(replicates(table, needed, n_boot, seed)), dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if not np.isfinite(est) or reps.size < n_boot // 2:
        return Interval(est, float("nan"), float("nan"), int(reps.size))
    lo, hi = np.percentile(reps, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return Interval(est, float(lo), float(hi), int(reps.size))


def verdict(interval: Interval, direction: str) -> str:
    """holds / contradicted / inconclusive from the interval and the claimed sign (SPEC §10)."""
    if direction not in ("positive", "negative"):
        raise ValueError(f"direction must be 'positive' or 'negative', got {direction!r}")
    lo, hi = interval.lo, interval.hi
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "inconclusive"
    if lo > 0:
        return "holds" if direction == "positive" else "contradicted"
    if hi < 0:
        return "holds" if direction == "negative" else "contradicted"
    return "inconclusive"
