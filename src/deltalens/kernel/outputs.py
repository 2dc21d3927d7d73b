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


def probe_text(line: dict, where: str) -> tuple[str, str]:
    """(prompt, completion) of a probe line: ``{prompt, completion}``, or the behaviour problem
    format ``{id, prompt, answer, task?}`` whose ``answer`` (a string or a number) stands in for a
    missing ``completion``. One :class:`DeltalensError` line naming ``where`` otherwise."""
    if not isinstance(line, dict):
        raise DeltalensError(f"{where}: expected a JSON object with 'prompt' and 'completion' (or 'answer')")
    completion = line.get("completion", line.get("answer"))
    if isinstance(completion, (int, float)) and not isinstance(completion, bool):
        completion = str(completion)
    for field, value in (("prompt", line.get("prompt")), ("completion", completion)):
        if not isinstance(value, str):
            raise DeltalensError(f"{where}: field '{field}' must be a string"
                                 + (" (or give 'answer', as in a problems file)" if field == "completion" else ""))
    return line["prompt"], completion


def encode_probes(
    tokenizer,
    probes: Sequence[dict],
    *,
    max_length: int | None = None,
    source: str = "probes",
) -> dict[str, torch.Tensor]:
    """Encode ``{prompt, completion}`` probes (or problems ``{prompt, answer}``, :func:`probe_text`)
    as ``{"input_ids", "completion_mask"}`` (b×L).

    The prompt is tokenized with the tokenizer's special tokens, the completion without; an
    empty prompt falls back to the BOS token. ``completion_mask[i, t] = 1`` where token t of
    example i belongs to the completion. Raises :class:`DeltalensError` for an empty list,
    an empty completion, or a probe longer than ``max_length`` (the model's context).
    """
    if not probes:
        raise DeltalensError(f"{source}: no probes (expected one {{prompt, completion}} object per line)")
    rows: list[tuple[list[int], int]] = []
    for i, probe in enumerate(probes, 1):
        prompt, completion = probe_text(probe, f"{source}: probe {i}")
        prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
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
VECTOR_OUTPUTS = ("logits-trace", "logits-full")
"""Multi-output kernels: the logits of chosen vocabulary entries at chosen completion positions;
``logits-full`` is the (n·m)×(n·m) kernel of all (probe, position, token) rows, ``logits-trace``
its n×n sum over the m outputs (SPEC §6, multi-output eNTK)."""


def _logits(model, ids):
    out = model(input_ids=ids)
    logits = out.logits if hasattr(out, "logits") else out
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _position_index(batch: dict, positions: torch.Tensor) -> torch.Tensor:
    """Sequence index of the logits that predict completion token k, for each k in ``positions``:
    (first completion index) − 1 + k, as (b, len(positions))."""
    start = batch["completion_mask"].argmax(-1)
    return start[:, None] - 1 + positions.to(start.device)[None, :]


def logits_output(positions: Sequence[int], token_ids: Sequence[int]) -> OutputFn:
    """Output function with m = len(positions)·len(token_ids) outputs per probe:
    f_{i,(k,v)} = logit of vocabulary entry v at the position predicting completion token k
    (k = 0 is the first completion token), ordered position-major."""
    pos = torch.tensor([int(k) for k in positions], dtype=torch.long)
    ids = torch.tensor([int(v) for v in token_ids], dtype=torch.long)

    def logits_of(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        logits = _logits(model, batch["input_ids"])
        index = _position_index(batch, pos)
        rows = logits.gather(1, index[:, :, None].expand(-1, -1, logits.shape[-1]))
        rows = rows.index_select(-1, ids.to(rows.device))
        return rows.reshape(rows.shape[0], -1)

    return logits_of


def check_positions(batch: dict, positions: Sequence[int], source: str = "probes") -> None:
    """Every probe's completion must have a token at each chosen position (one error line otherwise)."""
    if not positions or min(positions) < 0:
        raise DeltalensError(f"--positions: expected completion token indices ≥ 0, got {list(positions)}")
    lengths = batch["completion_mask"].sum(-1).long().tolist()
    for i, length in enumerate(lengths, 1):
        if max(positions) >= length:
            raise DeltalensError(f"{source}: probe {i} has a completion of {length} token(s); --positions needs "
                                 f"index {max(positions)} (indices count completion tokens from 0)")


@torch.no_grad()
def top_tokens(model: torch.nn.Module, batch: dict, positions: Sequence[int], count: int, *, chunk_size: int = 32) -> list[int]:
    """The ``count`` vocabulary entries with the largest mean probability over the probes and
    ``positions`` under ``model`` (the base), ties to the smaller id."""
    pos = torch.tensor([int(k) for k in positions], dtype=torch.long)
    total = None
    n = batch_size(batch)
    for s in range(0, n, chunk_size):
        part = slice_batch(batch, slice(s, s + chunk_size))
        logits = _logits(model, part["input_ids"])
        index = _position_index(part, pos)
        probs = torch.softmax(logits.gather(1, index[:, :, None].expand(-1, -1, logits.shape[-1])).double(), -1)
        total = probs.sum((0, 1)) if total is None else total + probs.sum((0, 1))
    if count < 1 or count > total.numel():
        raise DeltalensError(f"--top-v: expected 1 … {total.numel()} (the vocabulary), got {count}")
    order = torch.sort(-total.cpu(), stable=True).indices
    return [int(v) for v in order[:count]]


def output_function(name: str) -> OutputFn:
    """The output function registered under ``name`` (``logprob`` or ``loss``)."""
    if name not in OUTPUTS:
        raise DeltalensError(f"--output: unknown output '{name}' (expected one of {', '.join(OUTPUTS)})")
    return OUTPUTS[name]


def _flat(batch) -> bool:
    """A dict whose values are tensors or scalars (no nesting): sliced without the pytree walk."""
    return type(batch) is dict and not any(isinstance(v, (dict, list, tuple)) for v in batch.values())


def batch_size(batch) -> int:
    """Number of examples in a batch (leading dimension of its first tensor)."""
    if _flat(batch):
        leaves = [v for v in batch.values() if isinstance(v, torch.Tensor)]
    else:
        leaves = [v for v in torch.utils._pytree.tree_leaves(batch) if isinstance(v, torch.Tensor)]
    if not leaves:
        raise DeltalensError("batch: no tensors in the batch")
    return int(leaves[0].shape[0])


def slice_batch(batch, index: slice):
    """The examples ``index`` of a batch (every tensor leaf sliced on its leading dimension)."""
    if _flat(batch):
        return {k: v[index] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return torch.utils._pytree.tree_map(lambda v: v[index] if isinstance(v, torch.Tensor) else v, batch)


@torch.no_grad()
def evaluate_outputs(model: torch.nn.Module, output_fn: OutputFn, batch, *, chunk_size: int = 32) -> torch.Tensor:
    """f(θ) for every example, in float64 (no gradients), evaluated ``chunk_size`` at a time."""
    n = batch_size(batch)
    values = [output_fn(model, slice_batch(batch, slice(s, s + chunk_size))) for s in range(0, n, chunk_size)]
    return torch.cat(values).double()
