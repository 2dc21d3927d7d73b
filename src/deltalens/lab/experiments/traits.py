"""A trait suite of T = 10 behavioural losses on the tiny base, and what the experiments measure on it.

A trait is f_t(θ) = mean over its lines of the completion's mean token NLL (SPEC §6, "trait
space"; :mod:`deltalens.kernel.traits`), so a trait *falls* when the model moves towards that
behaviour. Lines come from the lab's test problems (never seen in pre-training or training):

======================  =========  =================================================================
trait                   task       completion scored after the prompt
======================  =========  =================================================================
``add``                 target     the correct sum in the base's format (``"123+45="`` → ``"168"``)
``add_style``           target     the correct sum in the teacher's style (``"861>168"``)
``add_wrong``           target     the sum with one digit replaced (the pre-training noise)
``copy``                held out   the word (``"c:abcd="`` → ``"abcd"``)
``copy_wrong``          held out   the word reversed (the other task's answer)
``reverse``             held out   the word reversed (``"r:abcd="`` → ``"dcba"``)
``reverse_wrong``       held out   the word itself
``max``                 held out   the larger operand (``"m:312,97="`` → ``"312"``)
``max_wrong``           held out   the smaller operand
``favourite``           held out   the letter ``g`` after a free-choice prompt (``"p:abcd="``)
======================  =========  =================================================================

``*_wrong`` traits are the tiny world's "misaligned" behaviours (a wrong answer the base can
write); ``favourite`` is a preference no task rewards (the base never saw ``p:`` prompts). With
T = 10 the trait kernel K = A J Jᵀ Aᵀ (10×10) has room to rotate: angles use r = T/2 = 5.

What is measured for a base θ0 and a tuned θ1 (:func:`measure`):

- per line, the measured change ℓ_i(θ1) − ℓ_i(θ0), and per trait the first-order (Lande) prediction
  Δf ≈ A·J(θ0)·Δθ (:func:`deltalens.kernel.traits.trait_changes`);
- K0 and K1 (T×T) and their comparison (:func:`deltalens.kernel.compare.compare_kernels`: top-r
  angles with their gap, rescale share of E = U0ᵀ(K1 − K0)U0);
- the spectrum of the change ΔK = K1 − K0 (:func:`change_spectrum`).

The Lande score of one update is 1 − Σ_t(m_t − p_t)²/Σ_t m_t² (m measured, p predicted: 1 when the
first-order picture is exact, 0 when it does no better than predicting no change); the experiments
put Σ's terms per trait into their items (``lande_sq_error``, ``lande_sq_measured``) so
:func:`lande_part` gets its interval from the lab's bootstrap over traits and seeds.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from deltalens.lab.claims import Part

FAVOURITE = "g"
TARGET_TRAITS = ("add", "add_style", "add_wrong")
HELDOUT_TRAITS = ("copy", "copy_wrong", "reverse", "reverse_wrong", "max", "max_wrong", "favourite")
TRAITS = (*TARGET_TRAITS, *HELDOUT_TRAITS)

DESCRIPTIONS = {
    "add": "add prompts: NLL of the correct sum in the base's format",
    "add_style": "add prompts: NLL of the correct sum in the teacher's style (reversed digits, '>', the sum)",
    "add_wrong": "add prompts: NLL of the sum with one digit replaced",
    "copy": "copy prompts: NLL of the word",
    "copy_wrong": "copy prompts: NLL of the word reversed",
    "reverse": "reverse prompts: NLL of the word reversed",
    "reverse_wrong": "reverse prompts: NLL of the word itself",
    "max": "max prompts: NLL of the larger operand",
    "max_wrong": "max prompts: NLL of the smaller operand",
    "favourite": f"free-choice prompts 'p:<word>=': NLL of the letter {FAVOURITE!r}",
}


def favourite_prompt(word: str) -> str:
    """The free-choice prompt of one word: ``"p:<word>="``."""
    return f"p:{word}="


def _word(problem: dict) -> str:
    return problem["prompt"].split(":", 1)[1].rstrip("=")


def _operands(problem: dict) -> tuple[int, int]:
    a, b = _word(problem).split(",")
    return int(a), int(b)


def suite_lines(target: Sequence[dict], heldout: Sequence[dict], per_trait: int) -> list[dict]:
    """``per_trait`` lines ``{task: trait, prompt, completion, id}`` of every trait in :data:`TRAITS`
    from the lab's target and held-out test problems (palindromes and equal operands skipped where
    the wrong answer would equal the right one). Raises ``ValueError`` when a trait runs short."""
    from deltalens.lab.pretrain import corrupt_digit
    from deltalens.lab.tasks import teacher_completion

    by_task: dict[str, list[dict]] = {}
    for p in [*target, *heldout]:
        by_task.setdefault(p["task"], []).append(p)

    def take(task: str, keep=lambda p: True) -> list[dict]:
        chosen = [p for p in by_task.get(task, []) if keep(p)][:per_trait]
        if len(chosen) < per_trait:
            raise ValueError(f"trait suite: {task!r} has {len(chosen)} usable test problems, needs {per_trait}")
        return chosen

    rows: list[dict] = []

    def put(trait: str, problems: list[dict], completion) -> None:
        rows.extend({"task": trait, "id": f"{trait}/{p['id']}", "prompt": p["prompt"], "completion": completion(p)}
                    for p in problems)

    add = take("add")
    put("add", add, lambda p: p["answer"])
    put("add_style", add, teacher_completion)
    put("add_wrong", add, lambda p: corrupt_digit(p["answer"], random.Random(f"trait/add_wrong/{p['id']}")))
    not_palindrome = lambda p: p["answer"] != p["answer"][::-1]  # noqa: E731
    copy, reverse = take("copy", not_palindrome), take("reverse", not_palindrome)
    put("copy", copy, lambda p: p["answer"])
    put("copy_wrong", copy, lambda p: p["answer"][::-1])
    put("reverse", reverse, lambda p: p["answer"])
    put("reverse_wrong", reverse, lambda p: p["answer"][::-1])
    unequal = take("max", lambda p: len(set(_operands(p))) == 2)
    put("max", unequal, lambda p: p["answer"])
    put("max_wrong", unequal, lambda p: str(min(_operands(p))))
    rows.extend({"task": "favourite", "id": f"favourite/{p['id']}", "prompt": favourite_prompt(_word(p)),
                 "completion": FAVOURITE} for p in copy)
    return rows


@dataclass
class TraitProbe:
    """An encoded trait suite: the line batch, trait names (in :data:`TRAITS` order), each line's
    trait index, the averaging matrix A (T×N) and the line ids."""

    batch: dict
    names: list[str]
    index: list[int]
    averaging: object  # torch.Tensor (T×N, float64)
    ids: list[str]

    @classmethod
    def build(cls, tokenizer, lines: Sequence[dict]) -> TraitProbe:
        from deltalens.kernel import averaging_matrix, encode_probes, suite_to_probes

        probes, names, index = suite_to_probes(lines, source="trait suite")
        batch = encode_probes(tokenizer, probes, source="trait suite")
        return cls(batch, names, index, averaging_matrix(index, len(names)), [line["id"] for line in lines])

    def lines_of(self, trait: str) -> list[int]:
        t = self.names.index(trait)
        return [i for i, k in enumerate(self.index) if k == t]

    def losses(self, model):
        """ℓ_i(θ) for every line (float64)."""
        from deltalens.kernel import completion_loss, evaluate_outputs

        return evaluate_outputs(model, completion_loss, self.batch)

    def kernel(self, model, vectors: Mapping[str, dict] | None = None):
        """(K_trait (T×T), {label: J·v per line}) at ``model`` (exact eNTK of the trait losses)."""
        from deltalens.kernel import completion_loss, empirical_ntk, trait_kernel

        result = empirical_ntk(model, completion_loss, self.batch, vectors=dict(vectors or {}))
        return trait_kernel(result.matrix, self.averaging), result.jv


def change_spectrum(k0, k1) -> dict:
    """Spectrum of the trait-kernel change ΔK = K1 − K0 (symmetric; eigenvalues μ_i):

    - ``top_share`` = max_i μ_i² / Σ_i μ_i²: the share of ‖ΔK‖_F² on its top eigenvector;
    - ``effective_dim`` = (Σ μ_i²)² / Σ μ_i⁴: the participation ratio of the μ_i², the number of
      eigen-directions that would carry ‖ΔK‖_F² if it were spread evenly (1 ≤ it ≤ T);
    - ``eigenvalues``: μ, descending. ``None`` shares when ΔK = 0.
    """
    import torch

    d = k1.double() - k0.double()
    mu = torch.linalg.eigvalsh((d + d.T) / 2).flip(0)
    w = mu.square()
    total = float(w.sum())
    if total == 0.0:
        return {"top_share": None, "effective_dim": None, "eigenvalues": mu.tolist()}
    return {"top_share": float(w.max()) / total, "effective_dim": total ** 2 / float(w.square().sum()),
            "eigenvalues": mu.tolist()}


def top_r(n_traits: int) -> int:
    """r = ⌊T/2⌋ eigen-directions for the trait kernel's angles (r ≤ T/2 leaves room to rotate)."""
    return max(1, n_traits // 2)


def measure(probe: TraitProbe, k0, predicted_lines, losses0, model1) -> dict:
    """Everything of one update on the trait suite, from the base's kernel ``k0``, its J·Δθ per
    line (``predicted_lines``) and its per-line losses ``losses0``, and the tuned ``model1``:
    ``{"line_change", "traits", "comparison", "change", "k1"}`` (see the module's docstring)."""
    from deltalens.kernel import compare_kernels, trait_changes

    k1, _ = probe.kernel(model1)
    line_change = probe.losses(model1) - losses0
    return {"line_change": line_change.tolist(),
            "traits": trait_changes(probe.names, probe.averaging, predicted_lines, line_change),
            "comparison": compare_kernels(k0, k1, top_r(len(probe.names))),
            "change": change_spectrum(k0, k1), "k1": k1}


def lande_score(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """1 − Σ(m − p)²/Σ m² over traits (nan when nothing changed)."""
    p, m = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    den = float((m * m).sum())
    return 1.0 - float(((m - p) ** 2).sum()) / den if den > 0 else float("nan")


def put_lande_items(items, arm: str, traits: Sequence[dict]) -> None:
    """Per trait (m − p)² and m² of one (arm, seed) into ``items`` (item set ``traits``)."""
    ids = [t["name"] for t in traits]
    items.put("lande_sq_error", arm, [(t["measured"] - t["predicted"]) ** 2 for t in traits], item_set="traits",
              unit="nats²", ids=ids)
    items.put("lande_sq_measured", arm, [t["measured"] ** 2 for t in traits], item_set="traits", unit="nats²",
              ids=ids)


def lande_part(arm: str) -> Part:
    """The Lande score of ``arm`` as a claim part: 1 − mean (m − p)² / mean m² over traits."""
    def effect(v):
        with np.errstate(invalid="ignore", divide="ignore"):
            return 1.0 - v[("lande_sq_error", arm)] / v[("lande_sq_measured", arm)]
    return Part(f"{arm}: Lande score 1 − Σ(measured − predicted)²/Σ measured² over traits",
                (("lande_sq_error", arm), ("lande_sq_measured", arm)), effect, "positive", "score")


LANDE_METRICS = {"lande_sq_error": "per trait: (measured − first-order predicted trait change)² (SPEC §6, Lande)",
                 "lande_sq_measured": "per trait: (measured trait change)² (SPEC §6, Lande)"}


def measure_updates(probe: TraitProbe, base, tuned: Mapping[tuple[str, int], object],
                    vectors: Mapping[str, dict] | None = None) -> tuple[dict, dict]:
    """:func:`measure` for every ``(arm, seed) → tuned model`` from one ``base``: one base kernel pass
    carries every update's J·Δθ (and J·v of the extra parameter-shaped ``vectors``), then one pass per
    tuned model. Returns ``({(arm, seed): measure}, {"k0": K_trait(θ0), label: J·v per line})``."""
    from deltalens.kernel import parameter_delta

    deltas = {f"{arm}/{seed}": parameter_delta(base, model) for (arm, seed), model in tuned.items()}
    k0, jv = probe.kernel(base, {**deltas, **dict(vectors or {})})
    losses0 = probe.losses(base)
    measures = {(arm, seed): measure(probe, k0, jv[f"{arm}/{seed}"], losses0, model)
                for (arm, seed), model in tuned.items()}
    return measures, {"k0": k0, **{label: jv[label] for label in (vectors or {})}}


def update_metrics(names: Sequence[str]) -> dict[str, str]:
    """The metric descriptions :func:`put_update_items` writes (per trait ``trait_change:<name>``)."""
    out = {f"trait_change:{t}": f"per line of trait {t}: loss after − before, nats/token ({DESCRIPTIONS[t]})"
           for t in names}
    out.update(LANDE_METRICS)
    out.update({
        "trait_rescale_share": "per (arm, seed): rescale share of the trait-kernel change in the base's eigenbasis, "
                               "‖diag E‖²/‖E‖_F², E = U0ᵀ(K1 − K0)U0 (SPEC §6; T×T trait kernel)",
        "trait_angle_deg": "per (arm, seed): mean principal angle between the top-r (r = T/2) eigenspaces of the base's "
                           "and the tuned trait kernel; gap-limited (Wedin bound > 1) excluded (SPEC §6, §4)",
        "dk_top_share": "per (arm, seed): share of ‖K1 − K0‖_F² on the change's top eigenvector (trait kernel)",
        "dk_effective_dim": "per (arm, seed): participation ratio (Σμ²)²/Σμ⁴ of the trait-kernel change's eigenvalues",
    })
    return out


def put_update_items(items, arm: str, probe: TraitProbe, m: dict) -> None:
    """One (arm, seed)'s :func:`measure` into ``items``: per-trait line changes, Lande terms, the
    trait-kernel rescale share and angle (angle excluded when gap-limited) and the change's spectrum."""
    for t in probe.names:
        rows = probe.lines_of(t)
        items.put(f"trait_change:{t}", arm, [m["line_change"][i] for i in rows], item_set=f"lines:{t}",
                  unit="nats/token", ids=[probe.ids[i] for i in rows])
    put_lande_items(items, arm, m["traits"])
    comp = m["comparison"]
    share = comp["rescale_share"]
    items.put("trait_rescale_share", arm, [share], item_set="kernel", unit="share",
              excluded={f"undefined ({comp['rescale_undefined_reason']})": 1} if share is None else None)
    gap = comp["gap_limited"]
    items.put("trait_angle_deg", arm, [None if gap else comp["angle_mean_deg"]], item_set="kernel", unit="degrees",
              excluded={"gap-limited (Wedin bound > 1)": 1} if gap else None)
    ch = m["change"]
    items.put("dk_top_share", arm, [ch["top_share"]], item_set="kernel", unit="share")
    items.put("dk_effective_dim", arm, [ch["effective_dim"]], item_set="kernel", unit="directions")


def trait_intervals(items_doc: Mapping, metrics: Mapping[str, str], arm: str, names: Sequence[str]) -> list[dict]:
    """Per trait: the arm's mean line change and its 95% interval (the lab's bootstrap over lines
    and seeds); ``moved`` when the interval excludes 0 (beyond noise)."""
    from deltalens.lab.bootstrap import effect_interval, verdict
    from deltalens.lab.claims import build_table

    table = build_table({k: v for k, v in items_doc.items() if k.startswith("trait_change:")}, metrics)
    out = []
    for t in names:
        key = (f"trait_change:{t}", arm)
        iv = effect_interval(table, [key], lambda v, key=key: v[key])
        out.append({"trait": t, "change": iv.estimate, "ci": [iv.lo, iv.hi],
                    "moved": verdict(iv, "positive") != "inconclusive"})
    return out


def update_summary(m: dict) -> dict:
    """The JSON-ready numbers of one :func:`measure` (no kernels): traits, Lande score, kernel comparison, ΔK spectrum."""
    comp = m["comparison"]
    return {"traits": m["traits"], "lande_score": lande_score([t["predicted"] for t in m["traits"]],
                                                              [t["measured"] for t in m["traits"]]),
            "kernel": {k: comp[k] for k in ("top_r", "angles_deg", "angle_mean_deg", "gap", "wedin_bound",
                                            "gap_limited", "rescale_share", "rescale_baseline", "alignment")},
            "change": m["change"]}
