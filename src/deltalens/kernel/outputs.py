"""Per-probe scalar outputs f_i(θ) for the kernel (SPEC §6) and probe encoding.

An *output function* maps ``(model, batch) -> Tensor[b]``: one scalar per example of a batch.
``batch`` is a dict of tensors whose leading dimension is the example index. Gradients of
these scalars with respect to the parameters are the rows of J (``gradients.py``).

For causal language models a probe is ``{"prompt", "completion"}``; it is encoded as the
concatenated token ids, right-padded, with a mask marking the completion tokens. Right
padding needs no attention mask: under causal attention a real token never sees the padding
that follows it, and positions start at 0 as without padding, so each example's scalar is the
one its unpadded sequence gives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from deltalens.errors import DeltalensError

OutputFn = Callable[[torch.nn.Module, dict], torch.Tensor]


def model_context_length(model: torch.nn.Module) -> int | None:
    """The model's maximum sequence length from its config, or ``None`` when it has none."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def encode_probes(
    tokenizer,
    probes: Sequence[dict],
    *,
    max_length: int | None = None,
    source: str = "probes",
) -> dict[str, torch.Tensor]:
    """Encode ``{prompt, completion}`` probes as ``{"input_ids", "completion_mask"}`` (b×L).

    The prompt is tokenized with the tokenizer's special tokens, the completion without; an
    empty prompt falls back to the BOS token. ``completion_mask[i, t] = 1`` where token t of
    example i belongs to the completion. Raises :class:`DeltalensError` for an empty list,
    an empty completion, or a probe longer than ``max_length`` (the model's context).
    """
    if not probes:
        raise DeltalensError(f"{source}: no probes (expected one {{prompt, completion}} object per line)")
    rows: list[tuple[list[int], int]] = []
    for i, probe in enumerate(probes, 1):
        for field in ("prompt", "completion"):
            if not isinstance(probe.get(field), str):
                raise DeltalensError(f"{source}: probe {i}: field '{field}' must be a string")
        prompt_ids = list(tokenizer(probe["prompt"], add_special_tokens=True)["input_ids"])
        completion_ids = list(tokenizer(probe["completion"], add_special_tokens=False)["input_ids"])
        if not completion_ids:
            raise DeltalensError(f"{source}: probe {i}: empty completion (nothing to score)")
        if not prompt_ids:
            if tokenizer.bos_token_id is None:
                raise DeltalensError(f"{source}: probe {i}: empty prompt and the tokenizer has no BOS token")
            prompt_ids = [tokenizer.bos_token_id]
        ids = prompt_ids + completion_ids
        if max_length is not None and len(ids) > max_length:
            raise DeltalensError(
                f"{source}: probe {i} is {len(ids)} tokens, longer than the model's context of {max_length}"
            )
        rows.append((ids, len(prompt_ids)))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width))
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, n_prompt : len(ids)] = 1.0
    return {"input_ids": input_ids, "completion_mask": mask}


def _completion_token_logprobs(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    ids = batch["input_ids"]
    out = model(input_ids=ids)
    logits = out.logits if hasattr(out, "logits") else out
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    token_logp = logp.gather(-1, ids[:, 1:, None])[..., 0]
    mask = batch["completion_mask"][:, 1:].to(token_logp.dtype)
    return token_logp * mask, mask


def completion_logprob(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """f_i = Σ_t log p_θ(y_t | x, y_<t): log-likelihood of each completion (SPEC §6 default)."""
    token_logp, _ = _completion_token_logprobs(model, batch)
    return token_logp.sum(-1)


def completion_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """ℓ_i = −(1/|y|) Σ_t log p_θ(y_t | x, y_<t): mean token NLL of each completion (trait loss, SPEC §6)."""
    token_logp, mask = _completion_token_logprobs(model, batch)
    return -token_logp.sum(-1) / mask.sum(-1)


OUTPUTS: dict[str, OutputFn] = {"logprob": completion_logprob, "loss": completion_loss}


def output_function(name: str) -> OutputFn:
    """The output function registered under ``name`` (``logprob`` or ``loss``)."""
    if name not in OUTPUTS:
        raise DeltalensError(f"--output: unknown output '{name}' (expected one of {', '.join(OUTPUTS)})")
    return OUTPUTS[name]


def batch_size(batch) -> int:
    """Number of examples in a batch (leading dimension of its first tensor)."""
    leaves = [v for v in torch.utils._pytree.tree_leaves(batch) if isinstance(v, torch.Tensor)]
    if not leaves:
        raise DeltalensError("batch: no tensors in the batch")
    return int(leaves[0].shape[0])


def slice_batch(batch, index: slice):
    """The examples ``index`` of a batch (every tensor leaf sliced on its leading dimension)."""
    return torch.utils._pytree.tree_map(lambda v: v[index] if isinstance(v, torch.Tensor) else v, batch)


@torch.no_grad()
def evaluate_outputs(model: torch.nn.Module, output_fn: OutputFn, batch, *, chunk_size: int = 32) -> torch.Tensor:
    """f(θ) for every example, in float64 (no gradients), evaluated ``chunk_size`` at a time."""
    n = batch_size(batch)
    values = [output_fn(model, slice_batch(batch, slice(s, s + chunk_size))) for s in range(0, n, chunk_size)]
    return torch.cat(values).double()
