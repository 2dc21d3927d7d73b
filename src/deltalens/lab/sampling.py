"""The lab's plain batched sampler, for the RFT arm's self-generated training data.

Every measurement (pass@k, support, KL) goes through :mod:`deltalens.behavior` instead.
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
        enc = tokenizer(chunk, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
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
