"""What the lab's experiments share: the base and problems, training, per-matrix measures, gates,
claims and the files they write.

Every experiment runs on the lab's tiny base (``OUT/lab``: the main lab's ``problems`` and
``base`` stages, the base read from the lab's cache), trains with :func:`deltalens.lab.arms.train_arm`,
gates its arms with :mod:`deltalens.lab.gates`, and turns per-item values (``Items``) into claim
records with :func:`deltalens.lab.claims.claims_document`, so its ``OUT/claims.json`` has the
main claims' format (plus ``experiment``, ``settings``, ``machine`` and ``seconds``).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from deltalens.errors import DeltalensError
from deltalens.results import write_json

#: The Adam learning rates of every experiment's Adam arms: what the lab's tuning rule chose for the
#: tiny base at 24 steps (``deltalens.lab.config.QUICK_RATES``, docs/lab.md), kept fixed so that no
#: experiment re-runs nine trainings and no setting is chosen after a claim was seen.
def adam_rates() -> dict[str, float]:
    from deltalens.lab.config import QUICK_RATES

    return dict(QUICK_RATES)


@dataclass
class Context:
    """One experiment's output folder, the lab run that holds its base and problems, and progress."""

    name: str
    out: Path
    run: object  # deltalens.lab.pipeline.LabRun
    quick: bool
    seeds: int
    device: str
    threads: int | None
    started: float = field(default_factory=time.perf_counter)
    load_start: tuple = field(default_factory=lambda: os.getloadavg() if hasattr(os, "getloadavg") else ())

    @property
    def tokenizer(self):
        return self.run.tokenizer

    def task(self, description: str, total: int):
        return self.run.task(f"{self.name}: {description}", total)

    def advance(self, task_id, n: int = 1) -> None:
        self.run.advance(task_id, n)


def check_supported(name: str, base: str, supported: tuple[str, ...] = ("tiny",)) -> None:
    from deltalens.lab.config import check_base

    check_base(base)
    if base not in supported:
        raise DeltalensError(f"--experiment {name}: --base {base} is not supported for this experiment yet (it does "
                             f"not fit the CPU budget; docs/lab.md, 'Experiments'); use --base tiny")


def prepare(name: str, out: Path, *, quick: bool, device: str, threads: int | None, seeds: int,
            cache_dir, progress, console, show_progress: bool) -> Context:
    """The lab's ``problems`` and ``base`` stages in ``OUT/lab`` (the base from the cache when there)."""
    from deltalens.lab.config import default_config, quick_config
    from deltalens.lab.pipeline import LabRun, default_cache_dir, run_lab

    if seeds < 2:
        raise DeltalensError(f"--seeds must be ≥ 2 for an experiment (the interval needs seed replicates), got {seeds}")
    cfg = replace(quick_config("tiny") if quick else default_config("tiny"), device=device)
    run_lab(out / "lab", config=cfg, cache_dir=cache_dir, until="base", threads=threads, console=console,
            show_progress=show_progress)
    cache = default_cache_dir() if cache_dir is True else (Path(cache_dir) if cache_dir else None)
    return Context(name, out, LabRun(out / "lab", cfg, cache, progress), quick, seeds, device, threads)


#: ``--quick`` tunes and gates on the first this many dev problems (the default on all 200)
QUICK_DEV = 64


def dev_problems(ctx: Context) -> list[dict]:
    """The dev split the experiment tunes and gates on (the first :data:`QUICK_DEV` with ``--quick``)."""
    dev = ctx.run.problems("target_dev")
    return dev[:QUICK_DEV] if ctx.quick else dev


# ------------------------------------------------------------------------------------ training
def train_rows(ctx: Context, objective: str) -> list[dict]:
    """The training rows of ``sft`` (teacher demonstrations) or ``grpo`` (problems) on the lab's train split."""
    from deltalens.lab.arms import sft_rows

    train = ctx.run.problems("target_train")
    if objective == "sft":
        return sft_rows(train)
    return [{"prompt": p["prompt"], "answer": p["answer"], "task": p["task"]} for p in train]


def _snapshot_callback(steps):
    from transformers import TrainerCallback

    class Snapshots(TrainerCallback):
        """In-memory copies of every parameter after the chosen optimizer steps."""

        def __init__(self) -> None:
            self.steps, self.states = set(steps), {}

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in self.steps:
                self.states[state.global_step] = {n: t.detach().clone() for n, t in model.state_dict().items()}

    return Snapshots()


def _advance_callback(ctx: Context, task_id):
    from transformers import TrainerCallback

    class Advance(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ctx.advance(task_id)

    return Advance()


def train(ctx: Context, label: str, objective: str, cfg, seed: int, *, optim: str | None = None,
          snapshot_steps=(), extra_callbacks=(), reward=None):
    """Train ``objective`` (``sft`` or ``grpo``) from the base as arm ``label``; returns
    (model, log history, {step: state dict}). The log history goes to ``OUT/arms/<label>/seed<s>/``."""
    from deltalens.lab.arms import train_arm

    out = ctx.out / "arms" / label / f"seed{seed}"
    if out.exists():
        shutil.rmtree(out)
    snaps = _snapshot_callback(snapshot_steps)
    task_id = ctx.task(f"{label} seed {seed} (lr {cfg.learning_rate:g}{', ' + optim if optim else ''})", cfg.steps)
    model, history = train_arm(objective, base_dir=ctx.run.base_master, tokenizer=ctx.tokenizer,
                               rows=train_rows(ctx, objective), cfg=cfg, seed=seed, out_dir=out,
                               callbacks=[snaps, _advance_callback(ctx, task_id), *extra_callbacks],
                               device=ctx.device, optim=optim, reward=reward)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    write_json(out / "log_history.json", history)
    return model, history, snaps.states


def select_rate(ctx: Context, objective: str, arm_cfg, grid: tuple[float, ...], optim: str | None) -> dict:
    """The lab's tuning rule (:mod:`deltalens.lab.tuning`) over another grid or optimizer: train
    once per candidate with the selection seed, keep the best dev metric (ties: the smaller rate)."""
    from deltalens.lab.tuning import TUNE_SEED, dev_metric

    dev = dev_problems(ctx)
    results = []
    for lr in grid:
        cfg = replace(arm_cfg, learning_rate=lr)
        model, _, _ = train(ctx, f"tune-{objective}-{optim or 'adamw'}-lr{lr:g}", objective, cfg, TUNE_SEED,
                            optim=optim)
        results.append({"learning_rate": lr, "dev_score": round(dev_metric(objective, model, ctx.tokenizer, dev,
                                                                            cfg), 6)})
    best = max(results, key=lambda r: (r["dev_score"], -r["learning_rate"]))
    return {"objective": objective, "optimizer": optim or "adamw", "chosen": {"learning_rate": best["learning_rate"]},
            "candidates": results,
            "score": "dev mean reward" if objective == "grpo" else "minus dev loss on targets (nats/token)"}


# ------------------------------------------------------------------------------------ measures
def base_state(ctx: Context) -> dict:
    from safetensors.torch import load_file

    return load_file(str(ctx.run.base_master / "model.safetensors"))


def matrix_names(state: dict) -> list[str]:
    return sorted(n for n, t in state.items() if t.ndim == 2)


def matrix_values(w0, w1) -> dict:
    """SPEC §2, §4, §5 for one m×n pair, from the library's functions: ``angle`` (mean top-k principal
    angle, None when gap-limited or unresolved, reason in ``why``), ``nss``, ``rescale`` (rescale
    share), ``top_share`` (share of ‖Δ‖_F² in the blocks touching W0's top-k singular directions:
    1 − QQ block share), ``visible`` (share of entries with |Δ| ≥ half a bf16 ULP of w0) and ``fro``."""
    import torch

    from deltalens.lab.analyses import mean_angle_deg
    from deltalens.weights.sparsity import bf16_half_ulp
    from deltalens.weights.spectral import spectral_metrics

    w0, w1 = w0.to(torch.float32), w1.to(torch.float32)
    delta = (w1.double() - w0.double())
    fro = float(torch.linalg.matrix_norm(delta))
    out = {"fro": fro, "visible": float((delta.abs() >= bf16_half_ulp(w0).double()).double().mean())}
    if fro == 0.0:
        return {**out, "angle": None, "why": "Δ = 0", "nss": None, "rescale": None, "top_share": None}
    m = spectral_metrics(w0, w1, groups=("spectral", "frame"))
    angle, why = mean_angle_deg(m)
    first = m["by_k"][min(m["by_k"], key=int)]
    shares = first.get("block_shares") or {}
    full = m.get("nss_scope") in (None, "full")
    return {**out, "angle": None if why else angle, "why": why, "nss": m.get("nss") if full else None,
            "rescale": m.get("rescale_share") if m.get("rescale_scope") in (None, "full") else None,
            "top_share": 1.0 - shares["QQ"]["share"] if "QQ" in shares else None}


def bf16_unchanged(w0, w1) -> float:
    """Share of entries whose bf16 rounding is bitwise unchanged (the main lab's ``bf16_unchanged``
    on releases saved in bf16, SPEC §2)."""
    import torch

    from deltalens.weights.sparsity import bitwise_changed

    return 1.0 - float(bitwise_changed(w0.to(torch.bfloat16), w1.to(torch.bfloat16)).double().mean())


def put_matrix_items(items, arm: str, base: dict, state: dict, names: list[str], metrics: dict[str, str],
                     item_set: str = "matrices") -> dict[str, dict]:
    """Per-matrix values of ``state`` against ``base`` into ``items`` (metric name → key of
    :func:`matrix_values`, or ``angle_per_fro``: angle / ‖Δ‖_F); returns the values per matrix."""
    per = {n: matrix_values(base[n], state[n]) for n in names}
    for metric, key in metrics.items():
        vals, exc = [], {}
        for n in names:
            v = per[n]
            value = (v["angle"] / v["fro"] if v["angle"] is not None and v["fro"] > 0 else None) \
                if key == "angle_per_fro" else v[key]
            if value is None:
                reason = v["why"] or f"{key} undefined"
                exc[reason] = exc.get(reason, 0) + 1
            vals.append(value)
        items.put(metric, arm, vals, item_set=item_set, unit=UNITS.get(metric, key), excluded=exc or None, ids=names)
    return per


def put_bf16_items(items, arm: str, base: dict, state: dict) -> None:
    names = sorted(base)
    items.put("bf16_unchanged", arm, [bf16_unchanged(base[n], state[n]) for n in names], item_set="tensors",
              unit="fraction", weights=[int(base[n].numel()) for n in names], ids=names)


UNITS = {"bf16_unchanged": "fraction", "principal_angle_deg": "degrees", "angle_per_fro": "degrees per unit ‖Δ‖_F",
         "forward_kl": "nats/token"}


# ------------------------------------------------------------------------------------ gates, behaviour
class Gates:
    """The main lab's training gates (:func:`deltalens.lab.gates.gate`) for experiment arms."""

    def __init__(self, ctx: Context) -> None:
        self.ctx, self.doc, self._before = ctx, {}, {}
        self.dev = dev_problems(ctx)

    def _metric(self, objective: str, model) -> list[float]:
        from deltalens.lab.gates import dev_kind, dev_scores

        cfg = self.ctx.run.cfg
        return dev_scores(dev_kind(objective, cfg.base), model, self.ctx.tokenizer, self.dev,
                          max_new_tokens=cfg.arm.max_completion_length, temperature=cfg.arm.temperature,
                          n=cfg.dev_samples)

    def check(self, label: str, objective: str, seed: int, model) -> dict:
        from deltalens.lab.gates import dev_kind, format_share, gate

        if objective not in self._before:
            self._before[objective] = self._metric(objective, load_base(self.ctx))
        model.eval()
        fmt = (format_share(model, self.ctx.tokenizer, self.dev,
                            max_new_tokens=self.ctx.run.cfg.arm.max_completion_length) if objective == "sft" else None)
        g = gate(objective, self._before[objective], self._metric(objective, model), fmt,
                 kind=dev_kind(objective, self.ctx.run.cfg.base))
        self.doc.setdefault(label, {})[str(seed)] = g
        return g


def load_base(ctx: Context):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ctx.run.base_master, dtype=torch.float32).to(ctx.device).eval()


class ForwardKL:
    """Per target test prompt: token-mean KL(base ‖ model) along the base's samples, exact over the
    vocabulary (the main lab's ``forward_kl``: :func:`deltalens.lab.analyses.per_prompt_forward_kl`)."""

    def __init__(self, ctx: Context) -> None:
        from deltalens.lab.analyses import EVAL_SEED, base_kl_samples

        self.ctx = ctx
        self.test = ctx.run.problems("target_test")
        self.base = load_base(ctx)
        self.samples = base_kl_samples(self.base, ctx.tokenizer, self.test, ctx.run.cfg.kl_samples,
                                       ctx.run.cfg.arm.max_completion_length, EVAL_SEED)

    def __call__(self, model) -> list[float | None]:
        from deltalens.lab.analyses import per_prompt_forward_kl

        prompts, completions, owners = self.samples
        return per_prompt_forward_kl(self.base, model.eval(), self.ctx.tokenizer, prompts, completions, owners,
                                     len(self.test))


# ------------------------------------------------------------------------------------ claims, files
def machine(ctx: Context) -> dict:
    import torch

    load_end = os.getloadavg() if hasattr(os, "getloadavg") else ()
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "host": platform.node(),
            "cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_1min_start": round(ctx.load_start[0], 2) if ctx.load_start
            else None, "load_1min_end": round(load_end[0], 2) if load_end else None}


def finish(ctx: Context, *, items, gates: dict, arms: list[str], claims, metrics: dict, settings, curves: dict,
           tuning: dict | None = None, extra: dict | None = None, annotate=None) -> dict:
    """Evaluate the claims on ``items`` and write ``claims.json``, ``metrics.json``, ``curves.json``
    and ``report.html`` into the experiment's folder; returns the claims document."""
    from deltalens.lab.claims import claims_document

    doc = claims_document(items.doc, gates=gates, arms=arms, seeds=ctx.seeds, quick=ctx.quick, claims=claims,
                          metrics=metrics)
    seconds = round(time.perf_counter() - ctx.started, 1)
    doc.update(experiment=ctx.name, settings=asdict(settings), tuning=tuning, machine=machine(ctx), seconds=seconds,
               seeds_used=list(range(ctx.seeds)), **(extra or {}))
    if annotate is not None:
        annotate(doc)  # experiment-specific descriptive numbers beside a claim (no verdict)
    write_json(ctx.out / "metrics.json", {"items": items.doc})
    write_json(ctx.out / "curves.json", curves)
    write_json(ctx.out / "claims.json", doc)
    from deltalens.report.experiments import write_experiment_report

    write_experiment_report(ctx.out, [doc], [curves])
    return doc


def mean(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


# ------------------------------------------------------------------------------------ SFT on given rows
def train_sft_rows(ctx: Context, label: str, rows: list[dict], cfg, seed: int, *, base_dir=None):
    """SFT (the lab's ``sft`` arm) on the given prompt-completion ``rows`` from ``base_dir`` (default:
    the lab's base) as arm ``label``; returns (model, log history), the log history in
    ``OUT/arms/<label>/seed<s>/`` (the subliminal and narrow-sft experiments' own data)."""
    from deltalens.lab.arms import train_arm

    out = ctx.out / "arms" / label / f"seed{seed}"
    if out.exists():
        shutil.rmtree(out)
    task_id = ctx.task(f"{label} seed {seed} (lr {cfg.learning_rate:g})", cfg.steps)
    model, history = train_arm("sft", base_dir=Path(base_dir or ctx.run.base_master), tokenizer=ctx.tokenizer,
                               rows=rows, cfg=cfg, seed=seed, out_dir=out, callbacks=[_advance_callback(ctx, task_id)],
                               device=ctx.device)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    write_json(out / "log_history.json", history)
    return model, history


def write_rows(path: Path, rows: list[dict]) -> Path:
    """``rows`` as a JSONL file, written atomically (an experiment's data, kept for inspection)."""
    import json

    from deltalens.results import write_text

    return write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
