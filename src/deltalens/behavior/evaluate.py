"""Suite evaluation and forgetting (SPEC §7; RL's Razor, Shenfeld et al. 2025).

``evaluate``: per task of a suite, greedy accuracy (verified) and the mean loss (token-mean
negative log-likelihood of the gold answer given the prompt, then averaged over problems).
``forgetting``: the drop from the base model on held-out tasks for several tuned models, and its
linear fit against their KL from the base (slope, intercept, R²).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from deltalens.errors import DeltalensError


def linear_fit(x: Sequence[float], y: Sequence[float]) -> dict:
    """Least-squares line y ≈ intercept + slope·x and R² (``scipy.stats.linregress``, float64).

    Needs at least two distinct x; R² is ``None`` when y is constant (SS_tot = 0). With two
    points R² is 1 by construction; ``n`` is reported so a reader can tell.
    """
    import numpy as np
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0:
        raise DeltalensError("a fit needs at least two tuned models with different KL")
    fit = stats.linregress(x, y)
    r2 = None if np.ptp(y) == 0 else float(fit.rvalue) ** 2
    return {"slope": float(fit.slope), "intercept": float(fit.intercept), "r2": r2, "n": int(x.size)}


def evaluate(model_or_path, suite, *, tokenizer=None, verifier="numeric", max_new_tokens: int = 32,
             batch_size: int = 64, stop: list[str] | None = None, device: str | None = None,
             model_name: str | None = None, revision: str | None = None, trust_remote_code: bool = False,
             limit: int | None = None) -> dict:
    """Accuracy (greedy decoding, verified) and mean loss per task of a suite (``task`` field;
    problems without one belong to task "default"). ``limit``: the first N problems of each task;
    ``revision``, ``trust_remote_code``, ``tokenizer`` (object, folder or hub id):
    :func:`deltalens.models.load_model`."""
    import torch

    from deltalens.behavior.divergence import completion_logprobs
    from deltalens.behavior.formats import as_problems
    from deltalens.behavior.sampling import SamplingConfig, hf_generate, load_model
    from deltalens.behavior.verify import get_verifier

    probs = as_problems(suite, limit=limit)
    model, tok, name = load_model(model_or_path, tokenizer, device=device, revision=revision,
                                  trust_remote_code=trust_remote_code)
    name = model_name or name
    check = get_verifier(verifier)
    cfg = SamplingConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         stop=list(stop or []))
    cfg.check()
    try:
        rows = {r["id"]: r for batch in hf_generate(model, tok, [(p, [0]) for p in probs], cfg) for r in batch}
        correct = {p.id: check(rows[p.id]["completion"], p.answer)[1] for p in probs}
    finally:
        if hasattr(check, "close"):
            check.close()
    prompt_ids = [tok(p.prompt)["input_ids"] for p in probs]
    answer_ids = [tok(p.answer, add_special_tokens=False)["input_ids"] for p in probs]
    if any(not ids for ids in prompt_ids):
        raise DeltalensError("every suite prompt must encode to at least one token")
    losses = []
    for batch, start in zip(completion_logprobs(model, prompt_ids, answer_ids, batch_size=batch_size),
                            range(0, len(probs), batch_size)):
        for i, lp in enumerate(batch):
            tok_ids = torch.tensor(answer_ids[start + i], dtype=torch.long)
            losses.append(-lp.gather(-1, tok_ids[:, None]).mean().item())
    tasks: dict[str, dict] = {}
    for p, loss in zip(probs, losses):
        t = tasks.setdefault(p.task or "default", {"n": 0, "correct": 0, "loss_sum": []})
        t["n"] += 1
        t["correct"] += int(correct[p.id])
        t["loss_sum"].append(loss)
    out = {task: {"n": t["n"], "accuracy": t["correct"] / t["n"], "mean_loss": math.fsum(t["loss_sum"]) / t["n"]}
           for task, t in sorted(tasks.items())}
    from deltalens.fingerprint import model_fingerprint

    return {"model": name, "fingerprint": model_fingerprint(model_or_path, revision), "tasks": out,
            "mean_accuracy": math.fsum(t["accuracy"] for t in out.values()) / len(out),
            "mean_loss": math.fsum(t["mean_loss"] for t in out.values()) / len(out),
            "method": (f"accuracy: greedy decoding, max_new_tokens {max_new_tokens}, verifier "
                       f"{verifier if isinstance(verifier, str) else 'function'}; loss: mean NLL (nats) per gold-answer "
                       "token given the prompt, averaged over problems; means over tasks are unweighted")}


KL_FIELDS = {"forward_token": ("forward_kl", "token_mean"), "forward_sequence": ("forward_kl", "sequence_mean"),
             "reverse_token": ("reverse_kl", "token_mean"), "reverse_sequence": ("reverse_kl", "sequence_mean")}


def forgetting(base_eval: dict, tuned_evals: Sequence[dict], divergences: Sequence[dict], *,
               kl: str = "forward_token", tasks: Sequence[str] | None = None) -> dict:
    """Relate each tuned model's drop on held-out tasks to its KL from the base (RL's Razor).

    ``base_eval``/``tuned_evals``: :func:`evaluate` results; ``divergences``: :func:`divergence`
    results, matched to evaluations by the tuned model's name. Per model: accuracy drop =
    base − tuned mean accuracy over ``tasks`` (default: all tasks of the base evaluation), loss
    increase = tuned − base mean loss. Fits both against the chosen KL (``kl``, one of
    forward_token, forward_sequence, reverse_token, reverse_sequence).
    """
    if kl not in KL_FIELDS:
        raise DeltalensError(f"--kl must be one of {', '.join(KL_FIELDS)}, got {kl!r}")
    for ev in [base_eval, *tuned_evals]:
        if not isinstance(ev, dict) or "model" not in ev or not isinstance(ev.get("tasks"), dict):
            raise DeltalensError("an evaluation result lacks 'model' or 'tasks' (expected `deltalens evaluate` output)")
    for d in divergences:
        if not isinstance(d, dict) or "tuned" not in d or KL_FIELDS[kl][0] not in d:
            raise DeltalensError(f"a divergence result lacks 'tuned' or '{KL_FIELDS[kl][0]}' (expected divergence.json)")
    tasks = list(tasks or base_eval["tasks"])
    by_name = {}
    for d in divergences:
        if d["tuned"] in by_name:
            raise DeltalensError(f"two divergence results for tuned model {d['tuned']!r}")
        by_name[d["tuned"]] = d

    def mean_over(ev, field):
        missing = [t for t in tasks if t not in ev["tasks"]]
        if missing:
            raise DeltalensError(f"evaluation of {ev['model']!r} has no task {missing[0]!r}")
        return math.fsum(ev["tasks"][t][field] for t in tasks) / len(tasks)

    acc0, loss0 = mean_over(base_eval, "accuracy"), mean_over(base_eval, "mean_loss")
    models = []
    seen = set()
    for ev in tuned_evals:
        if ev["model"] in seen or ev["model"] == base_eval["model"]:
            raise DeltalensError(f"model name {ev['model']!r} conflicts with another evaluation")
        seen.add(ev["model"])
        if ev["model"] not in by_name:
            raise DeltalensError(f"no divergence result whose tuned model is {ev['model']!r} "
                                 f"(have: {', '.join(sorted(by_name)) or 'none'})")
        group, field = KL_FIELDS[kl]
        models.append({"model": ev["model"], "kl": by_name[ev["model"]][group][field],
                       "accuracy_drop": acc0 - mean_over(ev, "accuracy"),
                       "loss_increase": mean_over(ev, "mean_loss") - loss0})
    xs = [m["kl"] for m in models]
    return {"base": base_eval["model"], "kl": kl, "tasks": tasks, "models": models,
            "fit_accuracy_drop": linear_fit(xs, [m["accuracy_drop"] for m in models]),
            "fit_loss_increase": linear_fit(xs, [m["loss_increase"] for m in models]),
            "method": "ordinary least squares of each drop on KL, R^2 = 1 - SS_res/SS_tot"}
