"""The ``openai`` sampling backend: any OpenAI-compatible ``/v1/completions`` server.

Works with vLLM, SGLang, llama.cpp and ``transformers serve``. Each sample is one request
with ``n=1`` and its own ``seed`` (from (seed, problem id, sample_index)): servers differ in
whether they honour ``n`` (``transformers serve`` ignores it), and per-sample requests keep a
resumed run identical to a fresh one wherever the server honours ``seed``. Requests run
concurrently (``batch_size`` in flight); connection errors, timeouts, HTTP 408/409/429 and 5xx
are retried with exponential backoff and jitter; other HTTP errors stop the run with the
server's message. Only the standard library is used.

Servers do not all honour what is asked: ``transformers serve`` ignores ``temperature`` and
decodes greedily, some ignore ``seed`` or ``logprobs``. :func:`check_server` finds out with a
few short probe requests before a run, refuses a server that returns identical completions for
different seeds at temperature > 0 (where the model itself does not make that likely), and
returns a record of what was honoured, which :func:`deltalens.behavior.sample` writes next to
the samples (``S.jsonl.sampling.json``).
"""

from __future__ import annotations

import json
import math
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from deltalens.errors import DeltalensError

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def post_json(url: str, body: dict, *, api_key: str | None = None, timeout: float = 120.0,
              max_retries: int = 5, backoff: float = 0.5) -> dict:
    """POST ``body`` as JSON and return the decoded reply, retrying transient failures.

    Waits ``backoff·2^attempt`` seconds (at most 30, times a random factor in [0.5, 1)) between tries.
    """
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last = ""
    for attempt in range(max_retries + 1):
        if attempt:
            time.sleep(min(30.0, backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read().decode())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300].replace("\n", " ")
            if exc.code not in RETRY_STATUS:
                raise DeltalensError(f"{url}: HTTP {exc.code}: {detail}") from None
            last = f"HTTP {exc.code}: {detail}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        except json.JSONDecodeError:
            raise DeltalensError(f"{url}: the reply is not JSON") from None
    raise DeltalensError(f"{url}: no answer after {max_retries + 1} tries (last: {last})")


def parse_completion(reply: dict, url: str) -> dict:
    """completion, n_tokens, finish_reason and summed logprob of the first choice of a reply."""
    try:
        choice = reply["choices"][0]
        text = choice["text"]
    except (KeyError, IndexError, TypeError):
        raise DeltalensError(f"{url}: reply has no choices[0].text (is this an OpenAI-compatible completions endpoint?)") from None
    lp = (choice.get("logprobs") or {}).get("token_logprobs")
    tokens = (choice.get("logprobs") or {}).get("tokens")
    usage = reply.get("usage") or {}
    n_tokens = usage.get("completion_tokens", len(tokens) if tokens is not None else None)
    return {"completion": text, "n_tokens": n_tokens,
            "finish_reason": choice.get("finish_reason") or "length",
            "logprob": None if lp is None else float(sum(x for x in lp if x is not None))}


def completions_url(base_url: str) -> str:
    """``.../v1/completions`` from a server address with or without its ``/v1``."""
    base = base_url.rstrip("/")
    return base + "/completions" if base.endswith("/v1") else base + "/v1/completions"


# Identical probe completions for different seeds refuse the server when, were it sampling, the
# model would give them this joint probability or less (or when it returns no log-probabilities).
IDENTICAL_PROBABILITY_LIMIT = 1e-3
PROBE_PROBLEMS = 3
PROBE_TOKENS = 16


def _request(model: str, prompt: str, cfg, seed: int, max_tokens: int, logprobs: bool) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": cfg.temperature,
            "top_p": cfg.top_p, "n": 1, "seed": seed % (2 ** 31)}
    if logprobs:
        body["logprobs"] = 1  # 1, not 0: several servers read 0 as "no log-probabilities"
    if cfg.stop:
        body["stop"] = list(cfg.stop)
    return body


def check_server(url: str, model: str, problems, cfg, *, post) -> dict:
    """Probe what an OpenAI-compatible server honours, before a run (a few short requests).

    ``post(body) -> reply``. For the first ``PROBE_PROBLEMS`` problems, two completions of at most
    ``PROBE_TOKENS`` tokens with the seeds of samples 0 and 1 (one, at temperature 0), and, when
    they differ, the first one again with its seed (is ``seed`` honoured?). Returns ``{"requested", "honoured", "evidence", "logprobs_requested"}``; ``honoured``
    maps temperature, seed, logprobs, max_tokens and stop to True, False, or None (not decidable:
    greedy was asked, or the model is that sure). Raises :class:`DeltalensError` when, at
    temperature > 0, every problem's two completions are identical and the model would give that
    a probability of at most ``IDENTICAL_PROBABILITY_LIMIT`` (or returns no log-probabilities to
    tell): the server decodes greedily whatever is asked.
    """
    from deltalens.behavior.backend import sample_seed

    probes = list(problems)[:PROBE_PROBLEMS]
    max_tokens = min(cfg.max_new_tokens, PROBE_TOKENS)
    use_logprobs = True

    def ask(problem, index):
        nonlocal use_logprobs
        seed = sample_seed(cfg.seed, problem.id, index)
        try:
            reply = post(_request(model, problem.prompt, cfg, seed, max_tokens, use_logprobs))
        except DeltalensError as exc:
            if not (use_logprobs and "logprob" in str(exc).lower()):
                raise
            use_logprobs = False  # the server refuses the parameter: sample without it
            reply = post(_request(model, problem.prompt, cfg, seed, max_tokens, False))
        return parse_completion(reply, url)

    sampled = cfg.temperature > 0
    pairs = [(ask(p, 0), ask(p, 1)) if sampled else (ask(p, 0),) for p in probes]
    firsts = [pair[0] for pair in pairs]
    replies = [r for pair in pairs for r in pair]
    have_logprobs = all(r["logprob"] is not None for r in replies) and bool(replies)
    counted = [r["n_tokens"] for r in replies if r["n_tokens"] is not None]
    honoured = {
        "logprobs": have_logprobs,
        "max_tokens": (max(counted) <= max_tokens) if counted else None,
        "stop": False if any(st in r["completion"] for r in replies for st in cfg.stop) else None,
        "top_p": None,
        "temperature": None,
        "seed": None,
    }
    evidence = {"probe_problems": [p.id for p in probes], "probe_max_tokens": max_tokens}
    if sampled and probes:
        identical = all(a["completion"] == b["completion"] for a, b in pairs)
        evidence["identical_completions_for_two_seeds"] = identical
        if not identical:
            honoured["temperature"] = True
            honoured["seed"] = ask(probes[0], 0)["completion"] == firsts[0]["completion"]  # the same seed again
        else:
            joint = math.exp(sum(r["logprob"] for r in firsts)) if have_logprobs else None
            evidence["joint_probability_if_sampling"] = joint
            if joint is not None and joint > IDENTICAL_PROBABILITY_LIMIT:
                honoured["temperature"] = None  # the model is that sure of these completions: no evidence either way
            else:
                why = ("it returns no log-probabilities to show the model is that sure" if joint is None
                       else f"were it sampling, the chance of that would be {joint:.2g}")
                raise DeltalensError(
                    f"{url}: the server ignores temperature: two seeds at temperature {cfg.temperature} gave identical "
                    f"completions on each of {len(pairs)} problems, and {why} (transformers serve decodes greedily); "
                    "serve the model with a server that samples (vLLM: docs/behavior.md), or ask for --temperature 0")
    return {
        "requested": {"temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed, "max_tokens": cfg.max_new_tokens,
                      "stop": list(cfg.stop), "n": 1, "logprobs": 1},
        "logprobs_requested": use_logprobs,
        "honoured": honoured,
        "evidence": evidence,
    }


def openai_generate(base_url: str, model: str, jobs, cfg, *, api_key: str | None = None, max_retries: int = 5,
                    timeout: float = 120.0, backoff: float = 0.5, logprobs: bool = True) -> Iterator[list[dict]]:
    """Yield batches of sample rows for ``jobs`` = [(problem, [sample_index, ...]), ...]; ``logprobs``:
    ask for token log-probabilities (as :func:`check_server` found the server takes them)."""
    from deltalens.behavior.backend import row_batches, sample_seed

    url = completions_url(base_url)

    def one(problem, j) -> dict:
        body = _request(model, problem.prompt, cfg, sample_seed(cfg.seed, problem.id, j), cfg.max_new_tokens, logprobs)
        reply = post_json(url, body, api_key=api_key, timeout=timeout, max_retries=max_retries, backoff=backoff)
        return {"id": problem.id, "sample_index": j, **parse_completion(reply, url)}

    with ThreadPoolExecutor(max_workers=cfg.batch_size) as pool:
        for batch in row_batches(jobs, cfg.batch_size):
            futures = [pool.submit(one, p, j) for p, idxs in batch for j in idxs]
            yield [f.result() for f in futures]
