"""``deltalens lab`` as a library function: stages, stage-level resume, progress.

Stages, in order (each writes ``OUT/stages/<name>.json`` when finished; a re-run with the same
configuration skips finished stages, and a half-finished arm run is discarded and redone):

1. ``problems``: the task family's problem files (SPEC §7 JSONL) under ``OUT/problems/``.
2. ``base``: pre-train the base (or copy it from the cache, keyed by :func:`config.base_hash`).
3. ``tune``: each objective's learning rate from its own dev metric (:mod:`deltalens.lab.tuning`;
   cached per base), ``OUT/tuning.json``.
4. ``arm-<arm>-seed<s>``: fine-tune each arm for each seed from the base (one process, TRL).
5. ``gates``: each arm's dev metric before and after training (:mod:`deltalens.lab.gates`),
   ``OUT/gates.json``.
6. ``analyses``: every registered analysis (:data:`ANALYSES`; by default the weight diff, the
   matched-update-size path, the behaviour comparison and the kernels of
   :mod:`deltalens.lab.analyses`, then the curvature of :mod:`deltalens.lab.curvature`) fills
   per-item values ``items[metric][arm][seed][item]`` (``run.items``) and returns per-seed means ``{metric: {arm: [per seed]}}``, both written to
   ``OUT/metrics.json`` (each analysis's seconds go to the stage's marker); more plug in with
   :func:`register_analysis`.
7. ``claims``: :func:`deltalens.lab.claims.claims_document` on those items and the gates,
   ``OUT/claims.json``, and the self-contained ``OUT/report.html``.

Each is a :class:`Stage` (name, function, the upstream stages whose re-run redoes it) from
:func:`plan_stages`; arms come from the registry :data:`deltalens.lab.arms.REGISTRY`.
The output layout is documented in ``docs/lab.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

from deltalens.errors import DeltalensError
from deltalens.lab.config import TEST_POOL, LabConfig, base_hash, check_base, default_config, quick_config, run_hash
from deltalens.lab.release import checkpoint_steps, step_dirname
from deltalens.lab.tasks import generate_problems, task_family
from deltalens.lab.word_tasks import chat_renderer
from deltalens.results import append_jsonl, read_json, read_jsonl, write_folder, write_json, write_text

#: name -> function(LabRun) -> {metric: {arm: [value per seed]}}
ANALYSES: dict[str, Callable[[LabRun], dict]] = {}


def register_analysis(name: str, fn: Callable[[LabRun], dict]) -> None:
    """Add an analysis to the ``analyses`` stage (runs in registration order; later metrics overwrite;
    per-item values go to ``run.items``)."""
    ANALYSES[name] = fn


def default_cache_dir() -> Path:
    """``$DELTALENS_CACHE/lab`` or ``~/.cache/deltalens/lab``."""
    root = os.environ.get("DELTALENS_CACHE") or Path.home() / ".cache" / "deltalens"
    return Path(root) / "lab"


class LabRun:
    """Paths and state of one lab run in ``out`` (see ``docs/lab.md`` for the layout)."""

    def __init__(self, out: Path, cfg: LabConfig, cache_dir: Path | None, progress=None) -> None:
        self.out, self.cfg, self.cache_dir, self.progress = Path(out), cfg, cache_dir, progress
        self.hash = run_hash(cfg)
        self._tokenizer = None
        from deltalens.lab.analyses import Items

        self.items = Items()  # filled by the analyses stage

    # -- layout ---------------------------------------------------------------------------
    @property
    def problems_dir(self) -> Path:
        return self.out / "problems"

    @property
    def base_dir(self) -> Path:
        return self.out / "base"

    @property
    def base_master(self) -> Path:
        return self.base_dir / "master"

    @property
    def base_release(self) -> Path:
        return self.base_dir / "release"

    def arm_dir(self, arm: str, seed: int) -> Path:
        return self.out / "arms" / arm / f"seed{seed}"

    def final_release(self, arm: str, seed: int) -> Path:
        return self.arm_dir(arm, seed) / "checkpoints" / step_dirname(self.cfg.arm.steps)

    def final_master(self, arm: str, seed: int) -> Path:
        return self.arm_dir(arm, seed) / "masters" / step_dirname(self.cfg.arm.steps)

    def seeds(self) -> range:
        return range(self.cfg.seeds)

    @property
    def family(self) -> tuple[str, tuple[str, ...]]:
        """``(target task, held-out tasks)`` of this run's base."""
        return task_family(self.cfg.base)

    def pretrained_source(self) -> Path:
        """The float32 folder a released base (``smollm2``) starts from: converted once into the
        cache, or into ``OUT/.source`` without one."""
        from deltalens.lab.smollm2 import converted_folder

        return converted_folder(self.cache_dir if self.cache_dir is not None else self.out / ".source")

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.cfg.base == "tiny":
                from deltalens.lab.tokenizer import build_char_tokenizer

                self._tokenizer = build_char_tokenizer(model_max_length=self.cfg.model.max_position_embeddings)
            else:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.pretrained_source())
                self._tokenizer.padding_side = "left"  # the lab's batched samplers pad on the left
        return self._tokenizer

    def problems(self, name: str) -> list[dict]:
        return read_jsonl(self.problems_dir / f"{name}.jsonl", required=("id", "prompt", "answer", "task"))

    # -- stage bookkeeping ----------------------------------------------------------------
    def marker(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage}.json"

    def done(self, stage: str) -> bool:
        """Finished under this configuration (and, for ``analyses``, the same registered analyses)."""
        path = self.marker(stage)
        if not path.is_file():
            return False
        info = read_json(path)
        if stage == "analyses" and info.get("analyses") != list(ANALYSES):
            return False
        return info.get("run_hash") == self.hash

    def checkpoints(self, arm: str, seed: int, *, masters: bool = False) -> list[Path]:
        """The arm's saved checkpoint folders in step order (bf16 releases, or float32 masters)."""
        root = self.arm_dir(arm, seed) / ("masters" if masters else "checkpoints")
        return sorted(p for p in root.glob("step-*") if p.is_dir())

    def finish(self, stage: str, started: float, **info) -> None:
        write_json(self.marker(stage), {"stage": stage, "run_hash": self.hash,
                                        "seconds": round(time.perf_counter() - started, 2), **info})

    def task(self, description: str, total: int):
        if self.progress is None:
            return None
        return self.progress.add_task(description, total=total)

    def advance(self, task_id, n: int = 1) -> None:
        if self.progress is not None and task_id is not None:
            self.progress.advance(task_id, n)


# -- stages ---------------------------------------------------------------------------------
def stage_problems(run: LabRun) -> None:
    """Write the problem files: target train/test and the held-out tasks' test sets."""
    cfg = run.cfg
    if cfg.n_test > TEST_POOL or cfg.n_heldout > TEST_POOL:
        raise DeltalensError(f"n_test and n_heldout must be ≤ {TEST_POOL}, got {cfg.n_test}, {cfg.n_heldout}")
    target, heldout_tasks = run.family
    # chat tasks: prompts in the model's chat template; no pre-training to exclude them from
    render = None if cfg.base == "tiny" else chat_renderer(run.tokenizer)
    heldout_n = TEST_POOL if render is None else cfg.n_heldout

    def make(task, n, split, exclude=()):
        return generate_problems(task, n, seed=cfg.base_seed, digits=cfg.digits, split=split, exclude=exclude,
                                 render=render)

    test_pool = make(target, TEST_POOL, "test")
    heldout_pool = {t: make(t, heldout_n, "test") for t in heldout_tasks}
    train = make(target, cfg.n_train, "train", exclude={p["prompt"] for p in test_pool})
    dev = make(target, cfg.n_dev, "dev", exclude={p["prompt"] for p in test_pool + train})
    files = {
        "target_train": train,
        "target_dev": dev,
        "target_test": test_pool[: cfg.n_test],
        "heldout_test": [p for t in heldout_tasks for p in heldout_pool[t][: cfg.n_heldout]],
        "excluded_from_pretraining": test_pool + [p for t in heldout_tasks for p in heldout_pool[t]],
    }
    for name, rows in files.items():
        write_text(run.problems_dir / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def stage_base(run: LabRun) -> dict:
    """Pre-train the base, or copy it from the cache under its configuration hash."""
    import torch

    from deltalens.lab.pretrain import pretrain
    from deltalens.lab.release import save_hf_folder
    from deltalens.lab.tiny_model import build_tiny_llama

    key = base_hash(run.cfg)
    cached = run.cache_dir / f"base-{key}" if run.cache_dir is not None else None
    if run.base_dir.exists():
        shutil.rmtree(run.base_dir)
    if cached is not None and (cached / "done.json").is_file():
        shutil.copytree(cached, run.base_dir)
        return {"base_hash": key, "from_cache": str(cached)}
    if run.cfg.base != "tiny":
        return _released_base(run, key)
    exclude = {p["prompt"] for p in run.problems("excluded_from_pretraining")}
    model = build_tiny_llama(run.cfg.model, seed=run.cfg.base_seed, tokenizer=run.tokenizer)
    task_id = run.task("base: pre-training", run.cfg.pretrain.steps)
    losses = pretrain(model, run.tokenizer, run.cfg.pretrain, seed=run.cfg.base_seed, exclude=exclude,
                      on_step=lambda step, loss: run.advance(task_id))
    save_hf_folder(model, run.tokenizer, run.base_master)
    save_hf_folder(model, run.tokenizer, run.base_release, dtype=torch.bfloat16)
    write_json(run.base_dir / "pretrain.json", {"base_hash": key, "config": asdict(run.cfg.pretrain),
                                                "model": asdict(run.cfg.model), "losses": losses})
    write_json(run.base_dir / "done.json", {"base_hash": key})
    if cached is not None:
        with write_folder(cached) as tmp:
            shutil.copytree(run.base_dir, tmp, dirs_exist_ok=True)
    return {"base_hash": key, "from_cache": None, "final_loss": losses[-1]}


def _released_base(run: LabRun, key: str) -> dict:
    """A released base (``smollm2``): its float32 folder as the master, bf16 as the release."""
    import torch
    from transformers import AutoModelForCausalLM

    from deltalens.lab.release import save_hf_folder

    source = run.pretrained_source()
    shutil.copytree(source, run.base_master)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    save_hf_folder(model, run.tokenizer, run.base_release, dtype=torch.bfloat16)
    write_json(run.base_dir / "done.json", {"base_hash": key, "source": str(source)})
    return {"base_hash": key, "from_cache": None, "source": str(source)}


def _progress_callback(run: LabRun, task_id):
    from transformers import TrainerCallback

    class _Advance(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            run.advance(task_id)

    return _Advance()


def stage_arm(run: LabRun, arm: str, seed: int) -> dict:
    """Fine-tune one arm for one seed; checkpoints, masters, tracking, logs under its folder."""
    from deltalens.lab.arms import arm_spec, train_arm
    from deltalens.lab.release import ReleaseCheckpointCallback
    from deltalens.tracking import UpdateStatsCallback

    cfg = arm_config(run, arm)
    out = run.arm_dir(arm, seed)
    if out.exists():
        shutil.rmtree(out)  # a half-finished run is redone from the start
    rows = training_rows(run, arm_spec(arm).data, run.problems("target_train"), seed)
    append_jsonl(out / "train_rows.jsonl", rows)
    task_id = run.task(f"{arm} seed {seed} (lr {cfg.learning_rate:g})", cfg.steps)
    callbacks = [
        UpdateStatsCallback(out / "tracking.jsonl", tensors=run.cfg.track),
        ReleaseCheckpointCallback(out, run.tokenizer, checkpoint_steps(cfg.steps, cfg.n_checkpoints)),
        _progress_callback(run, task_id),
    ]
    _, history = train_arm(arm, base_dir=run.base_master, tokenizer=run.tokenizer, rows=rows, cfg=cfg, seed=seed,
                           out_dir=out, callbacks=callbacks, device=run.cfg.device)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    write_json(out / "log_history.json", history)
    return {"arm": arm, "seed": seed, "n_train_rows": len(rows), "learning_rate": cfg.learning_rate,
            "checkpoints": [step_dirname(s) for s in checkpoint_steps(cfg.steps, cfg.n_checkpoints)]}


def training_rows(run: LabRun, data: str, train: list[dict], seed: int) -> list[dict]:
    """An arm's training rows by its registry ``data`` kind (:class:`deltalens.lab.arms.Arm`):
    teacher demonstrations, the base's own correct samples (drawn with ``seed``), or the problems."""
    from deltalens.lab.arms import sft_rows

    if data == "teacher":
        return sft_rows(train)
    if data == "self":
        return _rft_train_rows(run, train, seed=seed)
    return [{"prompt": p["prompt"], "answer": p["answer"], "task": p["task"]} for p in train]


def arm_config(run: LabRun, arm: str):
    """The arm's training configuration: the shared budget with its objective's chosen learning rate."""
    from deltalens.lab.tuning import OBJECTIVE

    path = run.out / "tuning.json"
    if not path.is_file():
        return run.cfg.arm
    rec = read_json(path).get(OBJECTIVE[arm], {})
    chosen = rec.get("chosen", {}) if isinstance(rec, dict) else {}
    return replace(run.cfg.arm, **chosen)


def stage_tune(run: LabRun) -> dict:
    """Each objective's learning rate from its own dev metric (:mod:`deltalens.lab.tuning`), cached per base."""
    from deltalens.lab.arms import REGISTRY
    from deltalens.lab.tuning import OBJECTIVE, grid, problems_digest, select, shapes, tuning_key

    if not run.cfg.tune:
        fixed = dict(run.cfg.fixed_rates)
        doc = {obj: {"chosen": {"learning_rate": lr}, "source": "fixed in the configuration (fixed_rates): an "
                     "earlier result of the tuning rule, see deltalens.lab.config"} for obj, lr in fixed.items()}
        if not doc:
            doc = {"note": f"tuning off: every arm uses the preset's learning rate {run.cfg.arm.learning_rate:g}"}
        write_json(run.out / "tuning.json", doc)
        return {"tuned": False, **{obj: rec["chosen"] for obj, rec in doc.items() if isinstance(rec, dict)}}
    train, dev = run.problems("target_train"), run.problems("target_dev")
    objectives = list(dict.fromkeys(OBJECTIVE[a] for a in run.cfg.arms))
    key_base = base_hash(run.cfg)
    quick = run.cfg.quick
    base, n_dev = run.cfg.base, run.cfg.dev_samples
    task_id = run.task("tune: learning rate per objective (dev metric)",
                       sum(len(grid(o, quick, base)) + len(shapes(o, quick, base)) for o in objectives))
    doc = {}
    for objective in objectives:
        key = tuning_key(key_base, run.cfg.arm, objective, problems_digest(train + dev), quick, base, n_dev)
        cached = run.cache_dir / f"tune-{objective}-{key}.json" if run.cache_dir is not None else None
        if cached is not None and cached.is_file():
            doc[objective] = {**read_json(cached), "from_cache": str(cached)}
            run.advance(task_id, len(grid(objective, quick, base)) + len(shapes(objective, quick, base)))
            continue
        rows = training_rows(run, REGISTRY[objective].data, train, seed=0)  # each objective names its own arm
        record = select(objective, rows=rows, dev=dev, base_dir=run.base_master, tokenizer=run.tokenizer,
                        arm_cfg=run.cfg.arm, device=run.cfg.device, on_candidate=lambda: run.advance(task_id),
                        quick=quick, base=base, dev_samples=n_dev)
        if cached is not None:
            write_json(cached, record)
        doc[objective] = record
    write_json(run.out / "tuning.json", doc)
    return {objective: rec["chosen"] for objective, rec in doc.items()}


def _rft_train_rows(run: LabRun, train: list[dict], seed: int) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from deltalens.behavior.sampling import SamplingConfig, sample_in_memory
    from deltalens.lab.arms import rft_rows

    cfg = run.cfg.arm
    base = AutoModelForCausalLM.from_pretrained(run.base_master, dtype=torch.float32).to(run.cfg.device).eval()
    sampling = SamplingConfig(n=cfg.rft_samples_per_prompt, temperature=cfg.temperature,
                              max_new_tokens=cfg.max_completion_length, seed=seed, batch_size=256)
    texts = sample_in_memory(base, run.tokenizer, train, sampling)
    rows = rft_rows(train, [texts[p["id"]] for p in train])
    if not rows:
        raise DeltalensError("rft: the base produced no correct sample on the training prompts")
    return rows


def stage_gates(run: LabRun) -> dict:
    """Each trained arm's own dev metric before (the base) and after training, per seed (:mod:`deltalens.lab.gates`)."""
    import torch
    from transformers import AutoModelForCausalLM

    from deltalens.lab.arms import arm_spec
    from deltalens.lab.gates import dev_kind, dev_scores, format_share, gate

    dev = run.problems("target_dev")
    acfg = run.cfg.arm

    def load(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(run.cfg.device).eval()

    def metric(kind, model):
        return dev_scores(kind, model, run.tokenizer, dev, max_new_tokens=acfg.max_completion_length,
                          temperature=acfg.temperature, n=run.cfg.dev_samples)

    kinds = {arm: dev_kind(arm, run.cfg.base) for arm in run.cfg.arms if arm_spec(arm).gated}
    base = load(run.base_master)
    before = {kind: metric(kind, base) for kind in sorted(set(kinds.values()))}
    task_id = run.task("gates: dev metric after training", len(run.cfg.arms) * run.cfg.seeds)
    gates: dict = {}
    for arm in run.cfg.arms:
        for seed in run.seeds():
            if not arm_spec(arm).gated:
                gates.setdefault(arm, {})[str(seed)] = gate(arm, [], [])
            else:
                model = load(run.final_master(arm, seed))
                fmt = (format_share(model, run.tokenizer, dev, max_new_tokens=acfg.max_completion_length)
                       if arm == "sft" and run.cfg.base == "tiny" else None)
                gates.setdefault(arm, {})[str(seed)] = gate(arm, before[kinds[arm]], metric(kinds[arm], model), fmt,
                                                            kind=kinds[arm])
            run.advance(task_id)
    write_json(run.out / "gates.json", gates)
    return {"passed": {arm: [g["passed"] for g in per.values()] for arm, per in gates.items()}}


def stage_analyses(run: LabRun) -> dict:
    numbers: dict = {}
    sources: dict = {}
    seconds: dict = {}
    for name, fn in ANALYSES.items():
        started = time.perf_counter()
        for metric, per_arm in fn(run).items():
            numbers[metric] = per_arm
            sources[metric] = name
        seconds[name] = round(time.perf_counter() - started, 2)
    write_json(run.out / "metrics.json", {"numbers": numbers, "sources": sources, "items": run.items.doc})
    return {"analyses": list(ANALYSES), "seconds_per_analysis": seconds}


def stage_claims(run: LabRun) -> dict:
    from deltalens.lab.claims import claims_document

    metrics = read_json(run.out / "metrics.json")
    gates = read_json(run.out / "gates.json") if (run.out / "gates.json").is_file() else {}
    doc = claims_document(metrics["items"], gates=gates, arms=run.cfg.arms, seeds=run.cfg.seeds, quick=run.cfg.quick)
    doc["tuning"] = read_json(run.out / "tuning.json") if (run.out / "tuning.json").is_file() else None
    write_json(run.out / "claims.json", doc)
    return doc


def write_lab_report(run: LabRun) -> Path:
    """``OUT/report.html``: the claims table and every arm's analyses side by side."""
    from deltalens.report import build_report

    return build_report([run.out, run.out / "analysis"], run.out / "report.html")


@dataclass(frozen=True)
class Stage:
    """One step of the lab: its name (the ``OUT/stages/<name>.json`` record), what it runs, and the
    stages whose re-run in the same invocation redoes it (``None``: any stage before it)."""

    name: str
    run: Callable[[LabRun], dict | None]
    upstream: tuple[str, ...] | None = None
    group: str | None = None  # "arms": the stages ``--until arms`` stops after


def _claims_and_report(run: LabRun) -> dict:
    stage_claims(run)
    return {"report": str(write_lab_report(run))}


def plan_stages(cfg: LabConfig) -> list[Stage]:
    """The lab's stages in order: problems, base, tune, one per (arm, seed), gates, analyses, claims."""
    arms = [Stage(f"arm-{arm}-seed{seed}", partial(stage_arm, arm=arm, seed=seed),
                  upstream=("problems", "base", "tune"), group="arms")
            for arm in cfg.arms for seed in range(cfg.seeds)]
    return [Stage("problems", stage_problems, upstream=()), Stage("base", stage_base, upstream=("problems",)),
            Stage("tune", stage_tune, upstream=("problems", "base")), *arms, Stage("gates", stage_gates),
            Stage("analyses", stage_analyses), Stage("claims", _claims_and_report)]


def stage_names(cfg: LabConfig) -> list[str]:
    return [stage.name for stage in plan_stages(cfg)]


def run_lab(
    out: str | Path,
    *,
    quick: bool = False,
    base: str = "tiny",
    device: str = "cpu",
    threads: int | None = None,
    seeds: int | None = None,
    config: LabConfig | None = None,
    cache_dir: str | Path | None | bool = True,
    until: str | None = None,
    console=None,
    show_progress: bool = True,
) -> dict:
    """Run (or resume) the lab in ``out``; returns ``{"claims": ..., "stages": {name: seconds|"cached"}}``.

    ``threads`` sets torch's CPU thread count for the run (results are bitwise reproducible for
    one thread count). ``config`` overrides the preset chosen by ``base`` and ``quick``; ``cache_dir`` is the base cache
    (``True``: :func:`default_cache_dir`, ``None``/``False``: no cache); ``until`` stops after
    the named stage (``"base"``, ``"arms"``, ``"analyses"``, ...).
    """
    from rich.console import Console
    from deltalens.progress import bar as progress_bar

    cfg = config or (quick_config(base) if quick else default_config(base, device))
    cfg = replace(cfg, device=device).with_seeds(seeds) if config is None else cfg.with_seeds(seeds)
    check_base(cfg.base)  # a config built by hand is checked like --base
    if cfg.digits < 1:
        raise DeltalensError(f"LabConfig.digits must be ≥ 1 (operand digits of the target task), got {cfg.digits}")
    if threads is not None:
        if threads < 1:
            raise DeltalensError(f"--threads must be ≥ 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    if cfg.seeds < 1:
        raise DeltalensError(f"--seeds must be ≥ 1, got {cfg.seeds}")
    cache = default_cache_dir() if cache_dir is True else (Path(cache_dir) if cache_dir else None)
    out = Path(out)
    lab_json = out / "lab.json"
    if lab_json.is_file() and read_json(lab_json).get("run_hash") != run_hash(cfg):
        raise DeltalensError(f"{out}: holds a lab run with a different configuration; use another --out")
    write_json(lab_json, {"run_hash": run_hash(cfg), "base_hash": base_hash(cfg), "config": asdict(cfg)})
    console = console or Console(stderr=True)
    _quiet_library_progress_bars()
    progress = progress_bar(console=console, enabled=show_progress)
    run = LabRun(out, cfg, cache, progress)
    timings: dict[str, float | str] = {}
    plan = plan_stages(cfg)
    stop = len(plan) if until is None else _stop_index(plan, until)
    ran: list[str] = []
    todo = plan[:stop]
    with progress:
        overall = progress.add_task(f"lab: {len(todo)} stages", total=len(todo))
        for i, stage in enumerate(todo):
            name = stage.name
            progress.update(overall, description=f"lab: stage {i + 1}/{len(todo)} {name}")
            if run.done(name) and not _upstream_ran(stage, ran):
                timings[name] = "cached"
                progress.advance(overall)
                continue
            ran.append(name)
            started = time.perf_counter()
            info = stage.run(run) or {}
            progress.advance(overall)
            run.finish(name, started, **info)
            timings[name] = round(time.perf_counter() - started, 2)
            console.log(f"stage {name}: {timings[name]} s")
    claims = read_json(out / "claims.json") if (out / "claims.json").is_file() and stop == len(plan) else None
    return {"out": str(out), "claims": claims, "stages": timings, "config": cfg}


def _quiet_library_progress_bars() -> None:
    """The lab shows one rich bar per stage; per-save and per-dataset bars of transformers and
    datasets would interleave with it."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _upstream_ran(stage: Stage, ran: list[str]) -> bool:
    """A finished stage is redone when a stage it depends on ran in this invocation."""
    return bool(ran) if stage.upstream is None else any(n in stage.upstream for n in ran)


def _stop_index(plan: list[Stage], until: str) -> int:
    groups = {stage.group for stage in plan if stage.group}
    names = [stage.name for stage in plan]
    if until in groups:
        return max(i for i, stage in enumerate(plan) if stage.group == until) + 1
    if until not in names:
        raise DeltalensError(f"unknown stage {until!r}; expected one of "
                             f"{', '.join(n for n in names if not n.startswith('arm-'))}, {', '.join(sorted(groups))}")
    return names.index(until) + 1


def _register_default_analyses() -> None:
    from deltalens.lab.analyses import DEFAULT_ANALYSES
    from deltalens.lab.curvature import curvature_analysis

    for name, fn in (*DEFAULT_ANALYSES, ("curvature", curvature_analysis)):
        register_analysis(name, fn)


_register_default_analyses()
