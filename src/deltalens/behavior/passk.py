"""pass@k (SPEC §7; Chen et al. 2021, Yue et al. 2025), bootstrap intervals and crossover.

Pure functions: correctness flags in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from deltalens.errors import DeltalensError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct among ``n`` samples (SPEC §7).

    pass@k = 1 − C(n−c, k)/C(n, k) = 1 − Π_{i=n−c+1..n} (1 − k/i), and 1.0 when n − c < k.
    Computed as −expm1(Σ log1p(−k/i)) with an exact-rounded sum (``math.fsum``): no binomial
    is ever formed (no overflow for any n) and a value near 0 keeps its relative accuracy
    (no cancellation in 1 − product).
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError("pass_at_k takes integers n, c, k")
    if n < 1 or k < 1 or k > n or c < 0 or c > n:
        raise DeltalensError(f"pass@k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    if c == 0:
        return 0.0
    log_fail = math.fsum(math.log1p(-k / i) for i in range(n - c + 1, n + 1))
    return -math.expm1(log_fail)


def k_grid(n_min: int) -> list[int]:
    """k = 1, 2, 4, … up to ``n_min``, plus ``n_min`` itself when it is not a power of two."""
    if n_min < 1:
        raise DeltalensError("pass@k needs at least one sample per problem")
    ks = [1 << e for e in range(n_min.bit_length()) if (1 << e) <= n_min]
    if ks[-1] != n_min:
        ks.append(n_min)
    return ks


def per_problem_pass_at_k(flags: Mapping[str, Sequence[bool]], ks: Sequence[int]) -> np.ndarray:
    """Matrix [problem, k] of pass@k (problems in the mapping's order)."""
    out = np.empty((len(flags), len(ks)), dtype=np.float64)
    for row, (pid, f) in enumerate(flags.items()):
        n, c = len(f), int(sum(bool(x) for x in f))
        if n == 0:
            raise DeltalensError(f"problem {pid!r} has no samples")
        for col, k in enumerate(ks):
            out[row, col] = pass_at_k(n, c, k)
    return out


def bootstrap_ci(per_problem: np.ndarray, *, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap over problems of the mean of each column of ``per_problem``.

    Resamples the P problems with replacement ``n_boot`` times (seeded) and returns the
    (1−level)/2 and (1+level)/2 quantiles of the resampled means, per column.
    """
    p = per_problem.shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, p, size=(n_boot, p))
    means = per_problem[idx].mean(axis=1)  # [n_boot, K]
    alpha = (1.0 - level) / 2.0
    return np.quantile(means, alpha, axis=0), np.quantile(means, 1.0 - alpha, axis=0)


def pass_at_k_curve(flags: Mapping[str, Sequence[bool]], *, ks: Sequence[int] | None = None,
                    n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean pass@k over problems with bootstrap CIs, for k ≤ the smallest per-problem n.

    ``flags``: problem id -> correctness of each sample. Returns
    ``{"k", "pass_at_k", "ci_low", "ci_high", "n_problems", "n_min"}``.
    """
    if not flags:
        raise DeltalensError("pass@k needs at least one problem")
    empty = [pid for pid, f in flags.items() if len(f) == 0]
    if empty:
        raise DeltalensError(f"problem {empty[0]!r} has no samples")
    n_min = min(len(f) for f in flags.values())
    if ks is None:
        ks = k_grid(n_min)
    else:
        ks = sorted(set(int(k) for k in ks))
        bad = [k for k in ks if k < 1 or k > n_min]
        if bad:
            raise DeltalensError(f"k={bad[0]} is not in 1..{n_min} (the smallest number of samples of any problem)")
    mat = per_problem_pass_at_k(flags, ks)
    lo, hi = bootstrap_ci(mat, n_boot=n_boot, level=level, seed=seed)
    return {"k": list(ks), "pass_at_k": mat.mean(axis=0).tolist(), "ci_low": lo.tolist(),
            "ci_high": hi.tolist(), "n_problems": len(flags), "n_min": n_min}


def crossover(base: Mapping, tuned: Mapping) -> tuple[int | None, str | None]:
    """``(k*, reason)``: the k at which the base model's pass@k overtakes the tuned model's.

    Both curves are dicts with ``k`` and ``pass_at_k``; only their common k are compared.
    k* is the smallest common k such that base > tuned at k and at every larger common k, and
    base ≤ tuned at the common k just below it: the curves cross there. ``k*`` is ``None`` with
    a one-line ``reason`` when they do not cross: the base is not ahead at the largest common
    k, or it is ahead at every common k (it leads throughout; nothing is overtaken).
    """
    b = dict(zip(base["k"], base["pass_at_k"]))
    t = dict(zip(tuned["k"], tuned["pass_at_k"]))
    common = sorted(set(b) & set(t))
    if not common:
        return None, "no common k"
    if not b[common[-1]] > t[common[-1]]:
        return None, f"the base is not ahead at the largest common k ({common[-1]})"
    k_star = common[-1]
    for k in reversed(common[:-1]):
        if b[k] > t[k]:
            k_star = k
        else:
            return k_star, None
    return None, f"the base is ahead at every common k ({common[0]}..{common[-1]}): the curves do not cross"


def crossover_k(base: Mapping, tuned: Mapping) -> int | None:
    """k* of :func:`crossover` (``None`` when the curves do not cross)."""
    return crossover(base, tuned)[0]


def passk(samples, *, problems=None, ks: Sequence[int] | None = None, base: str | None = None,
          tuned: str | None = None, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """pass@k curves of several models: the content of ``passk.json`` (SPEC §7).

    ``samples``: a list of samples files, :class:`SampleSet` objects or lists of sample dicts
    (verified: each sample has a boolean ``correct``), one model each. With ``problems``,
    every problem must have samples in every file. The crossover compares ``base`` (default:
    the first model) with ``tuned`` (default: the second), on the problems both answered.
    """
    from deltalens.behavior.formats import as_problems, as_sample_sets, correctness

    sets = as_sample_sets(samples)
    names = [s.model for s in sets]
    flags = {s.model: correctness(s) for s in sets}
    if problems is not None:
        for prob in as_problems(problems, need_answer=False):
            for s in sets:
                if prob.id not in flags[s.model]:
                    raise DeltalensError(f"{s.source}: problem {prob.id!r} has no samples")
    models = {name: pass_at_k_curve(flags[name], ks=ks, n_boot=n_boot, level=level, seed=seed)
              for name in names}
    result = {"models": models, "crossover": None,
              "method": {"estimator": "unbiased pass@k, 1 - C(n-c,k)/C(n,k), exact in float64",
                         "ci": f"percentile bootstrap over problems, {n_boot} resamples, level {level}, seed {seed}"}}
    if len(names) >= 2 or base is not None or tuned is not None:
        base = base or names[0]
        tuned = tuned or next((n for n in names if n != base), None)
        for role, name in (("base", base), ("tuned", tuned)):
            if name not in flags:
                raise DeltalensError(f"--{role} {name!r} is not one of the models: {', '.join(names)}")
        if base == tuned:
            raise DeltalensError("base and tuned must be different models")
        if set(flags[base]) != set(flags[tuned]):
            missing = sorted(set(flags[base]) ^ set(flags[tuned]))[0]
            raise DeltalensError(f"problem {missing!r} has samples from only one of {base!r} and {tuned!r}")
        k_star, reason = crossover(models[base], models[tuned])
        from deltalens.behavior.sampling import recorded_fingerprint

        by_name = {s.model: s for s in sets}
        result["crossover"] = {"base": base, "tuned": tuned, "k": k_star,
                               "fingerprints": {"base": recorded_fingerprint(by_name[base]),
                                                "tuned": recorded_fingerprint(by_name[tuned])},
                               "rule": "smallest common k from which base pass@k > tuned pass@k at every larger k, "
                                       "with base <= tuned at the common k below it (the curves cross)"}
        if reason is not None:
            result["crossover"]["reason"] = reason
    return result


def plot_passk(result: Mapping, path) -> None:
    """Plot each model's pass@k curve with its interval on a log2-k axis (PNG/PDF/SVG by suffix)."""
    import io
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deltalens.results import write_bytes

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in result["models"].items():
        line, = ax.plot(m["k"], m["pass_at_k"], marker="o", label=f"{name} (P={m['n_problems']})")
        ax.fill_between(m["k"], m["ci_low"], m["ci_high"], color=line.get_color(), alpha=0.2)
    cross = result.get("crossover") or {}
    if cross.get("k") is not None:
        ax.axvline(cross["k"], color="grey", linestyle="--", label=f"crossover k*={cross['k']}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (log scale)")
    ax.set_ylabel("pass@k")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    write_bytes(path, buf.getvalue())
