"""The lab's curvature analysis (SPEC §9 on the lab's models): the items of the three curvature claims.

For the base and each arm's final float32 master (every seed), on the kernel's probes cut into
groups of :data:`GROUP_SIZE`, :func:`deltalens.curvature.run.curvature_block` finds the top
:data:`TOP` eigenpairs of H, G and the three eNTKs and :func:`~deltalens.curvature.run.curvature_report`
turns them into angles with their random baselines and PP shares; base → arm,
:func:`~deltalens.curvature.run.pair_comparison` gives the rotation of each operator's top-r
subspace. A probe group is one *item* (item set ``curvature-probes``, the same groups for every
model, so arms are paired on them); the claims' intervals run over seeds and probe groups.

Per model and group (``items[metric][model][seed][group]``):

- ``curv_margin_<link>_deg``: the random-subspace baseline's mean principal angle minus the
  measured mean principal angle between the two operators' top-r subspaces (degrees; > 0 means
  closer than random), for ``h_gn`` (H vs G) and ``gn_entk_weighted`` / ``gn_entk_logits`` /
  ``gn_entk_logprob`` (G vs each eNTK);
- ``curv_pp_log_ratio_<kind>``: log of the pooled §5 PP share of the kind's top-r directions in
  the weights' top-k singular subspaces over its random baseline (means over the r directions);
- per arm and seed: ``curv_rotation_<kind>_deg``, the mean principal angle between the base's and
  the arm's top-r subspaces; ``curv_log_update_norm``, log ‖Δθ‖₂ of the whole model (one item).

Full outputs land in ``OUT/analysis/base/curvature.json`` and ``OUT/analysis/<arm>-seed<s>/curvature.json``.
On a released base off CUDA (``--base smollm2`` on a CPU: one G v of SmolLM2 costs ~48 s) nothing
is computed and every item is ``None`` with the reason, so the claims say why they are inconclusive.
"""

from __future__ import annotations

import math
import time

from deltalens.lab.analyses import analysis_dir, arm_seeds, kernel_probes
from deltalens.results import write_json

TOP = 4  # eigenpairs per operator: small, for the lab's time budget
GROUP_SIZE = 4  # probes per group (the log-prob eNTK of n probes has n eigenvectors: ≥ TOP)
MAX_GROUPS = 4  # groups taken from the kernel's probes (default: 64 probes → 4)
#: with ``--quick``: 9 models × 2 groups × ~5.5 s of CPU per (model, group) fits its 4-minute budget, 4 would not
QUICK_GROUPS = 2
ITEM_SET = "curvature-probes"
LINKS = {"h_gn": "hessian_vs_gauss_newton", "gn_entk_weighted": "gauss_newton_vs_entk_weighted",
         "gn_entk_logits": "gauss_newton_vs_entk_logits", "gn_entk_logprob": "gauss_newton_vs_entk_logprob"}
PP_KINDS = ("gauss_newton", "hessian", "entk_logprob")
ROTATION_KINDS = ("gauss_newton", "hessian")
MODEL_METRICS = ([f"curv_margin_{link}_deg" for link in LINKS] + [f"curv_pp_log_ratio_{k}" for k in PP_KINDS])
PAIR_METRICS = [f"curv_rotation_{k}_deg" for k in ROTATION_KINDS]


def skip_reason(cfg) -> str | None:
    """Why the stage does not run under this configuration (None: it runs)."""
    if cfg.base != "tiny" and not str(cfg.device).startswith("cuda"):
        return (f"not run: --base {cfg.base} on {cfg.device} (one Gauss-Newton product of SmolLM2-135M costs "
                "~48 s on a CPU, a top-r Lanczos ~21 of them per operator and probe group); runs on CUDA")
    return None


def probe_groups(run) -> list[list[dict]]:
    """The kernel's probes (the first ``n_probes`` target test problems) in groups of GROUP_SIZE,
    at most MAX_GROUPS of them (QUICK_GROUPS with ``--quick``); a last partial group is dropped."""
    probes = kernel_probes(run)
    n = min(len(probes) // GROUP_SIZE, QUICK_GROUPS if run.cfg.quick else MAX_GROUPS)
    return [probes[i * GROUP_SIZE:(i + 1) * GROUP_SIZE] for i in range(n)]


def _mean(values) -> float:
    return math.fsum(values) / len(values)


def model_items(report: dict) -> dict[str, float | None]:
    """One probe group of one model: the margins and PP log ratios of :data:`MODEL_METRICS`
    from a :func:`~deltalens.curvature.run.curvature_report`."""
    out: dict[str, float | None] = {}
    for link, key in LINKS.items():
        out[f"curv_margin_{link}_deg"] = _mean(report["angles_baseline_deg"][key]) - _mean(report["angles_deg"][key])
    for kind in PP_KINDS:
        pp = report["pp_share"][kind]
        ok = pp["pooled"] is not None and _mean(pp["pooled"]) > 0
        out[f"curv_pp_log_ratio_{kind}"] = math.log(_mean(pp["pooled"]) / _mean(pp["pooled_baseline"])) if ok else None
    return out


def pair_items(pair: dict) -> dict[str, float]:
    """One probe group, base → arm: the mean rotation angle of :data:`PAIR_METRICS`."""
    return {f"curv_rotation_{k}_deg": _mean(pair[k]["angles_deg"]) for k in ROTATION_KINDS}


def _skip(run, reason: str) -> dict:
    items = run.items
    models = [("base", None)] + arm_seeds(run)
    for arm, seed in models:
        metrics = MODEL_METRICS + ([] if seed is None else PAIR_METRICS + ["curv_log_update_norm"])
        for metric in metrics:
            item_set = "curvature-update" if metric == "curv_log_update_norm" else ITEM_SET
            items.put(metric, arm, [None], item_set=item_set, unit=_unit(metric), excluded={reason: 1})
    write_json(run.out / "analysis" / "curvature-skipped.json", {"reason": reason})
    return {}


def _unit(metric: str) -> str:
    if metric.startswith("curv_pp_log_ratio"):
        return "log ratio"
    return "log" if metric == "curv_log_update_norm" else "degrees"


def curvature_analysis(run) -> dict:
    """SPEC §9 on the base and every arm's final float32 master, per probe group (see the module
    docstring); fills ``run.items`` and writes ``curvature.json`` per model. Groups are the outer
    loop so that one group's base spectra are held at a time (P × r × 5 float64 per model)."""
    import torch

    from deltalens.curvature.run import (
        curvature_block, curvature_report, encode_all, load_for_curvature, pair_comparison,
    )
    from deltalens.kernel.run import parameter_delta

    reason = skip_reason(run.cfg)
    if reason is not None:
        return _skip(run, reason)
    started, cpu = time.perf_counter(), time.process_time()
    groups = probe_groups(run)
    if not groups:
        from deltalens.errors import DeltalensError

        raise DeltalensError(f"curvature: n_probes = {run.cfg.n_probes} gives no group of {GROUP_SIZE} probes")
    models = [("base", None, run.base_master)] + [(arm, seed, run.final_master(arm, seed)) for arm, seed in arm_seeds(run)]
    nets = {(arm, seed): load_for_curvature(path, device=run.cfg.device, tokenizer=run.tokenizer)[0]
            for arm, seed, path in models}
    base = nets[("base", None)]
    flat = {}
    for arm, seed, _ in models[1:]:
        delta = parameter_delta(base, nets[(arm, seed)])
        # float32 on the host (the masters' own precision): 0.5 GB per model for SmolLM2, not 1 GB
        flat[(arm, seed)] = torch.cat([d.reshape(-1).float() for d in delta.values()]).cpu()
    values = {(arm, seed): {m: [] for m in MODEL_METRICS + PAIR_METRICS} for arm, seed, _ in models}
    docs = {(arm, seed): [] for arm, seed, _ in models}
    task_id = run.task(f"curvature: top-{TOP} H, G, eNTK on {len(groups)} probe groups", len(groups) * len(models))
    for g, probes in enumerate(groups):
        batch, n = encode_all(base, run.tokenizer, probes)
        base_block = None
        for arm, seed, _ in models:
            net = nets[(arm, seed)]
            block, products = curvature_block(net, batch, top=TOP, seed=g)
            report = curvature_report(net, block, n_probes=n, vocab=None, seed=g)
            doc = {"group": g, "probes": [p["prompt"] for p in probes], "report": report}
            for metric, value in model_items(report).items():
                values[(arm, seed)][metric].append(value)
            if seed is None:
                base_block = block
            else:
                # the pair's r products per operator act on the same block (the whole model) as the base's
                doc["pair"] = pair_comparison(base_block, block, products, flat[(arm, seed)].double(), seed=g)
                for metric, value in pair_items(doc["pair"]).items():
                    values[(arm, seed)][metric].append(value)
            products.release()
            docs[(arm, seed)].append(doc)
            run.advance(task_id)
    numbers: dict = {}
    ids = [f"group{g}" for g in range(len(groups))]
    for arm, seed, _ in models:
        metrics = MODEL_METRICS + ([] if seed is None else PAIR_METRICS)
        for metric in metrics:
            vals = values[(arm, seed)][metric]
            n_none = sum(v is None for v in vals)
            run.items.put(metric, arm, vals, item_set=ITEM_SET, unit=_unit(metric), ids=ids,
                          excluded={"no pooled PP share (no 2-D matrix, or a zero share)": n_none} if n_none else None)
        if seed is not None:
            norm = float(torch.linalg.vector_norm(flat[(arm, seed)].double()))
            run.items.put("curv_log_update_norm", arm, [math.log(norm) if norm > 0 else None],
                          item_set="curvature-update", unit="log",
                          excluded={"Δθ = 0": 1} if norm == 0 else None)
            numbers.setdefault("curv_rotation_gauss_newton_deg", {}).setdefault(arm, []).append(
                _mean(values[(arm, seed)]["curv_rotation_gauss_newton_deg"]))
        out = analysis_dir(run, arm, seed)
        write_json(out / "curvature.json", {"top": TOP, "group_size": GROUP_SIZE, "groups": docs[(arm, seed)]})
    write_json(run.out / "analysis" / "curvature-seconds.json",
               {"wall": round(time.perf_counter() - started, 2), "cpu": round(time.process_time() - cpu, 2),
                "models": len(models), "groups": len(groups), "top": TOP, "group_size": GROUP_SIZE})
    return numbers
