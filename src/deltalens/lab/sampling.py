"""The lab's own simple sampler and pass@k: PROVISIONAL.

Used to calibrate the base (is it competent but imperfect?) and for the RFT arm's
self-generated data. The behaviour area (SPEC §7) owns the real sampling backends and pass@k
with bootstrap CIs; once it lands the lab's stage 5 uses that, and this module remains only
for calibration and RFT data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def sample_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 1024,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[str]]:
    """``n`` sampled completions per prompt (pure ancestral sampling at ``temperature``,
    no top-k/top-p), decoded up to the first ``<eos>``; deterministic in ``seed``.

    Prompts are left-padded and repeated ``n`` times; batches hold ``batch_size`` sequences.
    """
    import torch

    flat = [p for p in prompts for _ in range(n)]
    out: list[str] = []
    generator_seed = seed
    model.eval()
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        enc = tokenizer(chunk, add_special_tokens=False, padding=True, return_tensors="pt")
        torch.manual_seed(generator_seed + start)
        with torch.no_grad():
            gen = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new = gen[:, enc["input_ids"].shape[1] :]
        for row in new.tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            out.append(tokenizer.decode([t for t in row if t != tokenizer.pad_token_id]))
        if on_batch is not None:
            on_batch(len(chunk))
    return [out[i * n : (i + 1) * n] for i in range(len(prompts))]


def pass_at_k_unbiased(n: int, c: int, k: int) -> float:
    """Chen et al. (2021) per-problem pass@k = 1 − C(n−c, k)/C(n, k), as the product
    1 − Π_{i=n−c+1..n}(1 − k/i); 1.0 when n − c < k (SPEC §7). PROVISIONAL: see module doc."""
    if k > n:
        raise ValueError(f"pass@k needs k ≤ n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_ks(correct_counts: Sequence[int], n: int) -> dict[int, float]:
    """Mean pass@k over problems for k = 1, 2, 4, …, n (``correct_counts`` per problem)."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) <= n]
    return {k: sum(pass_at_k_unbiased(n, c, k) for c in correct_counts) / len(correct_counts) for k in ks}
