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


# ----------------------------------------------------------------------------- weights
def weights_analysis(run) -> dict:
    """SPEC §2–§5 on each arm's final bf16 release against the base's bf16 release.

    bf16_unchanged_fraction: the diff's parameter-weighted ``unchanged_bitwise``;
    principal_angle_mean_deg: mean over 2-D tensors of (mean left + mean right angle)/2 at the
    default k; nss: mean NSS over 2-D tensors.
    """
    from deltalens.weights.diff import run_diff

    numbers: dict = {}
    for arm, seed in arm_seeds(run):
        out = analysis_dir(run, arm, seed)
        res = run_diff(run.base_release, run.final_release(arm, seed), out=out, device=run.cfg.device)
        angles = []
        for row in res.rows:
            by_k = row.get("by_k")
            if by_k:
                first = by_k[min(by_k, key=int)]
                angles.append((first["angle_mean_left_deg"] + first["angle_mean_right_deg"]) / 2)
        _append(numbers, "bf16_unchanged_fraction", arm, res.summary["unchanged_bitwise"])
        _append(numbers, "principal_angle_mean_deg", arm, _mean(angles))
        _append(numbers, "nss", arm, _mean(r.get("nss") for r in res.rows))
        tracking = run.arm_dir(arm, seed) / "tracking.jsonl"
        if tracking.is_file():
            shutil.copyfile(tracking, out / "tracking.jsonl")
    return numbers


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


def behaviour_analysis(run) -> dict:
    """SPEC §7 for the base and every arm on the target task's test problems.

    pass_at_1 / pass_at_kmax (k = eval_samples), srr / nscr at k = eval_samples (support vs the
    base), forward_kl (token-mean KL(base‖arm), exact over the vocabulary along the base's
    samples), forgetting (base − arm mean greedy accuracy on the held-out tasks). Also writes
    the RL's Razor fit of forgetting on KL to ``OUT/analysis/forgetting.json``.
    """
    from deltalens.behavior import divergence, forgetting, passk, sample, support

    cfg = run.cfg
    tok = run.tokenizer
    target_task = run.family[0]
    target = run.problems("target_test")
    heldout = run.problems("heldout_test")
    new_tokens = cfg.arm.max_completion_length
    models = [("base", None, run.base_release)] + [
        (f"{arm}-seed{seed}", (arm, seed), run.final_release(arm, seed)) for arm, seed in arm_seeds(run)]
    task_id = run.task("behaviour: sample, verify, KL, held-out", len(models))
    samples, evals = {}, {}
    for name, _, path in models:
        samples[name] = sample(path, target, n=cfg.eval_samples, tokenizer=tok, temperature=cfg.arm.temperature,
                               max_new_tokens=new_tokens, seed=EVAL_SEED, model_name=name,
                               verifier=task_verifier(target_task), device=cfg.device,
                               out=run.out / "analysis" / "samples" / f"{name}.jsonl")
        evals[name] = _evaluate_heldout(path, name, heldout, tok, new_tokens, cfg.device)
        run.advance(task_id)
    write_json(analysis_dir(run, "base") / "eval.json", evals["base"])
    numbers: dict = {}
    base_curve = passk([samples["base"]])["models"]["base"]
    _append(numbers, "pass_at_1", "base", base_curve["pass_at_k"][0])
    _append(numbers, "pass_at_kmax", "base", base_curve["pass_at_k"][-1])
    divergences = []
    for name, key, path in models[1:]:
        arm, seed = key
        out = analysis_dir(run, arm, seed)
        pk = passk([samples["base"], samples[name]], problems=target, base="base", tuned=name)
        write_json(out / "passk.json", pk)
        sp = support(samples["base"], samples[name])
        write_json(out / "support.json", sp)
        dv = divergence(run.base_release, path, target, tokenizer=tok, n_samples=cfg.kl_samples,
                        max_new_tokens=new_tokens, seed=EVAL_SEED, base_name="base", tuned_name=name, device=cfg.device,
                        extractor=lambda text: extract_answer(target_task, text))
        write_json(out / "divergence.json", dv)
        divergences.append(dv)
        write_json(out / "eval.json", evals[name])
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
        _append(numbers, "kernel_rescale_share", arm, report["comparison"]["rescale_share"])
        run.advance(task_id)
    return numbers


ANALYSES = (("weights", weights_analysis), ("behaviour", behaviour_analysis), ("kernel", kernel_analysis))
