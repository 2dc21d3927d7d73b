"""Report inputs written in code, following docs' output contracts field for field.

These stand in for the producers (diff, behaviour, kernel, lab) until they land; a test against
real outputs then only swaps these writers for a real run. Values are small but realistic: a
2-layer Llama with every module kind, two k values, gap-limited entries, a NaN-bearing tensor,
an SFT-like arm (dense update, large rotation) and an RL-like arm (sparse, small rotation).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

HIDDEN, KV, INTER, VOCAB, LAYERS = 16, 8, 32, 40, 2
KS = ("1", "4")


def llama_tensors() -> list[tuple[str, list[int], str, int | None]]:
    """(name, shape, module, layer) of a 2-layer Llama with tied-off lm_head and GQA."""
    out: list[tuple[str, list[int], str, int | None]] = [("model.embed_tokens.weight", [VOCAB, HIDDEN], "embed", None)]
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        out += [
            (p + "input_layernorm.weight", [HIDDEN], "norm", layer),
            (p + "self_attn.q_proj.weight", [HIDDEN, HIDDEN], "q", layer),
            (p + "self_attn.k_proj.weight", [KV, HIDDEN], "k", layer),
            (p + "self_attn.v_proj.weight", [KV, HIDDEN], "v", layer),
            (p + "self_attn.o_proj.weight", [HIDDEN, HIDDEN], "o", layer),
            (p + "post_attention_layernorm.weight", [HIDDEN], "norm", layer),
            (p + "mlp.gate_proj.weight", [INTER, HIDDEN], "gate", layer),
            (p + "mlp.up_proj.weight", [INTER, HIDDEN], "up", layer),
            (p + "mlp.down_proj.weight", [HIDDEN, INTER], "down", layer),
        ]
    out += [("model.norm.weight", [HIDDEN], "norm", None), ("lm_head.weight", [VOCAB, HIDDEN], "lm_head", None)]
    return out


def _angles(rng: random.Random, k: int, scale: float) -> list[float]:
    return sorted(scale * rng.uniform(0.1, 1.0) for _ in range(k))


def tensor_row(rng: random.Random, name, shape, module, layer, *, arm: str, nan: bool = False) -> dict:
    numel = math.prod(shape)
    rl = arm == "rl"
    bitwise = rng.uniform(0.55, 0.9) if rl else rng.uniform(0.01, 0.12)
    fro = rng.uniform(0.01, 0.05) if rl else rng.uniform(0.2, 0.6)
    row = {
        "name": name, "shape": shape, "dtype": "bfloat16", "numel": numel, "module": module, "layer": layer,
        "unchanged_bitwise": bitwise, "unchanged_relative": bitwise,
        "unchanged_absolute": {"1e-05": min(1.0, bitwise + 0.05)},
        "visible_fraction": 1 - bitwise,
        "nonfinite": 0, "delta_fro": fro, "delta_rel": fro / 4.0, "delta_max_abs": fro / 3.0,
    }
    if len(shape) == 2:
        m, n = shape
        r = min(m, n)
        sigma1 = fro * rng.uniform(0.3, 0.7)
        row.update({
            "delta_spectral": sigma1, "numerical_rank": r, "effective_rank": r * rng.uniform(0.5, 0.9),
            "stable_rank": (fro / sigma1) ** 2, "energy_rank_90": max(1, int(0.6 * r)),
            "energy_rank_99": max(1, int(0.9 * r)), "rank1_share": (sigma1 / fro) ** 2,
            "rank_method": "gram-eigvalsh-float64",
        })
        by_k = {}
        for key in KS:
            k = int(key)
            left = _angles(rng, k, 3.0 if rl else 35.0)
            right = _angles(rng, k, 2.0 if rl else 30.0)
            gap = rng.uniform(0.002, 0.2)
            wedin = sigma1 / gap
            blocks = {}
            base = {"PP": k * k / (m * n), "PQ": k * (n - k) / (m * n), "QP": (m - k) * k / (m * n),
                    "QQ": (m - k) * (n - k) / (m * n)}
            raw = {b: base[b] * rng.uniform(0.5, 2.0) for b in base}
            total = sum(raw.values())
            for b in base:
                blocks[b] = {"share": raw[b] / total, "baseline": base[b]}
            by_k[key] = {
                "angles_left_deg": left, "angles_right_deg": right,
                "angle_max_left_deg": max(left), "angle_max_right_deg": max(right),
                "angle_mean_left_deg": sum(left) / k, "angle_mean_right_deg": sum(right) / k,
                "gap_k": gap, "wedin_bound": wedin, "gap_limited": wedin >= 1.0, "block_shares": blocks,
            }
        row.update({
            "by_k": by_k, "nss": rng.uniform(0.001, 0.01) if rl else rng.uniform(0.05, 0.2),
            "rescale_share": rng.uniform(0.2, 0.5) if rl else rng.uniform(0.02, 0.08),
            "rescale_baseline": r / (m * n), "principal_overlap": rng.uniform(0.03, 0.08),
            "low_overlap": rng.uniform(0.03, 0.08), "overlap_baseline": 0.05,
            "method": {"mode": "fast", "angles": "top-k vectors from eigh of W0ᵀW0 and W1ᵀW1 float64; sine-based angles",
                       "nss": "full spectrum, from eigh float64", "frame": "Gram + eigh float64 on the smaller side"},
        })
    if nan:
        row.update({"nonfinite": 3, "delta_fro": None, "delta_rel": None, "delta_max_abs": None,
                    "delta_spectral": None, "effective_rank": None, "stable_rank": None, "rank1_share": None,
                    "nss": None, "rescale_share": None})
        for entry in row.get("by_k", {}).values():
            entry.update({"angle_max_left_deg": None, "angle_max_right_deg": None, "wedin_bound": None})
    return row


def diff_doc(arm: str, seed: int, *, nan_tensor: str | None = None, name: str | None = None) -> dict:
    rng = random.Random(seed)
    rows = [tensor_row(rng, *t, arm=arm, nan=(t[0] == nan_tensor)) for t in llama_tensors()]
    total = sum(r["numel"] for r in rows)

    def pooled(key, rs):
        n = sum(r["numel"] for r in rs)
        return sum(r[key] * r["numel"] for r in rs) / n

    summary = {
        "numel": total, "unchanged_bitwise": pooled("unchanged_bitwise", rows),
        "unchanged_relative": pooled("unchanged_relative", rows),
        "unchanged_absolute": {"1e-05": sum(r["unchanged_absolute"]["1e-05"] * r["numel"] for r in rows) / total},
        "by_module": {m: {"numel": sum(r["numel"] for r in rows if r["module"] == m),
                          "unchanged_bitwise": pooled("unchanged_bitwise", [r for r in rows if r["module"] == m])}
                      for m in sorted({r["module"] for r in rows})},
        "by_layer": {str(layer): {"unchanged_bitwise": pooled("unchanged_bitwise", [r for r in rows if r["layer"] == layer])}
                     for layer in range(LAYERS)},
    }
    return {
        "base": "lab/base", "tuned": f"lab/{name or arm}", "options": {"metrics": ["sparsity", "size", "rank", "spectral", "frame"],
                                                             "top_k": [1, 4], "exact": False, "tolerances": [1e-5]},
        "summary": summary,
        "skipped": [{"name": "model.rotary_emb.inv_freq", "dtype": "int64", "reason": "not a float tensor"}],
        "unmatched": {"base_only": [], "tuned_only": []},
        "tensors": rows,
    }


def passk_doc(arm: str, name: str | None = None) -> dict:
    ks = [1, 2, 4, 8, 16, 32, 64]
    base = [0.22, 0.33, 0.45, 0.57, 0.67, 0.75, 0.81]
    tuned = [0.41, 0.48, 0.55, 0.60, 0.64, 0.67, 0.69] if arm == "rl" else [0.30, 0.40, 0.50, 0.59, 0.66, 0.72, 0.77]
    cross = next((k for k, b, t in zip(ks, base, tuned) if b > t), None)

    def model(values):
        return {"k": ks, "pass_at_k": values, "ci_low": [max(0, v - 0.06) for v in values],
                "ci_high": [min(1, v + 0.06) for v in values], "n_problems": 50, "n_min": 64}

    name = name or arm
    return {"models": {"base": model(base), name: model(tuned)},
            "crossover": {"base": "base", "tuned": name, "k": cross,
                          "rule": "smallest common k from which base pass@k > tuned pass@k at every larger k"},
            "method": {"estimator": "unbiased pass@k, 1 - C(n-c,k)/C(n,k), exact in float64",
                       "ci": "percentile bootstrap over problems, 1000 resamples, level 0.95, seed 0"}}


def support_doc(arm: str, name: str | None = None) -> dict:
    counts = {"P": 30, "E": 2, "S": 5, "O": 13} if arm == "rl" else {"P": 26, "E": 7, "S": 6, "O": 11}
    p, e, s = counts["P"], counts["E"], counts["S"]
    srr, ndr = p / (p + s), e / (p + e)
    classes = ["P"] * p + ["E"] * e + ["S"] * s + ["O"] * counts["O"]
    return {"base": "base", "tuned": name or arm, "k": 64, "counts": counts, "SRR": srr, "NDR": ndr,
            "SDS": 2 * srr * ndr / (srr + ndr), "NSCR": (e - s) / (p + e + s), "epsilon": math.log(20) / 64,
            "problems": [{"id": f"add-{i}", "base_correct": c in "PS", "tuned_correct": c in "PE", "class": c}
                         for i, c in enumerate(classes)]}


def divergence_doc(arm: str, name: str | None = None) -> dict:
    f = 1.0 if arm == "rl" else 4.0
    return {"base": "base", "tuned": name or arm, "n_prompts": 32, "n_samples": 4, "method": "exact over vocabulary",
            "forward_kl": {"token_mean": 0.012 * f, "sequence_mean": 0.15 * f},
            "reverse_kl": {"token_mean": 0.010 * f, "sequence_mean": 0.13 * f},
            "entropy": {"base": {"token": 0.82, "answer": 1.9}, "tuned": {"token": 0.82 - 0.1 * f, "answer": 1.9 - 0.3 * f}},
            "cross_perplexity": {"tuned_under_base": 1.3 + 0.1 * f, "base_under_tuned": 1.4 + 0.2 * f}}


def comparison(rng: random.Random, r: int, n: int, rotate: float) -> dict:
    angles = sorted(rotate * rng.uniform(0.05, 1.0) for _ in range(r))
    return {"top_r": r, "eigenvalue_log_ratios": [rng.uniform(-0.3, 0.5) for _ in range(r)], "angles_deg": angles,
            "gap": rng.uniform(0.1, 2.0), "wedin_bound": rng.uniform(0.05, 0.9), "gap_limited": False,
            "alignment": 1 - rotate / 200, "rescale_share": rng.uniform(0.4, 0.8) if rotate < 10 else rng.uniform(0.05, 0.2),
            "rescale_baseline": 2 / (n + 1)}


def kernel_doc(arm: str, seed: int) -> dict:
    rng = random.Random(seed)
    n, r = 16, 4
    rotate = 4.0 if arm == "rl" else 30.0
    base_ev = sorted((10 * 0.6 ** i for i in range(n)), reverse=True)
    tuned_ev = sorted((v * rng.uniform(0.8, 1.5) for v in base_ev), reverse=True)
    return {
        "mode": "sketch", "dim": 4096, "seed": 0, "n_probes": n, "output": "logprob",
        "base": {"eigenvalues": base_ev}, "tuned": {"eigenvalues": tuned_ev},
        "comparison": comparison(rng, r, n, rotate), "error_estimate": 0.021,
        "dtype": "float32", "gradient_method": "CountSketch of per-example gradients, parameter-grouped",
        "traits": {"names": ["addition", "copy", "reverse"], "n_lines": 24,
                   "base": {"eigenvalues": [3.0, 1.0, 0.2]}, "tuned": {"eigenvalues": [3.3, 0.9, 0.2]},
                   "comparison": comparison(rng, 2, 3, rotate),
                   "traits": [{"name": t, "predicted": rng.uniform(-0.2, 0.1), "measured": rng.uniform(-0.2, 0.1)}
                              for t in ("addition", "copy", "reverse")]},
        "trajectory": [{"checkpoint": f"checkpoint-{s}", "vs_base": comparison(rng, r, n, rotate * s / 40),
                        "vs_previous": comparison(rng, r, n, rotate / 4)} for s in (10, 20, 30, 40)],
    }


def tracking_lines(arm: str, seed: int) -> list[dict]:
    rng = random.Random(seed)
    lines = []
    for step in range(0, 40, 5):
        for tensor in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
            lines.append({"step": step, "tensor": tensor, "k": 4,
                          "bf16_visible_fraction": rng.uniform(0.1, 0.3) if arm == "rl" else rng.uniform(0.7, 0.95),
                          "update_fro": rng.uniform(0.001, 0.01), "angle_to_prev_deg": rng.uniform(0, 2),
                          "angle_to_base_deg": step * (0.1 if arm == "rl" else 0.8)})
    return lines


def _claim(cid, claim, verdict, rule, numbers, effect, ci, unit, published=None):
    return {"id": cid, "claim": claim, "verdict": verdict, "rule": rule, "numbers": numbers,
            "effect": {"estimate": effect, "ci": ci, "unit": unit}, "published": published, "excluded": {}, "note": None}


def claims_doc() -> dict:
    """The lab's claims.json (SPEC §10 format): verdicts, effects with intervals, published ranges, gates."""
    gate = {"passed": True, "metric": "dev loss", "before": 0.4, "after": 0.3, "change": -0.1, "ci": [-0.12, -0.08],
            "rule": "after − before below 0"}
    return {"arms": ["sft", "grpo"], "seeds": 2, "quick": True,
            "interval": {"level": 0.95, "method": "two-level percentile bootstrap over seeds and items"},
            "gates": {"sft": {"0": gate, "1": gate}, "grpo": {"0": gate, "1": {**gate, "passed": False}}},
            "claims": [
                _claim("sparsity", "bf16 update sparsity is higher for RL than for SFT", "holds",
                       "mean over seeds of grpo > sft", {"bf16_unchanged": {"sft": [0.06, 0.07], "grpo": [0.72, 0.69]}},
                       0.64, [0.6, 0.68], "fraction",
                       {"source": "Path Not Taken, Table 1 (SPEC §8)", "sft": [0.006, 0.188], "grpo": [0.36, 0.92],
                        "unit": "fraction"}),
                _claim("crossover", "the base overtakes RL at large k", "inconclusive", "crossover k exists for every seed",
                       {"k": {"sft": [None, None], "grpo": [32, None]}}, 0.02, [-0.01, 0.05], "pass@k"),
                _claim("kl", "forward KL is lower for RL than for SFT", "contradicted",
                       "grpo forward KL below sft's", {"forward_kl": {"sft": [0.05, 0.04], "grpo": [0.06, 0.05]}},
                       0.01, [0.004, 0.02], "nats/token"),
            ]}


def forgetting_doc() -> dict:
    """The lab's analysis/forgetting.json: per tuned model its forward KL and held-out accuracy drop."""
    rows = [("sft-seed0", 0.11, 0.05), ("sft-seed1", 0.12, 0.06), ("grpo-seed0", 0.02, 0.01), ("grpo-seed1", 0.03, 0.0)]
    from deltalens.behavior.evaluate import linear_fit  # the producer's own fit, as the lab writes it

    return {"base": "base", "kl": "forward_token", "tasks": ["copy", "reverse"],
            "models": [{"model": m, "kl": kl, "accuracy_drop": d} for m, kl, d in rows],
            "fit_accuracy_drop": linear_fit([r[1] for r in rows], [r[2] for r in rows])}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def write_arm(folder: Path, arm: str, seed: int, *, nan_tensor: str | None = None, name: str | None = None) -> Path:
    """Every per-arm input: diff, passk, support, divergence, kernel and tracking; ``name`` is the
    tuned model's name in them (default: ``arm``)."""
    name = name or arm
    write_json(folder / "diff.json", diff_doc(arm, seed, nan_tensor=nan_tensor, name=name))
    write_json(folder / "passk.json", passk_doc(arm, name=name))
    write_json(folder / "support.json", support_doc(arm, name=name))
    write_json(folder / "divergence.json", divergence_doc(arm, name=name))
    write_json(folder / "kernel.json", kernel_doc(arm, seed))
    (folder / "tracking.jsonl").write_text("".join(json.dumps(line) + "\n" for line in tracking_lines(arm, seed)))
    return folder


NAN_TENSOR = "model.layers.1.mlp.up_proj.weight"


#: The arm folders of the fixture lab: (folder, fixture arm kind, seed of the planted values).
LAB_ARMS = (("sft-seed0", "sft", 1), ("sft-seed1", "sft", 3), ("grpo-seed0", "rl", 2), ("grpo-seed1", "rl", 4))


def write_lab(root: Path) -> Path:
    """A lab-shaped folder: claims.json and forgetting.json at the top, one subfolder per arm and seed
    (SFT-like and RL-like, two seeds each), as the lab's ``analysis/<arm>-seed<s>`` folders."""
    write_json(root / "claims.json", claims_doc())
    write_json(root / "forgetting.json", forgetting_doc())
    for folder, arm, seed in LAB_ARMS:
        write_arm(root / folder, arm, seed=seed, nan_tensor=NAN_TENSOR if folder == "grpo-seed0" else None,
                  name=folder)
    return root
