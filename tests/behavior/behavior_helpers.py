"""Builders of crafted samples/problems files for the behaviour tests."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def samples_rows(model: str, flags: dict[str, list[bool]], answers: dict[str, list] | None = None) -> list[dict]:
    rows = []
    for pid, fl in flags.items():
        for j, c in enumerate(fl):
            ext = answers[pid][j] if answers else ("1" if c else "0")
            rows.append({"id": pid, "model": model, "sample_index": j, "completion": f"answer {ext}",
                         "extracted": ext, "correct": c, "logprob": -1.0, "n_tokens": 3,
                         "finish_reason": "stop"})
    return rows


def markov_llama(tokenizer, table, seed: int = 0):
    """A tiny Llama whose next-token distribution is set by hand and depends only on the
    current token: token t in group g = t % G predicts softmax(table[g]) (table: [G, V] logits).

    Attention and MLP outputs are zeroed, so the last hidden state is RMSNorm(embed[t]); the
    embeddings are one-hot e_g and the norm weight undoes RMSNorm's scaling, so h = e_g and
    logits = lm_head.weight[:, g] = table[g].
    """
    import torch

    from deltalens.lab.tiny_model import build_tiny_llama

    model = build_tiny_llama(tokenizer=tokenizer, seed=seed)
    table = torch.as_tensor(table, dtype=torch.float32)
    n_groups, vocab = table.shape
    d = model.config.hidden_size
    eps = model.config.rms_norm_eps
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = torch.zeros_like(model.model.embed_tokens.weight)
        for t in range(vocab):
            emb[t, t % n_groups] = 1.0
        model.model.embed_tokens.weight.copy_(emb)
        model.model.norm.weight.fill_((1.0 / d + eps) ** 0.5)
        head = torch.zeros_like(model.lm_head.weight)
        head[:, :n_groups] = table.T
        model.lm_head.weight.copy_(head)
    return model


def markov_table(tokenizer, n_groups: int = 2, seed: int = 0, allowed: str = "0123456789 ", eos_logit: float = -1.0):
    """Random logits over a few allowed characters (+ EOS); every other token gets -inf-like -1e4."""
    import torch

    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    table = torch.full((n_groups, vocab), -1e4)
    ids = [tokenizer.convert_tokens_to_ids(c) for c in allowed]
    for r in range(n_groups):
        table[r, ids] = 2.0 * torch.randn(len(ids), generator=g)
        table[r, tokenizer.eos_token_id] = eos_logit
    return table
