"""Benchmark of the curvature products and of Lanczos against power iteration (SPEC §9).

Prints, from one run on one machine:
- time per Hessian-vector product (cached double backward) and per GGN-vector product (JVP + H_z +
  cached VJP; the JVP by dual tensors, the default, and with ``--jvp linearize``), and per
  logit-kernel product, as ratios to one forward + backward of the loss on the same probes
  (median of repeats, the one-time cache builds, the trace included, timed apart);
- products needed for the top-10 (and top-4) eigenpairs of H and G by Lanczos (``eigsh``,
  tolerance 1e-6), against a PyHessian-style power iteration with deflation written here as the
  baseline (PyHessian 0.1's ``eigenvalues``: a fresh random start per eigenpair, orthogonalized
  against those found, Rayleigh quotient, stop when it changes by < tol relative, tol 1e-3,
  at most 100 iterations each), with the baseline's eigenvalue errors against Lanczos';
- peak resident memory of the process.

    PYTHONPATH=src python bench/bench_curvature.py --model runs/lab-quick-check/base/master \\
        --problems runs/lab-quick-check/problems/target_test.jsonl --probes 64

Without ``--model`` a randomly initialised lab-size model (``deltalens.lab.config.LAB_MODEL``)
and generated addition probes are used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from datetime import datetime, timezone

import torch


def load(args):
    from deltalens.curvature import eager_attention
    from deltalens.kernel import encode_probes

    if args.model:
        from deltalens.models import load_model

        model, tok, _ = load_model(args.model, dtype=args.dtype)
    else:
        from deltalens.lab.config import LAB_MODEL
        from deltalens.lab.tiny_model import build_tiny_llama
        from deltalens.lab.tokenizer import build_char_tokenizer

        tok = build_char_tokenizer()
        model = build_tiny_llama(LAB_MODEL, tokenizer=tok, seed=0).to(getattr(torch, args.dtype))
    model = eager_attention(model)
    if args.problems:
        rows = [json.loads(line) for line in open(args.problems) if line.strip()][: args.probes]
        probes = [{"prompt": r["prompt"], "completion": r.get("completion", r.get("answer"))} for r in rows]
    else:
        probes = [{"prompt": f"{i * 37 % 500}+{i % 9}=", "completion": str(i * 37 % 500 + i % 9)} for i in range(args.probes)]
    return model, encode_probes(tok, probes)


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def forward_backward(products):
    """One forward + backward of L on the probes (fresh graph): the unit of cost."""
    leaves = products._leaves()
    with torch.enable_grad():
        loss = sum(torch.nn.functional.cross_entropy(products._logits(c, leaves), c.targets, reduction="sum")
                   for c in products.chunks) / products.n
        torch.autograd.grad(loss, list(leaves.values()))


def power_iteration(matvec, dim: int, k: int, *, tol: float = 1e-3, max_iter: int = 100, seed: int = 0):
    """PyHessian-style top-k by power iteration with deflation; returns (eigenvalues, products)."""
    gen = torch.Generator().manual_seed(seed)
    found, values, products = [], [], 0
    for _ in range(k):
        v = torch.randn(dim, generator=gen, dtype=torch.float64)
        value = None
        for _ in range(max_iter):
            for u in found:  # deflation: orthogonalize against the eigenvectors found
                v = v - (u @ v) * u
            v = v / torch.linalg.vector_norm(v)
            hv = matvec(v).cpu().double()
            products += 1
            new = float(v @ hv)
            done = value is not None and abs(new - value) / (abs(value) + 1e-6) < tol
            value, v = new, hv
            if done:
                break
        found.append(v / torch.linalg.vector_norm(v))
        values.append(value)
    return values, products


def main() -> None:
    from deltalens.curvature import CurvatureProducts, top_eigenpairs

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="HF model folder (default: a random lab-size model)")
    parser.add_argument("--problems", help="JSONL of {prompt, answer|completion} (default: generated)")
    parser.add_argument("--probes", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--only", choices=["hessian", "gauss_newton"], help="only this operator's Lanczos run")
    parser.add_argument("--no-linearize", action="store_true", help="skip the --jvp linearize row (its trace "
                        "holds several times a forward's graph: 21.8 GB on SmolLM2 with 32 probes)")
    parser.add_argument("--products-only", action="store_true", help="time the products, skip Lanczos (large models: "
                        "eigsh's basis is 21 x P float64)")
    args = parser.parse_args()
    model, batch = load(args)
    n_params = sum(p.numel() for p in model.parameters())
    products = CurvatureProducts(model, batch)
    print(f"bench_curvature {datetime.now(timezone.utc).isoformat(timespec='minutes')} on {platform.node()} "
          f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()}), "
          f"{n_params} parameters, {products.n} probes, {products.rows} scored positions, {args.dtype}")
    v = torch.randn(products.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fb = median_seconds(lambda: forward_backward(products), args.repeats)
    print(f"one forward+backward {fb * 1e3:.1f} ms (median of {args.repeats})")
    linear = CurvatureProducts(model, batch, jvp="linearize")

    def trace():  # the output graph, then one traced linearization per chunk (timed as the cache)
        linear._output_graphs()
        for chunk in linear.chunks:
            chunk.linear = linear._linearize(chunk)

    rows = [("hessian", products._hessian_graphs, products.hvp, "HVP"),
            ("gauss_newton", products._output_graphs, products.ggn_vp, "GGN-vp (dual-tensor JVP, default)")]
    if not args.no_linearize:
        rows.append(("gauss_newton", trace, linear.ggn_vp, "GGN-vp (--jvp linearize)"))
    for kind, build, product, label in rows:
        if args.only not in (None, kind):
            continue
        started = time.perf_counter()
        build()
        cache = time.perf_counter() - started
        each = median_seconds(lambda: product(v), args.repeats)
        print(f"{label} {each * 1e3:.1f} ms = {each / fb:.2f}x forward+backward (its cache, built once: {cache / fb:.2f}x)")
    if args.only is None:
        u = torch.randn(products.outputs, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        kvp = median_seconds(lambda: products.kernel_vp(u, weighted=True), args.repeats)
        print(f"weighted logit-kernel product ({products.outputs} outputs) {kvp * 1e3:.1f} ms = {kvp / fb:.2f}x")
    if args.products_only:
        print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
        return
    operators = {"hessian": (products.hvp, "LM"), "gauss_newton": (products.ggn_vp, "LA")}
    if args.only:
        operators = {args.only: operators[args.only]}
    for kind, (matvec, which) in operators.items():
        started = time.perf_counter()
        top = top_eigenpairs(matvec, products.dim, args.top, tol=1e-6, which=which)
        seconds = time.perf_counter() - started
        four = top_eigenpairs(matvec, products.dim, 4, tol=1e-6, which=which)
        print(f"{kind}: Lanczos top-{args.top} in {top.products} products ({seconds:.1f} s with the {args.top} residual "
              f"products), max relative residual {float((top.residuals / top.values.abs()).max()):.1e}; "
              f"top-4 in {four.products} products")
        if not args.skip_baseline:
            values, count = power_iteration(matvec, products.dim, 4)
            errors = [abs(a - b) / abs(b) for a, b in zip(values, four.values.tolist())]
            print(f"{kind}: power iteration with deflation top-4 in {count} products "
                  f"({count / four.products:.2f}x Lanczos'), eigenvalue errors {', '.join(f'{e:.1e}' for e in errors)}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory {peak:.2f} GB")


if __name__ == "__main__":
    main()
