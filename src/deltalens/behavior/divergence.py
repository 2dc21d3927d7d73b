"""KL divergence, entropy and cross-perplexity between a base and a tuned model (SPEC §7).

Following RL's Razor (Shenfeld et al. 2025), forward KL is E_{x∼prompts} KL(π0‖π1) computed
*exactly over the vocabulary* at every position of sequences sampled from π0 (the base);
reverse KL is KL(π1‖π0) along sequences sampled from π1. Summed over a sequence's tokens,
this is an unbiased estimate of the sequence-level KL; per token it is the mean of the exact
next-token KLs. Entropy and perplexity follow Yue et al. 2025 §4.1.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence

from deltalens.errors import DeltalensError


# ----------------------------------------------------------------------------- pure metrics
def kl_categorical(logp, logq):
    """KL(p‖q) = Σ_v p_v (log p_v − log q_v) over the last axis, from log-probabilities (nats).

    Terms with p_v = 0 contribute 0 (also when q_v = 0).
    """
    import torch

    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def entropy_categorical(logp):
    """H(p) = −Σ_v p_v log p_v over the last axis, from log-probabilities (nats)."""
    import torch

    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def kl_estimators(logp_sampled: Sequence[float], logq_sampled: Sequence[float]) -> dict:
    """Sample-based estimates of KL(p‖q) from log-probabilities of tokens drawn from p (SPEC §7).

    With r = q(x)/p(x): k1 = −log r (unbiased, can be negative), k3 = (r − 1) − log r
    (unbiased, never negative; Schulman 2020). Returns their means over the tokens. These are
    estimates, for when only sampled log-probabilities exist; the exact value sums over the vocabulary.
    """
    if len(logp_sampled) != len(logq_sampled) or not logp_sampled:
        raise DeltalensError("KL estimators need the same non-zero number of log-probabilities from both models")
    log_r = [lq - lp for lp, lq in zip(logp_sampled, logq_sampled)]
    return {"k1": _mean(-x for x in log_r), "k3": _mean(math.expm1(x) - x for x in log_r)}


def answer_entropy(answers: Sequence[str | None]) -> float:
    """Entropy (nats) of the empirical distribution of extracted answers; ``None`` counts as "NA"."""
    counts = Counter("NA" if a is None else str(a) for a in answers)
    total = sum(counts.values())
    if total == 0:
        raise DeltalensError("answer entropy needs at least one answer")
    return -math.fsum(c / total * math.log(c / total) for c in counts.values())


def perplexity(token_logprobs: Sequence[float]) -> float:
    """exp(−mean token log-probability) (Yue et al. 2025 §4.1)."""
    if len(token_logprobs) == 0:
        raise DeltalensError("perplexity needs at least one token")
    return math.exp(-math.fsum(token_logprobs) / len(token_logprobs))


def _mean(xs) -> float:
    xs = list(xs)
    return math.fsum(xs) / len(xs) if xs else float("nan")


# ----------------------------------------------------------------------------- scoring
def completion_logprobs(model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                        *, batch_size: int = 32):
    """Teacher-force prompt+completion; yield, batch by batch, one float64 tensor per sequence:
    the log-softmax next-token distributions at the positions that predict each completion
    token, shape [len(completion), vocab]. Prompts must be non-empty.
    """
    import torch

    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        ps, cs = prompts[start:start + batch_size], completions[start:start + batch_size]
        seqs = [list(p) + list(c) for p, c in zip(ps, cs)]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):  # right padding: positions are 0..len-1 as in training
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        yield [logits[i, len(p) - 1: len(p) + len(c) - 1].double().log_softmax(-1).cpu()
               for i, (p, c) in enumerate(zip(ps, cs))]


def score_sequences(model_a, model_b, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                    *, batch_size: int = 32) -> list[dict]:
    """Teacher-force prompt+completion through two models; per completion token return

    ``kl_ab`` = KL(a‖b) and ``entropy_a`` = H(a) exactly over the vocabulary (float64), and the
    log-probabilities ``logp_a``/``logp_b`` of the token that was generated. One dict of lists
    per sequence. Models must share the vocabulary.
    """
    import torch

    out: list[dict] = []
    batches = zip(completion_logprobs(model_a, prompts, completions, batch_size=batch_size),
                  completion_logprobs(model_b, prompts, completions, batch_size=batch_size))
    for start, (la, lb) in zip(range(0, len(prompts), batch_size), batches):
        for i, (a, b) in enumerate(zip(la, lb)):
            if a.shape[-1] != b.shape[-1]:
                raise DeltalensError(f"the two models have different vocabularies ({a.shape[-1]} vs {b.shape[-1]} logits)")
            tok = torch.tensor(list(completions[start + i]), dtype=torch.long)
            out.append({"kl_ab": kl_categorical(a, b).tolist(), "entropy_a": entropy_categorical(a).tolist(),
                        "logp_a": a.gather(-1, tok[:, None]).squeeze(-1).tolist(),
                        "logp_b": b.gather(-1, tok[:, None]).squeeze(-1).tolist()})
    return out


def _side(scores: list[dict], answers_by_prompt: dict[str, list]) -> dict:
    """Aggregate one sampling side: KL(sampler‖other), sampler entropy, other's log-probs."""
    seq_kl = [math.fsum(s["kl_ab"]) for s in scores if s["kl_ab"]]
    tok_kl = [_mean(s["kl_ab"]) for s in scores if s["kl_ab"]]
    tok_h = [_mean(s["entropy_a"]) for s in scores if s["entropy_a"]]
    other_lp = [x for s in scores for x in s["logp_b"]]
    if not other_lp:
        raise DeltalensError("every sampled completion is empty; raise --max-new-tokens")
    est = kl_estimators([x for s in scores for x in s["logp_a"]], other_lp)
    return {"kl": {"token_mean": _mean(tok_kl), "sequence_mean": _mean(seq_kl),
                   "k1_estimate": est["k1"], "k3_estimate": est["k3"]},
            "entropy": {"token": _mean(tok_h),
                        "answer": _mean(answer_entropy(a) for a in answers_by_prompt.values())},
            "perplexity_under_other": perplexity(other_lp)}


def divergence(base, tuned, prompts, *, tokenizer=None, n_samples: int = 4, max_new_tokens: int = 128,
               temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 64,
               stop: list[str] | None = None, extractor=None, device: str | None = None,
               base_name: str | None = None, tuned_name: str | None = None, revision: str | None = None,
               trust_remote_code: bool = False, limit: int | None = None) -> dict:
    """Forward/reverse KL, entropies and cross-perplexities: the content of ``divergence.json``.

    ``base``/``tuned``: model folders or loaded models (then ``tokenizer=`` is required);
    ``prompts``: a problems file or list (answers not needed). Each model draws ``n_samples``
    completions per prompt with the hf backend; ``extractor(text) -> str | None`` gives the
    final answer for answer-level entropy (default: the numeric extractor). ``limit``: the first N
    prompts of each task; ``revision`` (hub ids of both), ``trust_remote_code``, ``tokenizer``
    (object, folder or hub id): :func:`deltalens.models.load_model`.
    """
    from deltalens.behavior.formats import as_problems
    from deltalens.behavior.sampling import SamplingConfig, hf_generate, load_model
    from deltalens.behavior.verify import extract_number
    from deltalens.fingerprint import model_fingerprint
    from deltalens.models import check_same_vocabulary

    probs = as_problems(prompts, need_answer=False, limit=limit)
    m0, tok0, name0 = load_model(base, tokenizer, device=device, revision=revision, trust_remote_code=trust_remote_code)
    m1, _, name1 = load_model(tuned, tok0, device=device, revision=revision, trust_remote_code=trust_remote_code)
    check_same_vocabulary(m0, m1, str(base) if isinstance(base, (str, os.PathLike)) else name0,
                          str(tuned) if isinstance(tuned, (str, os.PathLike)) else name1)
    name0, name1 = base_name or name0, tuned_name or name1
    if name0 == name1:
        name0, name1 = f"{name0} (base)", f"{name1} (tuned)"
    extractor = extractor or extract_number
    cfg = SamplingConfig(n=n_samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                         seed=seed, batch_size=batch_size, stop=list(stop or []))
    cfg.check()
    prompt_ids = {p.id: tok0(p.prompt)["input_ids"] for p in probs}
    empty = [pid for pid, ids in prompt_ids.items() if not ids]
    if empty:
        raise DeltalensError(f"prompt of problem {empty[0]!r} encodes to no tokens")
    sides = {}
    for key, sampler, other in (("base", m0, m1), ("tuned", m1, m0)):
        rows = [r for batch in hf_generate(sampler, tok0, [(p, range(n_samples)) for p in probs], cfg) for r in batch]
        scores = score_sequences(sampler, other, [prompt_ids[r["id"]] for r in rows],
                                 [r["token_ids"] for r in rows], batch_size=batch_size)
        answers: dict[str, list] = {}
        for r in rows:
            answers.setdefault(r["id"], []).append(extractor(r["completion"]))
        sides[key] = _side(scores, answers)
    exact = temperature == 1.0 and top_p == 1.0
    return {
        "base": name0, "tuned": name1,
        "fingerprints": {"base": model_fingerprint(base, revision),
                         "tuned": model_fingerprint(tuned, revision)},
        "n_prompts": len(probs), "n_samples": n_samples,
        "method": ("exact over the vocabulary at each position of sequences sampled from the first model "
                   f"(forward: from base; reverse: from tuned); temperature {temperature}, top_p {top_p}"
                   + ("" if exact else " (NOT the models' own distributions: KL is along tempered samples)")
                   + f"; max_new_tokens {max_new_tokens}, seed {seed}; float64 log-softmax; nats. "
                   "k1_estimate/k3_estimate: per-token sample estimates from the sampled tokens' log-probabilities only"),
        "forward_kl": sides["base"]["kl"],
        "reverse_kl": sides["tuned"]["kl"],
        "entropy": {"base": sides["base"]["entropy"], "tuned": sides["tuned"]["entropy"]},
        "cross_perplexity": {"tuned_under_base": sides["tuned"]["perplexity_under_other"],
                             "base_under_tuned": sides["base"]["perplexity_under_other"]},
    }
