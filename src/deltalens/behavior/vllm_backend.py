"""The ``vllm`` sampling backend (optional extra: ``pip install 'deltalens[vllm]'``).

Imported only when ``--backend vllm`` is chosen. One ``SamplingParams(n=...)`` request per
problem, so vLLM shares the prompt's KV cache across its n samples; ``tensor_parallel_size``
and any other ``vllm.LLM`` keyword spread the model over GPUs. ``logprobs=0`` makes vLLM
return the sampled tokens' log-probabilities, summed into ``cumulative_logprob``.
Not exercised by the test suite (vLLM needs a GPU and is not installed there).
"""

from __future__ import annotations

from collections.abc import Iterator

from deltalens.errors import DeltalensError


def vllm_generate(model_path: str, jobs, cfg, *, problems_per_call: int = 256, **engine_kwargs) -> Iterator[list[dict]]:
    """Yield batches of sample rows for ``jobs`` = [(problem, [sample_index, ...]), ...]."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise DeltalensError("--backend vllm needs the optional extra: pip install 'deltalens[vllm]'") from None
    from deltalens.behavior.backend import sample_seed

    llm = LLM(model=model_path, seed=cfg.seed, **engine_kwargs)
    for start in range(0, len(jobs), problems_per_call):
        chunk = jobs[start:start + problems_per_call]
        params = [SamplingParams(n=len(idxs), temperature=cfg.temperature, top_p=cfg.top_p,
                                 max_tokens=cfg.max_new_tokens, stop=list(cfg.stop) or None, logprobs=0,
                                 seed=sample_seed(cfg.seed, p.id, idxs[0]) % (2 ** 31))
                  for p, idxs in chunk]
        outputs = llm.generate([p.prompt for p, _ in chunk], params, use_tqdm=False)
        rows = []
        for (p, idxs), out in zip(chunk, outputs):
            for j, c in zip(idxs, out.outputs):
                rows.append({"id": p.id, "sample_index": j, "completion": c.text, "n_tokens": len(c.token_ids),
                             "finish_reason": c.finish_reason or "length", "logprob": c.cumulative_logprob})
        yield rows
