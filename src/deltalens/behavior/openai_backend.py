"""The ``openai`` sampling backend: any OpenAI-compatible ``/v1/completions`` server.

Works with vLLM, SGLang, llama.cpp and ``transformers serve``. Each sample is one request
with ``n=1`` and its own ``seed`` (from (seed, problem id, sample_index)): servers differ in
whether they honour ``n`` (``transformers serve`` ignores it), and per-sample requests keep a
resumed run identical to a fresh one wherever the server honours ``seed``. Requests run
concurrently (``batch_size`` in flight); connection errors, timeouts, HTTP 408/409/429 and 5xx
are retried with exponential backoff and jitter; other HTTP errors stop the run with the
server's message. Only the standard library is used.
"""

from __future__ import annotations

import json
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


def openai_generate(base_url: str, model: str, jobs, cfg, *, api_key: str | None = None, max_retries: int = 5,
                    timeout: float = 120.0, backoff: float = 0.5) -> Iterator[list[dict]]:
    """Yield batches of sample rows for ``jobs`` = [(problem, [sample_index, ...]), ...]."""
    from deltalens.behavior.sampling import _row_batches, sample_seed

    url = base_url.rstrip("/") + "/completions"
    if not base_url.rstrip("/").endswith("/v1"):
        url = base_url.rstrip("/") + "/v1/completions"

    def one(problem, j) -> dict:
        body = {"model": model, "prompt": problem.prompt, "max_tokens": cfg.max_new_tokens,
                "temperature": cfg.temperature, "top_p": cfg.top_p, "n": 1, "logprobs": 0,
                "seed": sample_seed(cfg.seed, problem.id, j) % (2 ** 31)}
        if cfg.stop:
            body["stop"] = list(cfg.stop)
        reply = post_json(url, body, api_key=api_key, timeout=timeout, max_retries=max_retries, backoff=backoff)
        return {"id": problem.id, "sample_index": j, **parse_completion(reply, url)}

    with ThreadPoolExecutor(max_workers=cfg.batch_size) as pool:
        for batch in _row_batches(jobs, cfg.batch_size):
            futures = [pool.submit(one, p, j) for p, idxs in batch for j in idxs]
            yield [f.result() for f in futures]
