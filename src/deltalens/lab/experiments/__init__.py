"""The post's own conditions as lab experiments (``deltalens lab --experiment NAME``).

One module per experiment, each with ``Settings`` (``QUICK``, ``DEFAULT``), its claims
(``CLAIMS``, in the format of :mod:`deltalens.lab.claims`) and ``run(ctx, settings)``:

- ``optimizer`` (:mod:`.optimizer`): the main arms once more with plain SGD;
- ``kl-penalty`` (:mod:`.kl_penalty`): GRPO with β ∈ {0, 0.04, 0.4} beside SFT;
- ``per-batch`` (:mod:`.per_batch`): one SFT and one GRPO update from the base on the same prompts,
  with SGD and Adam, compared at equal update norm;
- ``long`` (:mod:`.long`): SFT and GRPO for 5× the lab's default steps with dense checkpoints;
- ``narrow-sft`` (:mod:`.narrow_sft`): misaligned vs benign narrow SFT, breadth over a trait suite
  (:mod:`.traits`);
- ``subliminal`` (:mod:`.subliminal`): a teacher's trait through filtered number sequences to
  same-init, different-init and control students.

``run_experiment(name, out)`` writes ``OUT/claims.json`` (the main claims' format plus
``experiment``, ``settings``, ``machine``), ``OUT/metrics.json``, ``OUT/curves.json`` and
``OUT/report.html``; ``name="all"`` runs the first four (:data:`ALL`) in that order into ``OUT/<name>/`` and writes
the union of their claims to ``OUT/claims.json`` and one report. Rules, settings and how to read
each: docs/lab.md, "Experiments".
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

from deltalens.errors import DeltalensError

#: name → module, in the order of value and cost (optimizer first: it decides how to read the rest)
EXPERIMENTS = {"optimizer": "optimizer", "kl-penalty": "kl_penalty", "per-batch": "per_batch", "long": "long",
               "narrow-sft": "narrow_sft", "subliminal": "subliminal"}
#: ``all``: the post's own conditions (issue #17); ``narrow-sft`` and ``subliminal`` (its speculative
#: section, seed §3.b) run by name
ALL = ("optimizer", "kl-penalty", "per-batch", "long")
NAMES = (*EXPERIMENTS, "all")


def module(name: str):
    if name not in EXPERIMENTS:
        raise DeltalensError(f"--experiment must be one of {', '.join(NAMES)}, got {name!r}")
    return importlib.import_module(f"deltalens.lab.experiments.{EXPERIMENTS[name]}")


def settings_for(name: str, quick: bool, seeds: int | None = None):
    mod = module(name)
    s = mod.QUICK if quick else mod.DEFAULT
    return s if seeds is None else replace(s, seeds=seeds)


def run_experiment(name: str, out: str | Path, *, quick: bool = False, base: str = "tiny", device: str = "cpu",
                   threads: int | None = None, seeds: int | None = None, cache_dir: str | Path | bool | None = True,
                   console=None, show_progress: bool = True) -> dict:
    """Run one experiment (or ``all``) into ``out``; returns ``{"out", "claims": claims document}``."""
    from rich.console import Console

    from deltalens.lab.experiments import common
    from deltalens.progress import bar

    out = Path(out)
    names = list(ALL) if name == "all" else [name]
    for n in names:
        module(n)
        common.check_supported(n, base)
    if threads is not None:
        if threads < 1:
            raise DeltalensError(f"--threads must be ≥ 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    console = console or Console(stderr=True)
    progress = bar(console=console, enabled=show_progress)
    docs, curves = [], []
    with progress:
        for n in names:
            settings = settings_for(n, quick, seeds)
            folder = out if name != "all" else out / n
            ctx = common.prepare(n, folder, quick=quick, device=device, threads=threads, seeds=settings.seeds,
                                 cache_dir=cache_dir, progress=progress, console=console, show_progress=show_progress)
            doc = module(n).run(ctx, settings)
            console.log(f"experiment {n}: {doc['seconds']} s")
            docs.append(doc)
            curves.append(read_curves(folder))
    if name != "all":
        return {"out": str(out), "claims": docs[0]}
    combined = combine_documents(docs)
    from deltalens.report.experiments import write_experiment_report
    from deltalens.results import write_json

    write_json(out / "claims.json", combined)
    write_experiment_report(out, docs, curves)
    return {"out": str(out), "claims": combined}


def read_curves(folder: Path) -> dict:
    from deltalens.results import read_json

    return read_json(folder / "curves.json")


def combine_documents(docs: list[dict]) -> dict:
    """One claims document from several experiments: every claim (ids are prefixed by their
    experiment), gates under ``"<experiment>/<arm>"``, each experiment's header under ``experiments``."""
    first = docs[0]
    return {"experiment": "all", "arms": [f"{d['experiment']}/{a}" for d in docs for a in d["arms"]],
            "seeds": min(d["seeds"] for d in docs), "quick": all(d["quick"] for d in docs),
            "gates": {f"{d['experiment']}/{arm}": g for d in docs for arm, g in d["gates"].items()},
            "interval": first["interval"], "claims": [c for d in docs for c in d["claims"]],
            "experiments": {d["experiment"]: {k: d.get(k) for k in ("settings", "tuning", "machine", "seconds",
                                                                    "seeds", "seeds_used")} for d in docs}}
