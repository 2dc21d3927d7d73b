"""Time the lab's base pre-training and evaluation (no TRL needed).

    python bench/bench_lab.py [--steps 900] [--add-weight 0.55] [--threads 2]

Prints steps/s of the plain torch loop, seconds to sample n=64 completions for 100 test
problems, and the base's pass@k and held-out accuracy (the calibration the lab
reports). Run it pinned (``taskset -c 0,1``) to estimate an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from deltalens.lab.config import LAB_MODEL, TEST_POOL
from deltalens.lab.pretrain import PretrainConfig, pretrain
from deltalens.behavior import pass_at_k_curve
from deltalens.lab.sampling import sample_completions
from deltalens.lab.tasks import HELDOUT_TASKS, generate_problems, is_correct
from deltalens.lab.tiny_model import build_tiny_llama
from deltalens.lab.tokenizer import build_char_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report-every", type=int, default=100)
    ap.add_argument("--add-weight", type=float, default=None, help="share of 'add' in the mixture (rest split evenly)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = build_char_tokenizer(model_max_length=64)
    model = build_tiny_llama(LAB_MODEL, seed=0, tokenizer=tok)
    test = generate_problems("add", TEST_POOL, seed=0, digits=3, split="test")
    held = {t: generate_problems(t, TEST_POOL, seed=0, digits=3, split="test") for t in HELDOUT_TASKS}
    exclude = {p["prompt"] for p in test} | {p["prompt"] for v in held.values() for p in v}
    t0 = time.perf_counter()
    marks = []

    def on_step(step, loss):
        if step % a.report_every == 0:
            marks.append((step, round(time.perf_counter() - t0, 1), round(loss, 3)))
            print("step, seconds, loss:", marks[-1], flush=True)

    cfg = PretrainConfig(steps=a.steps)
    if a.add_weight is not None:
        rest = (1.0 - a.add_weight) / len(HELDOUT_TASKS)
        cfg = PretrainConfig(steps=a.steps, mixture=(("add", a.add_weight), *((t, rest) for t in HELDOUT_TASKS)))
    pretrain(model, tok, cfg, seed=0, exclude=exclude, on_step=on_step)
    secs = time.perf_counter() - t0
    print(f"pretrain: {a.steps} steps in {secs:.1f} s = {a.steps / secs:.2f} steps/s, threads={a.threads}")
    t0 = time.perf_counter()
    samples = sample_completions(model, tok, [p["prompt"] for p in test[:100]], n=64, max_new_tokens=10, seed=1234)
    print(f"sampling 100 problems x 64: {time.perf_counter() - t0:.1f} s")
    flags = {p["id"]: [is_correct(p, s) for s in ss] for p, ss in zip(test, samples)}
    curve = pass_at_k_curve(flags)
    print("base pass@k:", {k: round(v, 3) for k, v in zip(curve["k"], curve["pass_at_k"])})
    for task, probs in held.items():
        hs = sample_completions(model, tok, [p["prompt"] for p in probs[:60]], n=4, max_new_tokens=10, seed=1234)
        print(task, "accuracy", round(sum(is_correct(p, s) for p, ss in zip(probs, hs) for s in ss) / 240, 3))


if __name__ == "__main__":
    main()
