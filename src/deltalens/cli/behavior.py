"""CLI commands of the `behavior` area (SPEC §7). Import only typer and the standard library here."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from deltalens.cli.common import LOADING_OPTIONS, Device, command, device as resolved, loading, out_option, with_options


def _table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v)) for v in r])
    Console().print(table)


def passk_cmd(
    samples: list[Path] = typer.Argument(..., help="Verified samples JSONL files, one model each (first = base)."),
    out: Path = out_option("Output directory for passk.json and passk.png."),
    problems: Optional[Path] = typer.Option(None, "--problems", help="Problems JSONL: every problem must have samples."),
    base: Optional[str] = typer.Option(None, "--base", help="Model name of the base (default: first file)."),
    tuned: Optional[str] = typer.Option(None, "--tuned", help="Model name of the tuned model (default: second file)."),
    k: Optional[list[int]] = typer.Option(None, "--k", help="k values (default 1, 2, 4, ..., n_min)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples over problems."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """pass@k curves with bootstrap intervals and the crossover k* (writes DIR/passk.json, DIR/passk.png)."""
    from deltalens.behavior.passk import passk, plot_passk
    from deltalens.results import check_output_dir, write_json

    check_output_dir(out, ["passk.json", "passk.png"])
    result = passk(samples, problems=problems, ks=k or None, base=base, tuned=tuned, n_boot=n_boot, seed=seed)
    write_json(out / "passk.json", result)
    plot_passk(result, out / "passk.png")
    names = list(result["models"])
    ks = result["models"][names[0]]["k"]
    rows = [[kk] + [result["models"][n]["pass_at_k"][i] if kk in result["models"][n]["k"] else None
                    for n in names] for i, kk in enumerate(ks)]
    _table("pass@k", ["k"] + names, rows)
    cross = result["crossover"]
    if cross and cross["k"] is not None:
        print(f"crossover k* ({cross['base']} overtakes {cross['tuned']}): {cross['k']}")
    elif cross:
        print(f"no crossover k* ({cross['base']} vs {cross['tuned']}): {cross['reason']}")
    print(f"wrote {out / 'passk.json'} and {out / 'passk.png'}")


def support_cmd(
    base: Path = typer.Argument(..., help="Verified samples JSONL of the base model."),
    tuned: Path = typer.Argument(..., help="Verified samples JSONL of the tuned model."),
    out: Path = out_option("Output directory for support.json."),
    k: Optional[int] = typer.Option(None, "--k", help="Sampling budget (default: smallest n)."),
    zeta: float = typer.Option(0.05, "--zeta", help="Confidence parameter of epsilon = ln(1/zeta)/k."),
) -> None:
    """Support P/E/S/O counts, SRR, NDR, SDS, NSCR and epsilon (writes DIR/support.json)."""
    from deltalens.behavior.support import support
    from deltalens.results import check_output_dir, write_json

    check_output_dir(out, ["support.json"])
    res = support(base, tuned, k=k, zeta=zeta)
    write_json(out / "support.json", res)
    c = res["counts"]
    _table(f"support of {res['tuned']} vs {res['base']} at k={res['k']}",
           ["P", "E", "S", "O", "SRR", "NDR", "SDS", "NSCR", "epsilon"],
           [[c["P"], c["E"], c["S"], c["O"], res["SRR"], res["NDR"], res["SDS"], res["NSCR"], res["epsilon"]]])
    print(f"wrote {out / 'support.json'}")


def verify_cmd(
    samples: Path = typer.Argument(..., help="Samples JSONL to verify."),
    problems: Path = typer.Option(..., "--problems", help="Problems JSONL with gold answers."),
    method: str = typer.Option("numeric", "--verifier", help="numeric | math-verify | module:function | file.py:function."),
    timeout: float = typer.Option(5.0, "--timeout", help="Seconds per math-verify check (enforced by process)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Write here instead of rewriting SAMPLES in place."),
) -> None:
    """Fill 'extracted' and 'correct' of every sample (the file is rewritten atomically)."""
    import json

    from deltalens.behavior.verify import verify
    from deltalens.results import check_output_file, to_jsonable, write_text

    target = check_output_file(out or samples, what="verified samples file")
    rows = verify(samples, problems, method=method, timeout=timeout, progress=True)
    write_text(target, "".join(json.dumps(to_jsonable(r)) + "\n" for r in rows))
    n_ok = sum(bool(r["correct"]) for r in rows)
    print(f"{n_ok}/{len(rows)} samples correct ({method}); wrote {target}")


@with_options(LOADING_OPTIONS)
def sample_cmd(
    model: str = typer.Argument(..., help="Model folder or hub id (hf), model folder (vllm), or served model name (openai)."),
    problems: Path = typer.Option(..., "--problems", help="Problems JSONL {id, prompt, answer?, task?}."),
    out: Path = out_option("Samples JSONL (appended to; a re-run adds only what is missing)."),
    n: int = typer.Option(1, "-n", "--n", help="Samples per problem."),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_p: float = typer.Option(1.0, "--top-p"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(64, "--batch-size", help="Rows decoded together (hf) / requests in flight (openai)."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    backend: str = typer.Option("hf", "--backend", help="hf | vllm | openai."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Name recorded in the samples (default: the folder name, with parent folders while it names only a checkpoint: sft/seed0/step-000016)."),
    verify: Optional[str] = typer.Option(None, "--verifier", help="Verify while sampling: numeric | math-verify | module:function."),
    device: Device = "auto",
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16, float16 (hf)."),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", help="vllm only."),
    no_server_check: bool = typer.Option(False, "--no-server-check", help="openai: skip the probe that refuses a server ignoring temperature (for a model that really is that sure)."),
    **options,
) -> None:
    """Draw n samples per problem (resumable; records completion, n_tokens, finish_reason, logprob)."""
    import os

    from deltalens.behavior.sampling import sample, sampling_record_path

    from deltalens.results import read_json

    record = sampling_record_path(out)
    runs_before = len(read_json(record).get("runs", [])) if record.is_file() else 0
    load = loading(options)
    rows = sample(model, problems, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                  seed=seed, batch_size=batch_size, stop=stop or None, backend=backend, out=out,
                  model_name=model_name, verifier=verify, device=resolved(device) if backend == "hf" else None,
                  dtype=dtype, base_url=base_url, **load,
                  api_key=os.environ.get("OPENAI_API_KEY"), progress=True, check_server=not no_server_check,
                  backend_options={"tensor_parallel_size": tensor_parallel_size} if backend == "vllm" else None)
    if record.is_file() and len(read_json(record).get("runs", [])) > runs_before:  # a new server check
        _print_honoured(record)
    msg = f"{len(rows)} samples in {out}"
    if verify:
        msg += f"; {sum(bool(r['correct']) for r in rows)} verified correct ({verify})"
    print(msg)


def _print_honoured(record: Path) -> None:
    """One line on what the openai server honoured (the last check in ``S.jsonl.sampling.json``)."""
    from deltalens.results import read_json

    honoured = read_json(record)["runs"][-1]["honoured"]
    words = {True: "yes", False: "NO", None: "unknown"}
    print("server honoured: " + ", ".join(f"{k} {words[v]}" for k, v in honoured.items()) + f" (details: {record})")
    if honoured.get("seed") is False:
        print("warning: the server ignores seed: a resumed or repeated run does not reproduce these samples")
    if honoured.get("logprobs") is False:
        print("warning: the server returns no log-probabilities: 'logprob' is null in these samples")


@with_options(LOADING_OPTIONS)
def divergence_cmd(
    base: str = typer.Argument(..., help="Base model folder or hub id."),
    tuned: str = typer.Argument(..., help="Tuned model folder or hub id (same tokenizer)."),
    prompts: Path = typer.Option(..., "--problems", help="Problems JSONL (the new task's prompts; answers optional)."),
    out: Path = out_option("Output directory for divergence.json."),
    n: int = typer.Option(4, "-n", "--n", help="Sampled completions per prompt and model."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    temperature: float = typer.Option(1.0, "--temperature", help="1.0 samples the models' own distributions."),
    top_p: float = typer.Option(1.0, "--top-p"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(64, "--batch-size"),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    device: Device = "auto",
    **options,
) -> None:
    """Forward/reverse KL (exact over the vocabulary), entropies, cross-perplexity (DIR/divergence.json)."""
    from deltalens.behavior.divergence import divergence
    from deltalens.results import check_output_dir, write_json

    check_output_dir(out, ["divergence.json"])
    res = divergence(base, tuned, prompts, n_samples=n, max_new_tokens=max_new_tokens, temperature=temperature,
                     top_p=top_p, seed=seed, batch_size=batch_size, stop=stop or None, device=resolved(device),
                     **loading(options))
    write_json(out / "divergence.json", res)
    fk, rk = res["forward_kl"], res["reverse_kl"]
    _table(f"divergence of {res['tuned']} from {res['base']} (nats)", ["quantity", "token mean", "sequence mean"],
           [["forward KL(base||tuned)", fk["token_mean"], fk["sequence_mean"]],
            ["reverse KL(tuned||base)", rk["token_mean"], rk["sequence_mean"]]])
    e, cp = res["entropy"], res["cross_perplexity"]
    _table("entropy and cross-perplexity", ["model", "token entropy", "answer entropy", "perplexity under the other"],
           [[res["base"], e["base"]["token"], e["base"]["answer"], cp["base_under_tuned"]],
            [res["tuned"], e["tuned"]["token"], e["tuned"]["answer"], cp["tuned_under_base"]]])
    print(f"wrote {out / 'divergence.json'}")


@with_options(LOADING_OPTIONS)
def evaluate_cmd(
    model: str = typer.Argument(..., help="Model folder or hub id."),
    suite: Path = typer.Option(..., "--problems", help="Problems JSONL {id, prompt, answer, task}: the suite."),
    out: Path = out_option("Output JSON file (e.g. eval_base.json)."),
    verify: str = typer.Option("numeric", "--verifier", help="numeric | math-verify | module:function."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens"),
    batch_size: int = typer.Option(64, "--batch-size"),
    stop: Optional[list[str]] = typer.Option(None, "--stop"),
    model_name: Optional[str] = typer.Option(None, "--model-name"),
    device: Device = "auto",
    **options,
) -> None:
    """Accuracy (greedy, verified) and mean loss per task of a suite."""
    from deltalens.behavior.evaluate import evaluate
    from deltalens.results import check_output_file, write_json

    check_output_file(out, what="evaluation file")
    res = evaluate(model, suite, verifier=verify, max_new_tokens=max_new_tokens, batch_size=batch_size,
                   stop=stop or None, device=resolved(device), model_name=model_name,
                   **loading(options))
    write_json(out, res)
    _table(f"evaluation of {res['model']}", ["task", "n", "accuracy", "mean loss"],
           [[t, v["n"], v["accuracy"], v["mean_loss"]] for t, v in res["tasks"].items()])
    print(f"wrote {out}")


def forgetting_cmd(
    base_eval: Path = typer.Option(..., "--base-eval", help="evaluate output of the base model."),
    evals: list[Path] = typer.Option(..., "--eval", help="evaluate output of a tuned model (repeatable)."),
    divergences: list[Path] = typer.Option(..., "--divergence", help="divergence.json of a tuned model (repeatable)."),
    out: Path = out_option("Output directory for forgetting.json."),
    kl: str = typer.Option("forward_token", "--kl", help="forward_token | forward_sequence | reverse_token | reverse_sequence."),
    task: Optional[list[str]] = typer.Option(None, "--task", help="Held-out task(s) (default: all)."),
) -> None:
    """Relate each tuned model's drop on held-out tasks to its KL from the base (fit and R^2)."""
    from deltalens.behavior.evaluate import forgetting
    from deltalens.results import check_output_dir, read_json, write_json

    check_output_dir(out, ["forgetting.json"])
    res = forgetting(read_json(base_eval), [read_json(p) for p in evals], [read_json(p) for p in divergences],
                     kl=kl, tasks=task or None)
    write_json(out / "forgetting.json", res)
    _table(f"forgetting vs {kl} KL (base {res['base']})", ["model", "KL", "accuracy drop", "loss increase"],
           [[m["model"], m["kl"], m["accuracy_drop"], m["loss_increase"]] for m in res["models"]])
    fa, fl = res["fit_accuracy_drop"], res["fit_loss_increase"]
    print(f"accuracy drop = {fa['intercept']:.4g} + {fa['slope']:.4g} * KL (R^2 {fa['r2']}, n={fa['n']}); "
          f"loss increase = {fl['intercept']:.4g} + {fl['slope']:.4g} * KL (R^2 {fl['r2']})")
    print(f"wrote {out / 'forgetting.json'}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    for name, fn in (("sample", sample_cmd), ("verify", verify_cmd), ("passk", passk_cmd), ("support", support_cmd),
                     ("divergence", divergence_cmd), ("evaluate", evaluate_cmd), ("forgetting", forgetting_cmd)):
        command(app, name)(fn)
