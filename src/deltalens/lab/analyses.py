"""Stage 5 of the lab: every deltalens analysis on every arm against the base.

Each analysis is a function ``(LabRun) -> {metric: {arm: [value per seed]}}`` with metric names
from :data:`deltalens.lab.claims.METRICS`, registered with
:func:`deltalens.lab.pipeline.register_analysis`. The numbers come from the library's own
functions (one definition per quantity); this module only chooses inputs and reduces outputs.

Per arm and seed the full outputs land in ``OUT/analysis/<arm>-seed<s>/`` (``diff.json``,
``tensors.parquet``, ``passk.json``, ``support.json``, ``divergence.json``, ``kernel.json``,
``kernels.npz``, ``eval.json``, and a copy of the arm's ``tracking.jsonl``), so ``deltalens
report`` shows them side by side; samples under ``OUT/analysis/samples/``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from deltalens.lab.tasks import extract_answer
from deltalens.errors import DeltalensError
from deltalens.results import write_json

EVAL_SEED = 1234  # one sampling seed for every model: common random numbers across arms


def analysis_dir(run, arm: str, seed: int | None = None) -> Path:
    """``OUT/analysis/<arm>-seed<s>`` (or ``OUT/analysis/<arm>`` for the base)."""
    return run.out / "analysis" / (arm if seed is None else f"{arm}-seed{seed}")


def arm_seeds(run):
    return [(arm, seed) for arm in run.cfg.arms for seed in run.seeds()]


def task_verifier(task: str):
    """The lab's exact answer check for one task as a behaviour verifier ``(completion, answer)``."""

    def check(completion: str, answer: str):
        got = extract_answer(task, completion)
        return got, got == answer

    check.__name__ = f"lab_{task}_exact"
    return check


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def _append(numbers: dict, metric: str, arm: str, value) -> None:
    numbers.setdefault(metric, {}).setdefault(arm, []).append(value)


# ----------------------------------------------------------------------------- items
class Items:
    """The ``items`` section of ``metrics.json``: per metric, per arm, per seed, one value per item
    (``None`` = excluded, with its reason counted; see :mod:`deltalens.lab.claims`)."""

    def __init__(self) -> None:
        self.doc: dict = {}

    def put(self, metric: str, arm: str, values, *, item_set: str, unit: str, weights=None,
            excluded: dict | None = None, ids=None) -> None:
        spec = self.doc.setdefault(metric, {"item_set": item_set, "unit": unit, "weights": weights, "arms": {},
                                            "excluded": {}})
        if ids is not None:
            spec.setdefault("ids", list(ids))
        vals = [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]
        spec["arms"].setdefault(arm, []).append(vals)
        spec["excluded"].setdefault(arm, []).append(dict(excluded or {}))


def _count(excluded: dict, reason: str) -> None:
    excluded[reason] = excluded.get(reason, 0) + 1


GAP_LIMITED = "gap-limited (Wedin bound > 1)"
UNRESOLVED = "unresolved (fast route's angle error estimate above 0.01°)"


def mean_angle_deg(metrics: dict) -> tuple[float | None, str | None]:
    """(mean of the left and right mean top-k principal angle at the default k, why it is
    excluded: ``GAP_LIMITED``, ``UNRESOLVED`` or None). SPEC §4, §10."""
    by_k = metrics.get("by_k")
    if not by_k:
        return None, None
    first = by_k[min(by_k, key=int)]
    why = UNRESOLVED if first.get("unresolved") else GAP_LIMITED if first.get("gap_limited") else None
    return (first["angle_mean_left_deg"] + first["angle_mean_right_deg"]) / 2, why


def tensor_items(rows: list[dict]) -> dict:
    """Per-tensor values of one diff: ``{metric: (values, excluded)}`` plus ``names``/``numel``/``matrices``.

    bf16_unchanged: ``unchanged_bitwise`` of every tensor (weighted by ``numel``); over 2-D tensors
    (``by_k`` present): principal_angle_deg (None when gap-limited or unresolved), nss (None when gap-limited
    or when its scope is not the full spectrum), log effective / stable rank of Δ and the
    numerical rank fraction (None when Δ = 0).
    """
    rows = sorted(rows, key=lambda r: r["name"])
    out: dict = {"names": [r["name"] for r in rows], "numel": [int(r["numel"]) for r in rows],
                 "bf16_unchanged": ([r.get("unchanged_bitwise") for r in rows], {})}
    matrices = [r for r in rows if r.get("by_k")]
    out["matrices"] = [r["name"] for r in matrices]
    cols = {m: ([], {}) for m in ("principal_angle_deg", "nss", "log_effective_rank", "log_stable_rank",
                                  "numerical_rank_fraction")}
    for r in matrices:
        angle, why = mean_angle_deg(r)
        vals, exc = cols["principal_angle_deg"]
        vals.append(None if why else angle)
        if why:
            _count(exc, why)
        vals, exc = cols["nss"]
        if why == GAP_LIMITED:
            vals.append(None)
            _count(exc, GAP_LIMITED)
        elif r.get("nss") is None or r.get("nss_scope") not in (None, "full"):
            vals.append(None)
            _count(exc, "unresolved (NSS over a top-q spectrum only)")
        else:
            vals.append(r["nss"])
        for metric, key, log in (("log_effective_rank", "effective_rank", True), ("log_stable_rank", "stable_rank", True),
                                 ("numerical_rank_fraction", "numerical_rank_fraction", False)):
            vals, exc = cols[metric]
            v = r.get(key)
            if v is None or not math.isfinite(v) or (log and v <= 0):
                vals.append(None)
                _count(exc, "Δ = 0 or rank not computed")
            else:
                vals.append(math.log(v) if log else v)
    out.update(cols)
    return out


# ----------------------------------------------------------------------------- weights
def weights_analysis(run) -> dict:
    """SPEC §2–§5 on each arm's final bf16 release against the base's bf16 release: per-tensor
    items (:func:`tensor_items`) and their means per seed."""
    from deltalens.weights.diff import run_diff

    numbers: dict = {}
    items = run.items
    for arm, seed in arm_seeds(run):
        out = analysis_dir(run, arm, seed)
        res = run_diff(run.base_release, run.final_release(arm, seed), out=out, device=run.cfg.device)
        per = tensor_items(res.rows)
        items.put("bf16_unchanged", arm, per["bf16_unchanged"][0], item_set="tensors", unit="fraction",
                  weights=per["numel"], ids=per["names"])
        for metric, unit in (("principal_angle_deg", "degrees"), ("nss", "NSS"), ("log_effective_rank", "log"),
                             ("log_stable_rank", "log"), ("numerical_rank_fraction", "fraction")):
            vals, exc = per[metric]
            items.put(metric, arm, vals, item_set="matrices", unit=unit, excluded=exc, ids=per["matrices"])
        _append(numbers, "bf16_unchanged_fraction", arm, res.summary["unchanged_bitwise"])
        _append(numbers, "principal_angle_mean_deg", arm, _mean(per["principal_angle_deg"][0]))
        _append(numbers, "nss", arm, _mean(per["nss"][0]))
        tracking = run.arm_dir(arm, seed) / "tracking.jsonl"
        if tracking.is_file():
            shutil.copyfile(tracking, out / "tracking.jsonl")
    return numbers


def checkpoint_path(run, arm: str, seed: int) -> list[dict]:
    """Per saved float32 master of the arm: per 2-D tensor ‖Δ‖_F, principal angle, gap flag and NSS
    against the base master (SPEC §4 via :func:`deltalens.weights.spectral.spectral_metrics`)."""
    import torch
    from safetensors.torch import load_file

    from deltalens.weights.spectral import spectral_metrics

    base = load_file(str(run.base_master / "model.safetensors"))
    names = sorted(n for n, t in base.items() if t.ndim == 2)
    path = []
    for folder in run.checkpoints(arm, seed, masters=True):
        tuned = load_file(str(folder / "model.safetensors"))
        per = {}
        for name in names:
            if name not in tuned:
                continue
            w0, w1 = base[name].to(torch.float32), tuned[name].to(torch.float32)
            m = spectral_metrics(w0, w1, groups=("spectral",))
            angle, why = mean_angle_deg(m)
            per[name] = {"fro": float(torch.linalg.matrix_norm((w1 - w0).double())),
                         "angle": None if why == UNRESOLVED else angle, "gap_limited": why == GAP_LIMITED,
                         "nss": m.get("nss")}
        path.append(per)
    return path


def at_size(path: list[dict], name: str, key: str, size: float) -> tuple[float | None, bool]:
    """``key`` of tensor ``name`` linearly interpolated along the path (from Δ = 0, where angle and
    NSS are 0) to ‖Δ‖_F = ``size``: between the last checkpoint below ``size`` and the first at or
    above it. Returns (value, gap_limited at the upper checkpoint); (None, False) when the path
    never reaches ``size``."""
    prev_f, prev_v = 0.0, 0.0
    for point in path:
        p = point.get(name)
        if p is None or p[key] is None:
            return None, False
        f, v = p["fro"], p[key]
        if f >= size:
            t = 0.0 if f == prev_f else (size - prev_f) / (f - prev_f)
            return prev_v + t * (v - prev_v), bool(p["gap_limited"])
        prev_f, prev_v = f, v
    return None, False


def matched_analysis(run) -> dict:
    """Rotation and NSS of grpo and sft at matched update size, per tensor and seed: each arm's
    value interpolated along its saved float32 checkpoints to the smaller of the two arms' final
    ‖Δ‖_F for that tensor (grpo seed s is matched with sft seed s). Gap-limited values excluded."""
    if "grpo" not in run.cfg.arms or "sft" not in run.cfg.arms:
        return {}
    items = run.items
    task_id = run.task("matched update size: checkpoints", len(list(run.seeds())))
    for seed in run.seeds():
        paths = {arm: checkpoint_path(run, arm, seed) for arm in ("grpo", "sft")}
        names = sorted(set(paths["grpo"][-1]) & set(paths["sft"][-1]))
        for metric, key in (("matched_angle_deg", "angle"), ("matched_nss", "nss")):
            per_arm = {arm: ([], {}) for arm in paths}
            for name in names:
                size = min(paths["grpo"][-1][name]["fro"], paths["sft"][-1][name]["fro"])
                got = {arm: at_size(paths[arm], name, key, size) for arm in paths}
                limited = key == "angle" and any(g[1] for g in got.values())
                for arm in paths:
                    vals, exc = per_arm[arm]
                    value = got[arm][0]
                    if size == 0 or value is None:
                        vals.append(None)
                        _count(exc, "Δ = 0 or unresolved along the checkpoints")
                    elif limited:
                        vals.append(None)
                        _count(exc, "gap-limited (Wedin bound > 1) at the matched size in either arm")
                    else:
                        vals.append(value)
            for arm, (vals, exc) in per_arm.items():
                items.put(metric, arm, vals, item_set="matrices-matched", unit="degrees" if key == "angle" else "NSS",
                          excluded=exc, ids=names)
        run.advance(task_id)
    return {}


# ----------------------------------------------------------------------------- behaviour
def _evaluate_heldout(model_dir: Path, name: str, heldout: list[dict], tokenizer, max_new_tokens: int,
                      device: str) -> dict:
    """Greedy accuracy and answer loss per held-out task (each task with its own exact check)."""
    from deltalens.behavior import evaluate

    tasks = {}
    for task in dict.fromkeys(p["task"] for p in heldout):
        suite = [p for p in heldout if p["task"] == task]
        tasks.update(evaluate(model_dir, suite, tokenizer=tokenizer, verifier=task_verifier(task),
                              max_new_tokens=max_new_tokens, model_name=name, device=device)["tasks"])
    return {"model": name, "tasks": tasks,
            "mean_accuracy": math.fsum(t["accuracy"] for t in tasks.values()) / len(tasks),
            "mean_loss": math.fsum(t["mean_loss"] for t in tasks.values()) / len(tasks),
            "method": "deltalens.behavior.evaluate per held-out task: greedy accuracy with the task's exact check; "
                      "mean answer NLL; means over tasks unweighted"}


def problem_items(base_flags: dict, arm_flags: dict, k_max: int) -> dict:
    """Per test problem (in ``base_flags`` order): pass@1 and pass@k_max of the arm (unbiased,
    :func:`deltalens.behavior.passk.per_problem_pass_at_k`) and its support class against the base
    at budget k_max as 0/1 indicators (SPEC §7: P kept, E gained, S lost)."""
    from deltalens.behavior.passk import per_problem_pass_at_k

    ids = list(base_flags)
    pk = per_problem_pass_at_k({i: arm_flags[i] for i in ids}, [1, k_max])
    b = [any(base_flags[i][:k_max]) for i in ids]
    t = [any(arm_flags[i][:k_max]) for i in ids]
    return {"ids": ids, "pass_at_1": pk[:, 0].tolist(), "pass_at_kmax": pk[:, 1].tolist(),
            "support_base": [float(x) for x in b], "support_kept": [float(x and y) for x, y in zip(b, t)],
            "support_gained": [float(y and not x) for x, y in zip(b, t)],
            "support_lost": [float(x and not y) for x, y in zip(b, t)],
            "support_any": [float(x or y) for x, y in zip(b, t)]}


def per_prompt_forward_kl(base_model, arm_model, tokenizer, prompt_ids: list[list[int]],
                          completions: list[list[int]], owners: list[int], n_prompts: int) -> list[float | None]:
    """Per prompt: the mean over its base samples of the token-mean KL(base ‖ arm), exact over the
    vocabulary (:func:`deltalens.behavior.divergence.score_sequences`); the mean over prompts
    equals ``divergence()``'s forward ``token_mean`` when every sample is non-empty."""
    from deltalens.behavior.divergence import score_sequences

    scores = score_sequences(base_model, arm_model, prompt_ids, completions, batch_size=64)
    sums, counts = [0.0] * n_prompts, [0] * n_prompts
    for owner, s in zip(owners, scores, strict=True):
        if s["kl_ab"]:
            sums[owner] += math.fsum(s["kl_ab"]) / len(s["kl_ab"])
            counts[owner] += 1
    return [sums[i] / counts[i] if counts[i] else None for i in range(n_prompts)]


def base_kl_samples(base_model, tokenizer, problems: list[dict], n: int, max_new_tokens: int, seed: int):
    """The base's samples along which forward KL is summed: token ids per (prompt, sample), the
    prompt's index for each, and the prompts' token ids (one draw shared by every arm)."""
    from deltalens.behavior.formats import as_problems
    from deltalens.behavior.sampling import SamplingConfig, hf_generate

    probs = as_problems(problems, need_answer=False)
    cfg = SamplingConfig(n=n, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed, batch_size=64)
    cfg.check()
    index = {p.id: i for i, p in enumerate(probs)}
    prompt_tokens = {p.id: tokenizer(p.prompt)["input_ids"] for p in probs}
    rows = [r for batch in hf_generate(base_model, tokenizer, [(p, range(n)) for p in probs], cfg) for r in batch]
    return ([prompt_tokens[r["id"]] for r in rows], [list(r["token_ids"]) for r in rows],
            [index[r["id"]] for r in rows])


def heldout_flags(path, name: str, heldout: list[dict], tokenizer, max_new_tokens: int, device: str) -> list[float]:
    """Per held-out problem (in file order): 1.0 when the greedy completion is correct under its task's check."""
    from deltalens.behavior import sample

    out = {}
    for task in dict.fromkeys(p["task"] for p in heldout):
        suite = [p for p in heldout if p["task"] == task]
        rows = sample(path, suite, n=1, tokenizer=tokenizer, temperature=0.0, max_new_tokens=max_new_tokens,
                      seed=EVAL_SEED, model_name=name, verifier=task_verifier(task), device=device)
        out.update({r["id"]: float(bool(r["correct"])) for r in rows})
    return [out[p["id"]] for p in heldout]


def behaviour_analysis(run) -> dict:
    """SPEC §7 for the base and every arm on the target task's test problems.

    Per-problem items (:func:`problem_items`): pass@1, pass@k at k = eval_samples and the
    support classes against the base; per target prompt the forward KL (:func:`per_prompt_forward_kl`);
    per held-out problem greedy correctness. Also writes passk/support/divergence/eval JSONs per
    arm and the RL's Razor fit of forgetting on KL to ``OUT/analysis/forgetting.json``.
    """
    from deltalens.behavior import divergence, forgetting, passk, sample, support
    from deltalens.behavior.formats import as_sample_set, correctness
    from deltalens.models import load_model

    cfg = run.cfg
    tok = run.tokenizer
    items = run.items
    target_task = run.family[0]
    target = run.problems("target_test")
    heldout = run.problems("heldout_test")
    new_tokens = cfg.arm.max_completion_length
    models = [("base", None, run.base_release)] + [
        (f"{arm}-seed{seed}", (arm, seed), run.final_release(arm, seed)) for arm, seed in arm_seeds(run)]
    task_id = run.task("behaviour: sample, verify, KL, held-out", len(models))
    samples, evals, held = {}, {}, {}
    files = {name: run.out / "analysis" / "samples" / f"{name}.jsonl" for name, _, _ in models}
    for name, _, path in models:
        samples[name] = sample(path, target, n=cfg.eval_samples, tokenizer=tok, temperature=cfg.arm.temperature,
                               max_new_tokens=new_tokens, seed=EVAL_SEED, model_name=name,
                               verifier=task_verifier(target_task), device=cfg.device, out=files[name])
        evals[name] = _evaluate_heldout(path, name, heldout, tok, new_tokens, cfg.device)
        held[name] = heldout_flags(path, name, heldout, tok, new_tokens, cfg.device)
        run.advance(task_id)
    write_json(analysis_dir(run, "base") / "eval.json", evals["base"])
    numbers: dict = {}
    kmax = cfg.eval_samples
    base_flags = correctness(as_sample_set(samples["base"]))
    base_items = problem_items(base_flags, base_flags, kmax)
    for metric in ("pass_at_1", "pass_at_kmax"):
        items.put(metric, "base", base_items[metric], item_set="problems", unit="probability", ids=base_items["ids"])
    items.put("heldout_correct", "base", held["base"], item_set="heldout", unit="accuracy",
              ids=[p["id"] for p in heldout])
    base_curve = passk([samples["base"]])["models"]["base"]
    _append(numbers, "pass_at_1", "base", base_curve["pass_at_k"][0])
    _append(numbers, "pass_at_kmax", "base", base_curve["pass_at_k"][-1])
    # loaded as divergence() loads them (the stored dtype), so the per-prompt values average to divergence.json's
    base_model = load_model(run.base_release, tok, device=cfg.device)[0]
    kl_prompts, kl_completions, kl_owners = base_kl_samples(base_model, tok, target, cfg.kl_samples, new_tokens,
                                                            EVAL_SEED)
    divergences = []
    for name, key, path in models[1:]:
        arm, seed = key
        out = analysis_dir(run, arm, seed)
        # from the files, whose settings record carries each model's fingerprint (the report groups by it)
        pk = passk([files["base"], files[name]], problems=target, base="base", tuned=name)
        write_json(out / "passk.json", pk)
        sp = support(files["base"], files[name])
        write_json(out / "support.json", sp)
        dv = divergence(run.base_release, path, target, tokenizer=tok, n_samples=cfg.kl_samples,
                        max_new_tokens=new_tokens, seed=EVAL_SEED, base_name="base", tuned_name=name, device=cfg.device,
                        extractor=lambda text: extract_answer(target_task, text))
        write_json(out / "divergence.json", dv)
        divergences.append(dv)
        write_json(out / "eval.json", evals[name])
        per = problem_items(base_flags, correctness(as_sample_set(samples[name])), kmax)
        for metric in ("pass_at_1", "pass_at_kmax", "support_base", "support_kept", "support_gained", "support_lost",
                       "support_any"):
            items.put(metric, arm, per[metric], item_set="problems", unit="probability", ids=per["ids"])
        arm_model = load_model(path, tok, device=cfg.device)[0]
        kl = per_prompt_forward_kl(base_model, arm_model, tok, kl_prompts, kl_completions, kl_owners, len(target))
        items.put("forward_kl", arm, kl, item_set="problems", unit="nats/token",
                  excluded={"every base sample empty": sum(v is None for v in kl)} if None in kl else None)
        items.put("heldout_correct", arm, held[name], item_set="heldout", unit="accuracy")
        curve = pk["models"][name]
        _append(numbers, "pass_at_1", arm, curve["pass_at_k"][0])
        _append(numbers, "pass_at_kmax", arm, curve["pass_at_k"][-1])
        _append(numbers, "srr", arm, sp["SRR"])
        _append(numbers, "nscr", arm, sp["NSCR"])
        _append(numbers, "forward_kl", arm, dv["forward_kl"]["token_mean"])
        _append(numbers, "forgetting", arm, evals["base"]["mean_accuracy"] - evals[name]["mean_accuracy"])
    if len(divergences) >= 2:
        fit = forgetting(evals["base"], [evals[name] for name, _, _ in models[1:]], divergences)
        write_json(run.out / "analysis" / "forgetting.json", fit)
    return numbers


# ----------------------------------------------------------------------------- kernel
def kernel_probes(run) -> list[dict]:
    """The first ``n_probes`` target test problems as ``{prompt, completion}`` probes."""
    return [{"prompt": p["prompt"], "completion": p["answer"]} for p in run.problems("target_test")[: run.cfg.n_probes]]


def kernel_analysis(run) -> dict:
    """SPEC §6 on the float32 masters: the eNTK of the completion log-likelihood on the probes
    (exact, or sketched per ``cfg.kernel_mode``), base vs each arm's final master, the trait
    kernel over the target and held-out tasks, and the trajectory over the arm's saved
    checkpoints, all from one :func:`run_trajectory` call (each kernel computed once).
    kernel_rescale_share: the comparison's ``rescale_share``."""
    from deltalens.kernel.run import run_trajectory, write_kernel_outputs

    probes = kernel_probes(run)
    per_task: dict[str, list[dict]] = {}
    for p in run.problems("heldout_test"):
        per_task.setdefault(p["task"], []).append(p)
    suite = run.problems("target_test")[: run.cfg.n_probes // 2] + [
        p for lines in per_task.values() for p in lines[: run.cfg.trait_lines]]
    numbers: dict = {}
    task_id = run.task("kernel: eNTK, traits, trajectory", len(arm_seeds(run)))
    for arm, seed in arm_seeds(run):
        steps = run.checkpoints(arm, seed, masters=True)
        if not steps or steps[-1] != run.final_master(arm, seed):
            raise DeltalensError(f"{run.arm_dir(arm, seed)}: the final master is missing; re-run the arm")
        report, arrays = run_trajectory([run.base_master, *steps], probes, tokenizer=run.tokenizer, traits=suite,
                                        mode=run.cfg.kernel_mode, dim=run.cfg.kernel_dim, device=run.cfg.device)
        write_kernel_outputs(analysis_dir(run, arm, seed), report, arrays)
        comp = report["comparison"]
        share = comp["rescale_share"]
        if share is None:
            excluded = {f"undefined ({comp.get('rescale_undefined_reason')})": 1}
        elif comp.get("gap_limited"):
            excluded = {"gap-limited kernel (Wedin bound > 1)": 1}
        else:
            excluded = None
        run.items.put("kernel_rescale_share", arm, [None if excluded else share], item_set="kernel", unit="share",
                      excluded=excluded)
        _append(numbers, "kernel_rescale_share", arm, share)
        run.advance(task_id)
    return numbers


#: the lab's own analyses in order, (name, function): the pipeline registers them (and the
#: curvature of deltalens.lab.curvature after them) into its ``ANALYSES`` registry
DEFAULT_ANALYSES = (("weights", weights_analysis), ("matched", matched_analysis), ("behaviour", behaviour_analysis),
            ("kernel", kernel_analysis))
