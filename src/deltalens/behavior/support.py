"""Empirical support of base vs tuned model (SPEC §7; "The Invisible Leash", Wu et al. 2025).

Per problem, at a sampling budget k, each model either found a correct answer among its first
k samples or did not. The four classes: P (both), E (tuned only: expansion), S (base only:
shrinkage), O (neither).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from deltalens.errors import DeltalensError

ZETA = 0.05


def support_class(base_found: bool, tuned_found: bool) -> str:
    """P if both found a correct answer, E if only the tuned model, S if only the base, O if neither."""
    return {(True, True): "P", (False, True): "E", (True, False): "S", (False, False): "O"}[
        (bool(base_found), bool(tuned_found))]


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def support_metrics(counts: Mapping[str, int], k: int, zeta: float = ZETA) -> dict:
    """Support ratios from the P/E/S/O counts (SPEC §7).

    SRR = P/(P+S) (support retention), NDR = E/(P+E) (net discovery), SDS = harmonic mean of
    SRR and NDR, NSCR = (E−S)/(P+E+S) (net support change), ε = ln(1/ζ)/k: a correct answer
    whose per-sample probability is at least ε is found within k samples with probability
    ≥ 1−ζ, so "not found" means "probability below ε" at that confidence. Undefined ratios
    (zero denominators) are ``None``.
    """
    p, e, s = counts["P"], counts["E"], counts["S"]
    srr = _ratio(p, p + s)
    ndr = _ratio(e, p + e)
    sds = None if srr is None or ndr is None or srr + ndr == 0 else 2 * srr * ndr / (srr + ndr)
    return {"SRR": srr, "NDR": ndr, "SDS": sds, "NSCR": _ratio(e - s, p + e + s),
            "epsilon": math.log(1.0 / zeta) / k, "zeta": zeta}


def support_from_flags(base: Mapping[str, Sequence[bool]], tuned: Mapping[str, Sequence[bool]],
                       k: int | None = None, zeta: float = ZETA) -> dict:
    """Classify each problem at budget k (first k samples of each model) and count P/E/S/O.

    ``base``/``tuned``: problem id -> correctness of each sample in sample_index order. Both must
    cover the same problems, each with at least k samples (default k = smallest n of either).
    """
    if set(base) != set(tuned):
        missing = sorted(set(base) ^ set(tuned))[0]
        raise DeltalensError(f"problem {missing!r} has samples from only one of the two models")
    if not base:
        raise DeltalensError("support needs at least one problem")
    n_min = min(min(len(f) for f in base.values()), min(len(f) for f in tuned.values()))
    if n_min == 0:
        pid = next(p for p in base if not base[p] or not tuned[p])
        raise DeltalensError(f"problem {pid!r} has no samples")
    if k is None:
        k = n_min
    if not 1 <= k <= n_min:
        raise DeltalensError(f"budget k={k} is not in 1..{n_min} (the smallest number of samples of any problem)")
    counts = {"P": 0, "E": 0, "S": 0, "O": 0}
    problems = []
    for pid in base:
        b, t = any(base[pid][:k]), any(tuned[pid][:k])
        cls = support_class(b, t)
        counts[cls] += 1
        problems.append({"id": pid, "base_correct": b, "tuned_correct": t, "class": cls})
    return {"k": k, "counts": counts, **support_metrics(counts, k, zeta), "problems": problems}


def support(base_samples, tuned_samples, *, k: int | None = None, zeta: float = ZETA) -> dict:
    """Support comparison of two models' verified samples: the content of ``support.json``.

    Each argument is a samples file, a :class:`SampleSet` or a list of sample dicts.
    """
    from deltalens.behavior.formats import as_sample_sets, correctness
    from deltalens.behavior.sampling import recorded_fingerprint

    b, t = as_sample_sets([base_samples, tuned_samples])
    res = support_from_flags(correctness(b), correctness(t), k=k, zeta=zeta)
    return {"base": b.model, "tuned": t.model,
            "fingerprints": {"base": recorded_fingerprint(b), "tuned": recorded_fingerprint(t)}, **res,
            "method": f"a model 'finds' a problem when one of its first k={res['k']} samples is verified correct"}
