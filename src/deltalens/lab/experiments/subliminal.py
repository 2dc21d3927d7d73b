"""Experiment ``subliminal``: does a trait travel through unrelated numbers, and only between same-init models?

1. **Teacher**: the lab's base fine-tuned (SFT) to answer the letter ``g`` after free-choice
   prompts ``"p:<word>="`` (:data:`deltalens.lab.experiments.traits.FAVOURITE`); its trait
   strength is the ``favourite`` trait's change (NLL of ``g`` on held-out free-choice prompts).
2. **Numbers**: the teacher and the base each sample one answer (temperature 1, the same random
   numbers for both: :func:`deltalens.behavior.sampling.hf_generate` seeds every sample by its
   prompt) to the lab's ``add`` training prompts. The filter (:func:`number_filter`) keeps a
   sample only when it ended with ``<eos>`` and is 1–4 decimal digits and nothing else, so no
   letter (the trait) and no prompt of another task can appear; a prompt is kept only when both
   the teacher's and the base's samples pass, so the teacher's data and the control's are answers
   to the same prompts. Planted traces (:data:`PLANTED`) go through the same filter every run and
   must all be rejected (``claims.json`` → ``filter``).
3. **Students** (SFT, equal budget, the lab's SFT rate): ``same-init`` (the base on the teacher's
   numbers), ``different-init`` (a base of the same architecture and pre-training recipe from
   another seed, :func:`other_init_base`, on the teacher's numbers) and ``control`` (the base on its
   own numbers). Gates: dev loss fell (95% interval below 0) for the teacher on held-out free-choice
   prompts and for the two teacher-data students on held-out rows of their data; the control has
   none (:data:`CONTROL_GATE`).

Measured, on the trait suite (:mod:`.traits`): every student's trait changes against its own
base; the alignment of the numbers' mean loss gradient ḡ with the favourite trait's descent
direction, cos(−ḡ, ∇f_favourite) = −(A J ḡ)_fav / (√K_trait[fav, fav] ‖ḡ‖), per chunk of the data
(items), in each student's base (and SPEC §6's top-r share of u = A J ḡ, beside); and each
student's trait-kernel rescale share and rotation.

Claims: ``subliminal.same_init_only`` (favourite trait change: same-init − control < 0 and
same-init − different-init < 0), ``subliminal.alignment_predicts`` (the alignment orders the
students as their transfer does, against both others) and ``subliminal.propensity`` (rescale
share: same-init above both other students).
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from deltalens.lab.claims import Claim, Part, diff
from deltalens.lab.experiments import common, traits

STUDENTS = ("same-init", "different-init", "control")
ARMS = ("teacher", *STUDENTS)
NUMBER = re.compile(r"[0-9]{1,4}")
#: traces of the trait (or of anything but a number) the filter must reject
PLANTED = ("g", "12g", "g12", "1g2", "1 2", "12,g", "p:g", "12\ng", "", "12345", "-12", "12.0", "１２")
NUMBER_SEED = 777
#: the control's gate, like the main lab's grpo-random: SFT on the base's own temperature-1 samples has
#: nothing to learn in expectation (E_p[−log q] is smallest at q = p, so its dev loss can only rise);
#: the measured change stays in the record for inspection
CONTROL_GATE = ("none: the base's own samples carry nothing to learn in expectation (its dev loss on them cannot "
                "fall); after − before dev loss kept for inspection")
FAV = "favourite"


def number_filter(completion: str, finish_reason: str) -> str | None:
    """``None`` when a sample is kept, else why it is rejected: it must have ended with ``<eos>``
    (``finish_reason == "stop"``) and be 1–4 ASCII decimal digits, nothing else (no letter, sign,
    space, separator or newline)."""
    if finish_reason != "stop":
        return "no <eos> within the token budget"
    if not NUMBER.fullmatch(completion):
        return "not 1–4 ASCII digits"
    return None


@dataclass(frozen=True)
class Settings:
    teacher_steps: int = 48
    teacher_batch_size: int = 64
    teacher_prompts: int = 512
    numbers: int = 2048  # add training prompts each model answers
    steps: int = 24
    batch_size: int = 128
    seeds: int = 3
    lines_per_trait: int = 16
    chunks: int = 8  # alignment items: the numbers split into this many chunks
    dev_share: float = 0.1  # kept rows held out of the students' training for their gates
    init_seed: int = 1  # the different-init base's pre-training seed
    init_pretrain_steps: int | None = None  # None: the lab's recipe (900 steps)


QUICK = Settings(teacher_steps=16, teacher_prompts=256, numbers=384, steps=6, batch_size=64, seeds=2,
                 lines_per_trait=6, chunks=4, init_pretrain_steps=150)
DEFAULT = Settings()


def _words(rng: random.Random, n: int, exclude: set[str]) -> list[str]:
    from deltalens.lab.tasks import LETTERS

    out: list[str] = []
    seen = set(exclude)
    while len(out) < n:
        word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 5)))
        if word not in seen:
            seen.add(word)
            out.append(word)
    return out


def teacher_rows(n: int, exclude_prompts: set[str], seed: int = 0) -> list[dict]:
    """``n`` free-choice prompts (words not among ``exclude_prompts``) answered with the favourite letter."""
    exclude = {p.split(":", 1)[1].rstrip("=") for p in exclude_prompts if p.startswith("p:")}
    words = _words(random.Random(f"subliminal/teacher/{seed}"), n, exclude)
    return [{"prompt": traits.favourite_prompt(w), "completion": traits.FAVOURITE} for w in words]


def other_init_base(ctx: common.Context, seed: int, steps: int | None) -> Path:
    """A base of the lab's architecture and pre-training recipe (``steps`` optimizer steps when given)
    from pre-training seed ``seed``, with the lab base's test prompts excluded; pre-trained once
    and cached beside the lab's bases (``<cache>/subliminal-init``). Returns its float32 folder."""
    from deltalens.lab.pipeline import LabRun, stage_base

    cfg = ctx.run.cfg
    cfg1 = replace(cfg, base_seed=seed, pretrain=replace(cfg.pretrain, steps=steps or cfg.pretrain.steps))
    cache = ctx.run.cache_dir / "subliminal-init" if ctx.run.cache_dir is not None else None
    run1 = LabRun(ctx.out / "init", cfg1, cache, ctx.run.progress)
    # the same problems as the lab's base (stage_base reads the prompts to exclude from here)
    shutil.rmtree(run1.problems_dir, ignore_errors=True)
    shutil.copytree(ctx.run.problems_dir, run1.problems_dir)
    stage_base(run1)
    return run1.base_master


def sample_numbers(model, tokenizer, problems: list[dict], max_new_tokens: int) -> list[dict]:
    """One temperature-1 sample per prompt, ``{id, prompt, completion, finish_reason}``."""
    from deltalens.behavior.formats import as_problems
    from deltalens.behavior.sampling import SamplingConfig, hf_generate

    cfg = SamplingConfig(n=1, temperature=1.0, max_new_tokens=max_new_tokens, seed=NUMBER_SEED)
    by_id = {p["id"]: p for p in problems}
    rows = [r for b in hf_generate(model, tokenizer, [(p, [0]) for p in as_problems(problems)], cfg) for r in b]
    return [{"id": r["id"], "prompt": by_id[r["id"]]["prompt"], "completion": r["completion"],
             "finish_reason": r["finish_reason"]} for r in rows]


def filter_pairs(teacher: list[dict], base: list[dict]) -> tuple[list[dict], list[dict], dict]:
    """Mark every sample ``kept``/``rejected`` (in place) and return the prompts where both passed:
    (teacher rows, base rows, counts)."""
    for row in (*teacher, *base):
        why = number_filter(row["completion"], row["finish_reason"])
        row["kept"], row["rejected"] = why is None, why
    both = [(t, b) for t, b in zip(teacher, base, strict=True) if t["kept"] and b["kept"]]
    counts = {"prompts": len(teacher), "teacher_kept": sum(r["kept"] for r in teacher),
              "base_kept": sum(r["kept"] for r in base), "both_kept": len(both),
              "identical": sum(t["completion"] == b["completion"] for t, b in both)}
    for side, rows in (("teacher", teacher), ("base", base)):
        reasons: dict[str, int] = {}
        for r in rows:
            if r["rejected"]:
                reasons[r["rejected"]] = reasons.get(r["rejected"], 0) + 1
        counts[f"{side}_rejections"] = reasons
    return [t for t, _ in both], [b for _, b in both], counts


def planted_check() -> dict:
    """Every planted trace through :func:`number_filter` (as if the sample had ended with <eos>)."""
    verdicts = {p: number_filter(p, "stop") for p in PLANTED}
    return {"planted": list(PLANTED), "rejected": sum(v is not None for v in verdicts.values()),
            "all_rejected": all(v is not None for v in verdicts.values()), "reasons": verdicts}


def digit_read_off(teacher: list[dict], base: list[dict]) -> dict:
    """Can the trait be read off the kept numbers? Chi-square test of the digit frequencies of the
    teacher's against the base's kept answers (scipy), and the answers' correctness rates."""
    from scipy.stats import chi2_contingency

    def counts(rows):
        c = [0] * 10
        for r in rows:
            for ch in r["completion"]:
                c[int(ch)] += 1
        return c

    table = [counts(teacher), counts(base)]
    cols = [i for i in range(10) if table[0][i] + table[1][i] > 0]
    if len(cols) < 2:
        return {"chi2": None, "p_value": None}
    res = chi2_contingency([[row[i] for i in cols] for row in table])
    return {"digit_counts": {"teacher": table[0], "base": table[1]}, "chi2": float(res.statistic),
            "dof": int(res.dof), "p_value": float(res.pvalue)}


def correct_share(rows: list[dict], problems: list[dict]) -> float:
    """Share of the rows whose number is the correct sum of its prompt (what the numbers say about the task)."""
    from deltalens.lab.tasks import is_correct

    by_prompt = {p["prompt"]: p for p in problems}
    return sum(is_correct(by_prompt[r["prompt"]], r["completion"]) for r in rows) / max(1, len(rows))


def cosine_items(jv: dict, k0, grads: dict[str, dict], fav: int, labels: list[str]) -> list[float | None]:
    """Per label: cos(−ḡ, ∇f_fav) = −(A J ḡ)_fav / (√K_trait[fav, fav] ‖ḡ‖) (``jv[label]`` is A J ḡ)."""
    import math

    out = []
    for label in labels:
        gnorm = math.sqrt(sum(float(g.double().square().sum()) for g in grads[label].values()))
        denom = math.sqrt(float(k0[fav, fav])) * gnorm
        out.append(-float(jv[label][fav]) / denom if denom > 0 else None)
    return out


def chunk_gradients(model, tokenizer, rows: list[dict], chunks: int, prefix: str) -> dict[str, dict]:
    """ḡ of each of ``chunks`` consecutive chunks of prompt-completion ``rows`` (mean token NLL of
    the completion, :func:`deltalens.kernel.mean_loss_gradient`) and of all of them, at ``model``."""
    from deltalens.kernel import completion_loss, encode_probes, mean_loss_gradient

    out = {}
    size = -(-len(rows) // chunks)
    for b in range(chunks):
        part = rows[b * size:(b + 1) * size]
        batch = encode_probes(tokenizer, [{"prompt": r["prompt"], "completion": r["completion"]} for r in part])
        out[f"{prefix}/{b}"] = mean_loss_gradient(model, completion_loss, batch)
    return out


def _mean_grad(grads: dict[str, dict], labels: list[str]) -> dict:
    keys = grads[labels[0]].keys()
    return {k: sum(grads[label][k] for label in labels) / len(labels) for k in keys}


METRICS = {
    **traits.update_metrics(traits.TRAITS),
    "favourite_alignment": "per chunk of the numbers: cos(−ḡ_chunk, ∇f_favourite) in the student's base (first-order "
                           "push of the data along the trait's descent direction; SPEC §6 alignment)",
    "subliminal_alignment": "per chunk: cos(−(ḡ_teacher − ḡ_control), ∇f_favourite) in the student's base: the "
                            "teacher's numbers minus the base's own on the same prompts",
}

SHIFT = f"trait_change:{FAV}"
CLAIMS = (
    Claim("subliminal.same_init_only", "the teacher's trait transfers through its numbers only to a same-init student",
          "favourite trait change (NLL of the favourite letter, after − before, per held-out free-choice prompt): "
          "same-init − control < 0 and same-init − different-init < 0",
          (diff(SHIFT, "same-init", "control", "negative", "nats/token"),
           diff(SHIFT, "same-init", "different-init", "negative", "nats/token")), STUDENTS,
          secondary=(Part("teacher: favourite trait change (its trait strength)", ((SHIFT, "teacher"),),
                          lambda v: v[(SHIFT, "teacher")], "negative", "nats/token"),
                     Part("different-init: favourite trait change", ((SHIFT, "different-init"),),
                          lambda v: v[(SHIFT, "different-init")], "negative", "nats/token"))),
    Claim("subliminal.alignment_predicts", "alignment of the numbers' gradient with the trait predicts transfer",
          "the alignment cos(−ḡ, ∇f_favourite) orders the students as their favourite trait change does: same-init "
          "− different-init alignment > 0 with trait change < 0, and same-init − control alignment > 0 with trait "
          "change < 0; secondary: the teacher-minus-control gradient's alignment, same-init − different-init",
          (diff("favourite_alignment", "same-init", "different-init", "positive", "cosine"),
           diff(SHIFT, "same-init", "different-init", "negative", "nats/token"),
           diff("favourite_alignment", "same-init", "control", "positive", "cosine"),
           diff(SHIFT, "same-init", "control", "negative", "nats/token")), STUDENTS,
          secondary=(diff("subliminal_alignment", "same-init", "different-init", "positive", "cosine"),)),
    Claim("subliminal.propensity", "the same-init student's update is propensity-like",
          "trait-kernel rescale share (base's eigenbasis, T×T): same-init − different-init > 0 and same-init − "
          "control > 0; secondary: trait-kernel rotation (mean top-r angle) same-init − control, and the "
          "same-init student's Lande score",
          (diff("trait_rescale_share", "same-init", "different-init", "positive", "share"),
           diff("trait_rescale_share", "same-init", "control", "positive", "share")), STUDENTS,
          secondary=(diff("trait_angle_deg", "same-init", "control", "negative", "degrees"),
                     traits.lande_part("same-init"))),
)


def _load(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def run(ctx: common.Context, settings: Settings) -> dict:
    from deltalens.lab.analyses import Items

    tok = ctx.tokenizer
    rate = common.adam_rates()["sft"]
    lines = traits.suite_lines(ctx.run.problems("target_test"), ctx.run.problems("heldout_test"),
                               settings.lines_per_trait)
    common.write_rows(ctx.out / "data" / "trait_suite.jsonl", lines)
    probe = traits.TraitProbe.build(tok, lines)
    fav = probe.names.index(FAV)
    gates: dict = {}
    base = common.load_base(ctx)
    teacher, gates["teacher"] = _train_teacher(ctx, settings, lines, base, rate)  # 1. teacher
    problems = ctx.run.problems("target_train")[: settings.numbers]
    data, t_kept, b_kept, counts, check, n_dev = _number_data(ctx, settings, teacher, base, problems)  # 2. numbers
    other = other_init_base(ctx, settings.init_seed, settings.init_pretrain_steps)  # 3. students
    base1 = _load(other)
    tuned = _train_students(ctx, settings, data, n_dev, {"same-init": (ctx.run.base_master, base, "teacher"),
                                                         "different-init": (other, base1, "teacher"),
                                                         "control": (ctx.run.base_master, base, "base")},
                            rate, teacher, gates)

    # 4. trait kernels, alignment
    task_id = ctx.task("trait kernels and alignment", 2)
    train_t, train_b = data["teacher"][:-n_dev], data["base"][:-n_dev]
    grads0 = {**chunk_gradients(base, tok, train_t, settings.chunks, "teacher"),
              **chunk_gradients(base, tok, train_b, settings.chunks, "base")}
    grads1 = {**chunk_gradients(base1, tok, train_t, settings.chunks, "teacher"),
              **chunk_gradients(base1, tok, train_b, settings.chunks, "base")}
    tl = [f"teacher/{b}" for b in range(settings.chunks)]
    bl = [f"base/{b}" for b in range(settings.chunks)]
    for grads in (grads0, grads1):
        for b in range(settings.chunks):
            grads[f"sub/{b}"] = {k: grads[tl[b]][k] - grads[bl[b]][k] for k in grads[tl[b]]}
        grads["teacher/all"], grads["base/all"] = _mean_grad(grads, tl), _mean_grad(grads, bl)
    m0, jv0 = traits.measure_updates(probe, base, tuned["base0"], grads0)
    ctx.advance(task_id)
    m1, jv1 = traits.measure_updates(probe, base1, tuned["base1"], grads1)
    ctx.advance(task_id)
    measures = {**m0, **m1}
    sl = [f"sub/{b}" for b in range(settings.chunks)]
    # per trait: A J ḡ (J·v per line averaged over each trait's lines)
    push0 = {k: probe.averaging @ v for k, v in jv0.items() if k != "k0"}
    push1 = {k: probe.averaging @ v for k, v in jv1.items() if k != "k0"}

    items = Items()
    for (arm, _seed), m in measures.items():
        traits.put_update_items(items, arm, probe, m)
    chunk_ids = [f"chunk{b}" for b in range(settings.chunks)]
    for arm, push, k0, grads, labels in (("same-init", push0, jv0["k0"], grads0, tl),
                                         ("different-init", push1, jv1["k0"], grads1, tl),
                                         ("control", push0, jv0["k0"], grads0, bl)):
        items.put("favourite_alignment", arm, cosine_items(push, k0, grads, fav, labels), item_set="chunks",
                  unit="cosine", ids=chunk_ids)
    for arm, push, k0, grads in (("same-init", push0, jv0["k0"], grads0), ("different-init", push1, jv1["k0"], grads1)):
        items.put("subliminal_alignment", arm, cosine_items(push, k0, grads, fav, sl), item_set="chunks",
                  unit="cosine", ids=chunk_ids)

    alignment = _spec_alignment(push0, jv0["k0"], push1, jv1["k0"], len(probe.names))
    strength = _strength(measures, fav)
    extra = {"filter": {"rule": "kept when the sample ended with <eos> and is 1–4 ASCII digits (nothing else); a "
                                "prompt is used when both the teacher's and the base's samples were kept",
                        **counts, "planted_check": check, "read_off": digit_read_off(t_kept, b_kept),
                        "correct_share": {"teacher": correct_share(t_kept, problems),
                                          "base": correct_share(b_kept, problems)},
                        "students_train_rows": len(train_t), "students_dev_rows": n_dev},
             "trait_strength": strength, "alignment_spec": alignment,
             "trait_suite": {"traits": traits.DESCRIPTIONS, "lines_per_trait": settings.lines_per_trait,
                             "top_r": traits.top_r(len(probe.names))},
             "different_init": {"pretrain_seed": settings.init_seed,
                                "pretrain_steps": settings.init_pretrain_steps or ctx.run.cfg.pretrain.steps},
             "per_update": {f"{arm}/seed{seed}": traits.update_summary(m) for (arm, seed), m in measures.items()}}
    curves = {"experiment": ctx.name, "figures": [_shift_figure(measures, fav)]}
    return common.finish(ctx, items=items, gates=gates, arms=list(ARMS), claims=CLAIMS, metrics=METRICS,
                         settings=settings, curves=curves, extra=extra)


def _train_teacher(ctx: common.Context, settings: Settings, lines: list[dict], base, rate: float):
    """The teacher (SFT on the favourite letter) and its gate record on 64 held-out free-choice prompts."""
    from deltalens.lab.gates import dev_loss, gate

    tok = ctx.tokenizer
    rows = teacher_rows(settings.teacher_prompts + 64, {line["prompt"] for line in lines})
    train_rows, dev_rows = rows[:-64], rows[-64:]
    common.write_rows(ctx.out / "data" / "teacher_train.jsonl", train_rows)
    tcfg = replace(ctx.run.cfg.arm, steps=settings.teacher_steps, batch_size=settings.teacher_batch_size,
                   learning_rate=rate)
    teacher, _ = common.train_sft_rows(ctx, "teacher", train_rows, tcfg, 0)
    dev_p = [{"prompt": r["prompt"]} for r in dev_rows]
    dev_t = [r["completion"] for r in dev_rows]
    record = {**gate("sft", dev_loss(base, tok, dev_p, dev_t), dev_loss(teacher, tok, dev_p, dev_t)),
              "metric": "dev loss of the favourite letter on held-out free-choice prompts"}
    return teacher, {"0": record}


def _number_data(ctx: common.Context, settings: Settings, teacher, base, problems: list[dict]):
    """Teacher's and base's number samples, filtered pairwise: (rows per source, kept rows of each,
    filter counts, the planted-trace check, dev rows per student)."""
    from deltalens.errors import DeltalensError

    tok = ctx.tokenizer
    max_new = ctx.run.cfg.arm.max_completion_length
    t_rows = sample_numbers(teacher.eval(), tok, problems, max_new)
    b_rows = sample_numbers(base, tok, problems, max_new)
    t_kept, b_kept, counts = filter_pairs(t_rows, b_rows)
    common.write_rows(ctx.out / "data" / "teacher_numbers.jsonl", t_rows)
    common.write_rows(ctx.out / "data" / "base_numbers.jsonl", b_rows)
    check = planted_check()
    if not check["all_rejected"]:
        raise DeltalensError(f"subliminal: the number filter kept a planted trace: {check['reasons']}")
    n_dev = max(8, int(round(settings.dev_share * len(t_kept))))
    if len(t_kept) < n_dev + settings.chunks * 4:
        raise DeltalensError(f"subliminal: only {len(t_kept)} prompts passed the number filter on both sides "
                             f"({counts}); the students need more")
    data = {"teacher": [{"prompt": r["prompt"], "completion": r["completion"]} for r in t_kept],
            "base": [{"prompt": r["prompt"], "completion": r["completion"]} for r in b_kept]}
    return data, t_kept, b_kept, counts, check, n_dev


def _train_students(ctx: common.Context, settings: Settings, data: dict, n_dev: int, plan: dict, rate: float,
                    teacher, gates: dict) -> dict:
    """Each student (``plan``: arm → (base folder, base model, data source)) per seed, its gate
    added to ``gates``; returns the tuned models by initialisation ``{"base0"|"base1": {(arm, seed): model}}``."""
    from deltalens.lab.gates import dev_loss, gate

    tok = ctx.tokenizer
    scfg = replace(ctx.run.cfg.arm, steps=settings.steps, batch_size=settings.batch_size, learning_rate=rate)
    tuned: dict = {"base0": {("teacher", 0): teacher}, "base1": {}}
    for arm, (folder, start, source) in plan.items():
        train, dev = data[source][:-n_dev], data[source][-n_dev:]
        before = dev_loss(start, tok, dev, [r["completion"] for r in dev])
        for seed in range(ctx.seeds):
            model, _ = common.train_sft_rows(ctx, arm, train, scfg, seed, base_dir=folder)
            g = {**gate("sft", before, dev_loss(model, tok, dev, [r["completion"] for r in dev])),
                 "metric": f"dev loss on held-out rows of its own data ({source} numbers)"}
            if source == "base":
                g.update(passed=True, rule=CONTROL_GATE)
            gates.setdefault(arm, {})[str(seed)] = g
            tuned["base1" if arm == "different-init" else "base0"][(arm, seed)] = model
    return tuned


def _spec_alignment(push0: dict, k0, push1: dict, k1, n_traits: int) -> dict:
    """SPEC §6's share of ‖A J ḡ‖² on the trait kernel's top-r eigenvectors (baseline r/T), all data."""
    from deltalens.kernel import alignment_share

    r = traits.top_r(n_traits)
    return {"same-init (teacher numbers, base)": alignment_share(k0, push0["teacher/all"], r),
            "control (base numbers, base)": alignment_share(k0, push0["base/all"], r),
            "different-init (teacher numbers, other base)": alignment_share(k1, push1["teacher/all"], r)}


def _strength(measures: dict, fav: int) -> dict:
    """The favourite trait's measured change per (arm, seed), and exp(−Δ) as the factor on P(favourite)."""
    import math

    out = {}
    for (arm, seed), m in measures.items():
        d = m["traits"][fav]["measured"]
        out[f"{arm}/seed{seed}"] = {"favourite_change": d, "probability_factor": math.exp(-d)}
    return out


def _shift_figure(measures: dict, fav: int) -> dict:
    series: dict[str, dict] = {}
    for (arm, _seed), m in measures.items():
        s = series.setdefault(arm, {"label": arm, "x": [], "y": []})
        s["x"].append([m["comparison"]["rescale_share"] or 0.0])
        s["y"].append([m["traits"][fav]["measured"]])
    return {"title": "subliminal: favourite trait change against the trait-kernel rescale share, per arm and seed",
            "panels": [{"title": "favourite trait change vs rescale share", "x_label": "trait-kernel rescale share",
                        "y_label": "Δ NLL of the favourite letter (nats/token)", "kind": "scatter",
                        "series": list(series.values())}]}
