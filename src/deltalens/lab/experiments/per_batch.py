"""Experiment ``per-batch``: one SFT and one GRPO update from the base on the same prompts.

"It seems true on a per-batch basis": if RL rotates less only because it sees fewer samples,
a single update on a matched batch should show no difference. Per training seed, the lab's
GRPO trainer runs :attr:`Settings.batches` steps from the base with every update cancelled
(the gradients, already clipped at norm 1, are read and dropped before the optimizer step, so
each batch's gradient is taken at the base); it draws ``batch_size / num_generations`` prompts
per step and samples ``num_generations`` completions of each. The SFT gradient is taken at the
base on the same prompts with one teacher demonstration each (the completion-only mean NLL per
token, clipped at norm 1: the same gradient as ``num_generations`` copies of each, i.e. the same
number of sequences).

From each gradient g two updates: plain SGD (direction g) and Adam's first step (bias-corrected:
g/(|g| + 1e-8), a sign step). Every update is compared at one equal size per matrix: scaled to
‖Δ‖_F = lr_sft·√(m·n), the norm of an Adam sign step at the lab's SFT learning rate. Per update
and 2-D tensor: mean top-k principal angle, bf16-visible fraction (|Δ| ≥ half a bf16 ULP of w0),
rescale share of Δ in W0's frame, and the share of ‖Δ‖_F² touching W0's top-k singular
directions (1 − QQ block share, SPEC §5).

Rules: ``per_batch.rotation_sgd`` / ``per_batch.rotation_adam``: grpo − sft mean principal angle
at equal update norm over (batch, tensor) items < 0 (the interval: seeds and items). Beside them:
the visible-fraction and rescale-share differences. ``explained`` (descriptive, no verdict): the
least-squares fit of the per-item angle gap (grpo − sft, SGD) on the top-direction-share gap:
r² and the share of the mean angle gap the fit attributes to the mean share gap.

The eNTK per update (SPEC §6, exact: the tiny base fits): the kernel of the completion
log-likelihood on the first :attr:`Settings.kernel_probes` target test problems at W0 + Δ (every
2-D tensor updated at once; 1-D parameters stay at the base) against the base's kernel: mean
principal angle between the top-r eigenspaces (gap-limited kernels excluded) and the kernel's
rescale share; reported beside each claim as grpo − sft.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from deltalens.errors import DeltalensError
from deltalens.lab.claims import Claim, diff
from deltalens.lab.experiments import common

ADAM_EPS = 1e-8  # torch AdamW's default eps (the trainer's)


@dataclass(frozen=True)
class Settings:
    batches: int = 20
    batch_size: int = 128  # GRPO sequences per update (batch_size / num_generations prompts)
    seeds: int = 3
    kernel_probes: int = 16  # eNTK probes per update (0: no kernel measures)


QUICK = Settings(batches=5, batch_size=64, seeds=2, kernel_probes=8)
DEFAULT = Settings()

KINDS = ("sft-sgd", "grpo-sgd", "sft-adam", "grpo-adam")
MATRIX_METRICS = {"principal_angle_deg": "per (batch, 2-D tensor): mean top-k principal angle of W0 + Δ at equal ‖Δ‖_F",
           "visible_fraction": "per (batch, 2-D tensor): share of entries with |Δ| ≥ half a bf16 ULP of w0",
           "rescale_share": "per (batch, 2-D tensor): ‖diag UᵀΔV‖² / ‖Δ‖_F² (SPEC §5)",
           "top_share": "per (batch, 2-D tensor): share of ‖Δ‖_F² touching W0's top-k singular directions"}
KERNEL_METRICS = {"kernel_angle_deg": "per batch: mean principal angle between the top-r eNTK eigenspaces at W0 + Δ and "
                                      "W0 (gap-limited kernels excluded)",
                  "kernel_rescale_share": "per batch: rescale share of the eNTK change in the base's eigenbasis"}
METRICS = {**MATRIX_METRICS, **KERNEL_METRICS}


def _claim(opt: str) -> Claim:
    rl, sft = f"grpo-{opt}", f"sft-{opt}"
    name = "SGD" if opt == "sgd" else "Adam's first step"
    return Claim(f"per_batch.rotation_{opt}", f"per batch, RL rotates less than SFT at equal step size ({name})",
                 f"{rl} − {sft} mean top-k principal angle over (batch, 2-D tensor) items, both updates scaled to "
                 "the same ‖Δ‖_F per tensor, < 0",
                 (diff("principal_angle_deg", rl, sft, "negative", "degrees"),), (),
                 secondary=(diff("visible_fraction", rl, sft, "negative", "fraction"),
                            diff("rescale_share", rl, sft, "positive", "share"),
                            diff("top_share", rl, sft, "negative", "share"),
                            diff("kernel_angle_deg", rl, sft, "negative", "degrees"),
                            diff("kernel_rescale_share", rl, sft, "positive", "share")))


CLAIMS = (_claim("sgd"), _claim("adam"))


def _capture_callback(store: list):
    from transformers import TrainerCallback

    class Capture(TrainerCallback):
        """Read the (clipped) gradients before each optimizer step and drop them: no update happens."""

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads = {}
            for name, p in model.named_parameters():
                if p.grad is not None and p.ndim == 2:
                    grads[name] = p.grad.detach().clone()
                p.grad = None
            store.append(grads)

    return Capture()


def _recording_reward(log: list):
    from deltalens.lab.arms import correctness_reward

    def reward(prompts, completions, answer, task, **kwargs):
        log.append(list(dict.fromkeys(prompts)))
        return correctness_reward(prompts, completions, answer, task, **kwargs)

    return reward


def sft_gradient(model, tokenizer, problems: list[dict], max_grad_norm: float = 1.0) -> dict:
    """Gradient at ``model`` of the SFT arm's loss on ``problems`` (teacher demonstration + eos,
    completion tokens only, mean NLL per token), clipped at ``max_grad_norm`` like the trainer."""
    import torch

    from deltalens.lab.arms import sft_target

    seqs, labels = [], []
    for p in problems:
        prompt = tokenizer(p["prompt"])["input_ids"]
        completion = tokenizer(sft_target(p), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        seqs.append(prompt + completion)
        labels.append([-100] * len(prompt) + completion)
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    lab = torch.tensor([s + [-100] * (width - len(s)) for s in labels])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, attention_mask=mask, labels=lab).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None and p.ndim == 2}
    model.zero_grad(set_to_none=True)
    return out


def equal_norm_update(grad, size: float, adam: bool):
    """−size · d/‖d‖_F with d = g (SGD) or g/(|g| + eps) (Adam's bias-corrected first step)."""
    d = grad.double()
    if adam:
        d = d / (d.abs() + ADAM_EPS)
    norm = float(d.norm())
    return None if norm == 0.0 else (-size / norm) * d


class Kernel:
    """The exact eNTK of the completion log-likelihood on fixed probes, at the base and at W0 + Δ."""

    def __init__(self, model, tokenizer, probes: list[dict]) -> None:
        from deltalens.kernel.outputs import encode_probes, model_context_length

        self.model = model
        self.batch = encode_probes(tokenizer, probes, max_length=model_context_length(model))
        self.k0 = self._kernel()

    def _kernel(self):
        from deltalens.kernel.ntk import empirical_ntk
        from deltalens.kernel.outputs import completion_logprob

        return empirical_ntk(self.model, completion_logprob, self.batch, mode="exact", gradient_threads=None).matrix

    def measure(self, base: dict, deltas: dict) -> tuple[float | None, float | None, str | None]:
        """(mean top-r eigenspace angle, rescale share, why excluded) of the kernel at W0 + Δ vs W0."""
        import torch

        from deltalens.kernel.compare import compare_kernels

        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, d in deltas.items():
                params[name].add_(d.to(params[name].dtype))
            try:
                cmp = compare_kernels(self.k0, self._kernel())
            finally:
                for name in deltas:
                    params[name].copy_(base[name])
        angles = cmp["angles_deg"]
        why = "gap-limited kernel (Wedin bound > 1)" if cmp.get("gap_limited") else None
        share = cmp.get("rescale_share")
        return (None if why else sum(angles) / len(angles)), share, why or (
            None if share is not None else f"rescale share undefined ({cmp.get('rescale_undefined_reason')})")


def explained(gap: list[float], share_gap: list[float]) -> dict:
    """Least-squares fit gap = a + b·share_gap over items: r², slope, and b·mean(share_gap)/mean(gap)."""
    import numpy as np

    y, x = np.asarray(gap, dtype=np.float64), np.asarray(share_gap, dtype=np.float64)
    if y.size < 3 or float(x.var()) == 0.0:
        return {"n": int(y.size), "r_squared": None, "slope": None, "explained_share": None,
                "text": "too few items to fit the angle gap on the top-direction share gap"}
    b = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    r = float(np.corrcoef(x, y)[0, 1])
    share = b * float(x.mean()) / float(y.mean()) if y.mean() != 0 else None
    text = (f"SGD, per (seed, batch, tensor) item (n = {y.size}): the grpo − sft angle gap regressed on the gap in "
            f"the share of ‖Δ‖² touching W0's top-k directions: r² = {r * r:.3g}, slope {b:.3g} degrees per unit "
            f"share; the fit attributes {share:.3g} of the mean angle gap ({y.mean():.3g}°) to the mean share gap "
            f"({x.mean():.3g})." if share is not None and math.isfinite(share) else
            f"SGD: r² = {r * r:.3g} (mean angle gap 0: no share to attribute)")
    return {"n": int(y.size), "r_squared": r * r, "slope": b, "mean_gap_deg": float(y.mean()),
            "mean_share_gap": float(x.mean()), "explained_share": share, "text": text}


def run(ctx: common.Context, settings: Settings) -> dict:
    from deltalens.lab.analyses import Items

    if settings.batches < 1:
        raise DeltalensError(f"per-batch: batches must be ≥ 1, got {settings.batches}")
    rates = common.adam_rates()
    arm_cfg = replace(ctx.run.cfg.arm, steps=settings.batches, batch_size=settings.batch_size,
                      learning_rate=rates["grpo"])
    base = common.base_state(ctx)
    names = common.matrix_names(base)
    by_prompt = {p["prompt"]: p for p in ctx.run.problems("target_train")}
    items = Items()
    gaps, share_gaps = [], []
    per_batch_curve = {k: [] for k in KINDS}
    model = common.load_base(ctx)
    kernel = None
    if settings.kernel_probes > 0:
        from deltalens.lab.analyses import kernel_probes

        kernel = Kernel(model, ctx.tokenizer, kernel_probes(ctx.run)[: settings.kernel_probes])
    kernel_curve = {k: [] for k in KINDS}
    for seed in range(ctx.seeds):
        grads_rl, prompts = [], []
        common.train(ctx, "grpo-gradients", "grpo", arm_cfg, seed, extra_callbacks=[_capture_callback(grads_rl)],
                     reward=_recording_reward(prompts))
        if len(grads_rl) != settings.batches or len(prompts) != settings.batches:
            raise DeltalensError(f"per-batch: captured {len(grads_rl)} gradients for {len(prompts)} prompt batches, "
                                 f"expected {settings.batches} of each")
        task_id = ctx.task(f"seed {seed}: SFT gradients and equal-norm measures", settings.batches)
        values = {k: {m: [] for m in MATRIX_METRICS} for k in KINDS}
        excluded = {k: {} for k in KINDS}
        ids = []
        curve = {k: [] for k in KINDS}
        kvals = {k: {m: [] for m in KERNEL_METRICS} for k in KINDS}
        kexcluded = {k: {} for k in KINDS}
        for b in range(settings.batches):
            g = {"sft": sft_gradient(model, ctx.tokenizer, [by_prompt[p] for p in prompts[b]]), "grpo": grads_rl[b]}
            angles = {k: [] for k in KINDS}
            deltas = {k: {} for k in KINDS}
            for name in names:
                ids.append(f"batch{b}:{name}")
                size = rates["sft"] * math.sqrt(base[name].numel())
                got, made = _measure_matrix(base[name], {kind: g[kind.split("-")[0]].get(name) for kind in KINDS}, size)
                for kind, v in got.items():
                    if kind in made:
                        deltas[kind][name] = made[kind]
                    _record(v, values[kind], excluded[kind])
                    angles[kind].append(v["angle"])
                a, s = got["grpo-sgd"], got["sft-sgd"]
                if None not in (a["angle"], s["angle"], a["top_share"], s["top_share"]):
                    gaps.append(a["angle"] - s["angle"])
                    share_gaps.append(a["top_share"] - s["top_share"])
            for kind in KINDS:
                curve[kind].append(common.mean(angles[kind]))
                if kernel is not None:
                    k_angle, k_share, why = kernel.measure(base, deltas[kind])
                    kvals[kind]["kernel_angle_deg"].append(k_angle)
                    kvals[kind]["kernel_rescale_share"].append(k_share)
                    if why:
                        kexcluded[kind][why] = kexcluded[kind].get(why, 0) + 1
            ctx.advance(task_id)
        _put_items(items, values, excluded, ids, kvals if kernel is not None else None, kexcluded, settings.batches)
        for kind in KINDS:
            per_batch_curve[kind].append(curve[kind])
            kernel_curve[kind].append(kvals[kind]["kernel_angle_deg"])
    fit = explained(gaps, share_gaps)
    curves = _figures(ctx.name, settings.batches, ctx.seeds, per_batch_curve, kernel_curve if kernel is not None else None,
                      gaps, share_gaps)

    def annotate(doc: dict) -> None:
        for c in doc["claims"]:
            if c["id"] == "per_batch.rotation_sgd":
                c["explained"] = fit

    return common.finish(ctx, items=items, gates={}, arms=list(KINDS), claims=CLAIMS, metrics=METRICS,
                         settings=settings, curves=curves, annotate=annotate,
                         tuning={"sft": {"chosen": {"learning_rate": rates["sft"]},
                                         "source": "sets the equal update size lr·√(m·n)"}})


def _put_items(items, values: dict, excluded: dict, ids: list, kvals: dict | None, kexcluded: dict,
               batches: int) -> None:
    """One seed's per-(batch, matrix) measures and, with a kernel, per-batch kernel measures."""
    for kind in KINDS:
        for metric in MATRIX_METRICS:
            items.put(metric, kind, values[kind][metric], item_set="updates", unit=common.UNITS.get(metric, metric),
                      ids=ids, excluded=excluded[kind] if metric == "principal_angle_deg" else None)
        for metric in KERNEL_METRICS if kvals is not None else ():
            items.put(metric, kind, kvals[kind][metric], item_set="kernel-updates",
                      unit="degrees" if metric == "kernel_angle_deg" else "share",
                      ids=[f"batch{b}" for b in range(batches)],
                      excluded=kexcluded[kind] if metric == "kernel_angle_deg" else None)


def _measure_matrix(w0, grads: dict, size: float) -> tuple[dict, dict]:
    """Per kind: the equal-norm update of its gradient on one matrix and its measures
    (``{kind: values}``, ``{kind: Δ}`` for the kinds whose gradient is not zero)."""
    import torch

    got, deltas = {}, {}
    for kind, grad in grads.items():
        delta = None if grad is None else equal_norm_update(grad, size, adam=kind.endswith("adam"))
        if delta is None:
            got[kind] = {"angle": None, "why": "zero gradient", "visible": None, "rescale": None, "top_share": None}
        else:
            got[kind] = common.matrix_values(w0, (w0.to(torch.float64) + delta).to(torch.float32))
            deltas[kind] = delta
    return got, deltas


def _record(v: dict, values: dict, excluded: dict) -> None:
    """Append one matrix's measures to ``values[metric]``, counting the undefined ones by reason."""
    for metric, key in (("principal_angle_deg", "angle"), ("visible_fraction", "visible"),
                        ("rescale_share", "rescale"), ("top_share", "top_share")):
        values[metric].append(v[key])
        if v[key] is None:
            reason = v.get("why") or f"{key} undefined"
            excluded[reason] = excluded.get(reason, 0) + 1


def _figures(name: str, batches: int, seeds: int, per_batch_curve: dict, kernel_curve: dict | None, gaps: list,
             share_gaps: list) -> dict:
    """The experiment's figures: angles per batch (and the kernel's), and the angle gap vs the share gap."""
    xs = [list(range(batches))] * seeds
    return {"experiment": name, "figures": [
        {"title": "per-batch: one update from the base, equal ‖Δ‖_F per tensor",
         "panels": [{"title": f"mean principal angle per batch ({opt})", "x_label": "batch", "y_label": "degrees",
                     "series": [{"label": k, "x": xs, "y": per_batch_curve[k]} for k in KINDS if k.endswith(opt)]}
                    for opt in ("sgd", "adam")]
                   + ([{"title": f"eNTK top-r angle per batch ({opt})", "x_label": "batch", "y_label": "degrees",
                        "series": [{"label": k, "x": xs, "y": kernel_curve[k]} for k in KINDS if k.endswith(opt)]}
                       for opt in ("sgd", "adam")] if kernel_curve is not None else [])},
        {"title": "per-batch: how much of the angle gap follows the top-direction share (SGD)",
         "panels": [{"title": "grpo − sft per (seed, batch, tensor)", "x_label": "top-k share gap (grpo − sft)",
                     "y_label": "angle gap (degrees)", "kind": "scatter",
                     "series": [{"label": "items", "x": [share_gaps], "y": [gaps]}]}]}]}
