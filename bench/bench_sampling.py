"""Tokens per second of the hf sampling backend vs a plain ``model.generate`` loop.

Same model, same problems, same run. The baseline calls ``model.generate(...,
num_return_sequences=n)`` once per problem (it copies the prompt n times before prefill);
the hf backend prefills each prompt once and copies its KV cache to the n rows. Both sample
at temperature 1, top-p 1 (top-k off) for up to --max-new-tokens tokens; tokens/s counts
generated tokens (up to and including EOS). The two are timed alternately, best of --repeats;
tokens per CPU-second (process time) is printed too, as it is steadier on a shared CPU.
Writes bench/out/sampling.json.

    PYTHONPATH=src python bench/bench_sampling.py [--device cuda] [--n 16 64]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def build(args):
    import torch

    from deltalens.lab.tiny_model import TinyConfig, build_tiny_llama
    from deltalens.lab.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(model_max_length=4096)
    cfg = TinyConfig(hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_hidden_layers=args.layers,
                     num_attention_heads=args.hidden // 32, num_key_value_heads=max(1, args.hidden // 64),
                     max_position_embeddings=args.prompt_len + args.max_new_tokens + 8)
    model = build_tiny_llama(cfg, seed=0, tokenizer=tok).to(args.device)
    if args.dtype != "float32":
        model = model.to(getattr(torch, args.dtype))
    rng = random.Random(0)
    problems = [{"id": f"p{i}", "prompt": "".join(rng.choice("0123456789+-*= ") for _ in range(args.prompt_len))}
                for i in range(args.problems)]
    return model, tok, problems


def sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_backend(model, tok, problems, n, args) -> tuple[int, float, float]:
    from deltalens.behavior.sampling import sample

    sync(args.device)
    t0, c0 = time.perf_counter(), time.process_time()
    rows = sample(model, problems, n=n, tokenizer=tok, max_new_tokens=args.max_new_tokens, temperature=1.0,
                  top_p=1.0, seed=0, batch_size=max(args.batch_size, n))
    sync(args.device)
    return sum(r["n_tokens"] for r in rows), time.perf_counter() - t0, time.process_time() - c0


def run_generate(model, tok, problems, n, args) -> tuple[int, float, float]:
    import torch

    eos = tok.eos_token_id
    sync(args.device)
    t0, c0 = time.perf_counter(), time.process_time()
    total = 0
    for p in problems:
        enc = tok(p["prompt"], return_tensors="pt").to(args.device)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                 max_new_tokens=args.max_new_tokens, num_return_sequences=n,
                                 pad_token_id=tok.pad_token_id)
        gen = out[:, enc["input_ids"].shape[1]:]
        for row in gen.tolist():
            total += row.index(eos) + 1 if eos in row else len(row)
    sync(args.device)
    return total, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--n", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=96)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats; the best is kept")
    ap.add_argument("--out", default="bench/out/sampling.json")
    args = ap.parse_args()

    import torch

    torch.manual_seed(0)
    model, tok, problems = build(args)
    n_params = sum(p.numel() for p in model.parameters())
    run_backend(model, tok, problems[:1], 2, args)  # warm-up both paths
    run_generate(model, tok, problems[:1], 2, args)
    results = []
    for n in args.n:
        runs = {"hf_backend": [], "generate_loop": []}
        for _ in range(args.repeats):  # alternate the two so load drift hits both alike
            runs["hf_backend"].append(run_backend(model, tok, problems, n, args))
            runs["generate_loop"].append(run_generate(model, tok, problems, n, args))
        best = {}
        for name, rs in runs.items():
            toks, secs, cpu = min(rs, key=lambda r: r[1] / r[0])
            best[name] = {"tokens": toks, "seconds": secs, "tokens_per_s": toks / secs,
                          "tokens_per_cpu_s": 1.0 / max(min(r[2] / r[0] for r in rs), 1e-12)}
        ratio = best["hf_backend"]["tokens_per_s"] / best["generate_loop"]["tokens_per_s"]
        cpu_ratio = best["hf_backend"]["tokens_per_cpu_s"] / best["generate_loop"]["tokens_per_cpu_s"]
        results.append({"n": n, **best, "speedup": ratio, "speedup_cpu_time": cpu_ratio})
        print(f"n={n:3d}  hf backend {best['hf_backend']['tokens_per_s']:9.1f} tok/s   "
              f"generate loop {best['generate_loop']['tokens_per_s']:9.1f} tok/s   ratio {ratio:.2f}x   "
              f"(per CPU-second: {best['hf_backend']['tokens_per_cpu_s']:.1f} vs "
              f"{best['generate_loop']['tokens_per_cpu_s']:.1f}, ratio {cpu_ratio:.2f}x)", flush=True)
    meta = {"device": args.device, "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            "dtype": args.dtype, "params": n_params, "problems": args.problems, "prompt_len": args.prompt_len,
            "max_new_tokens": args.max_new_tokens, "torch_threads": torch.get_num_threads(), "repeats": args.repeats}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
