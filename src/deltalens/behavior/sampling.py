"""Sampling n completions per problem (SPEC §7) with the ``hf``, ``openai`` or ``vllm`` backend.

The driver :func:`sample` is resumable: with ``out`` it reads what the file already holds,
generates only the missing (problem, sample_index) pairs and appends each finished batch
(flushed and fsynced), so a crash loses at most the batch in flight.

The ``hf`` backend prefills each prompt ONCE, copies its KV cache to the n rows that sample
from it, and decodes all rows of a batch together with the cache, dropping finished rows
(once they make up an eighth of the batch).
Randomness is per sample: row (problem id, sample_index) draws its uniforms from its own
generator seeded by (seed, id, sample_index), so a sample does not depend on batch size,
batch composition or resumption, and the same seed reproduces the same file.
Each sample records ``completion``, ``n_tokens`` (generated tokens, including a final EOS),
``finish_reason`` ("stop": EOS or a stop string; "length": ``max_new_tokens``) and
``logprob``: the summed log-probability of the generated tokens under the model's own
distribution (temperature 1, no top-p), i.e. log π(completion | prompt).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from deltalens.behavior.backend import SamplingConfig, row_batches, sample_seed  # noqa: F401 (re-exported)
from deltalens.errors import DeltalensError
from deltalens.limits import first_per_task
from deltalens.models import load_model  # noqa: F401 (re-exported)

BACKENDS = ("hf", "openai", "vllm")


def eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(src, "eos_token_id", None)
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return ids


def draw_tokens(logits, uniforms, temperature: float, top_p: float):
    """Sample one token per row by inverse CDF of the temperature/top-p distribution.

    ``logits`` [B, V] (any float dtype; computed in float32), ``uniforms`` [B] in [0, 1).
    Top-p keeps the smallest set of most probable tokens whose mass reaches ``top_p``.
    Temperature 0 is greedy (argmax).
    """
    import torch

    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    cdf = sorted_p.cumsum(dim=-1)
    if top_p < 1.0:
        keep = (cdf - sorted_p) < top_p  # mass strictly before this token is below top_p
        keep[:, 0] = True
        sorted_p = sorted_p * keep
        cdf = sorted_p.cumsum(dim=-1)
    target = (uniforms.to(cdf.device, torch.float32) * cdf[:, -1]).unsqueeze(-1)
    pos = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
    # never land on a zero-probability (filtered) token at the right edge
    pos = torch.minimum(pos, (sorted_p > 0).sum(dim=-1, keepdim=True) - 1)
    return order.gather(-1, pos).squeeze(-1)


def hf_generate(model, tokenizer, jobs, cfg: SamplingConfig) -> Iterator[list[dict]]:
    """Yield finished batches of sample rows for ``jobs`` = [(problem, [sample_index, ...]), ...].

    Rows are grouped into batches of at most ``cfg.batch_size``; each prompt of a batch is
    prefilled once and its KV cache is copied to its rows (``Cache.batch_select_indices``).
    """
    import torch

    device = next(model.parameters()).device
    stops = set(eos_ids(model, tokenizer))
    for batch in row_batches(jobs, cfg.batch_size):
        prompts = [p for p, _ in batch]
        ids, mask = left_pad([tokenizer(p.prompt)["input_ids"] for p in prompts], tokenizer.pad_token_id, device)
        pos = (mask.cumsum(-1) - 1).clamp_(min=0)
        rows = [(p, j) for p, idxs in batch for j in idxs]
        owner = torch.tensor([i for i, (_, idxs) in enumerate(batch) for _ in idxs], device=device)
        # the t-th uniform of sample (id, j) is the t-th draw of its own generator, whatever the batching
        uniforms = torch.stack([torch.rand(cfg.max_new_tokens, generator=torch.Generator().manual_seed(
            sample_seed(cfg.seed, p.id, j))) for p, j in rows]).to(device)
        with torch.inference_mode():
            try:  # only the last position's logits are needed: skip the [B, L, V] tensor
                out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
            except TypeError:
                out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
            cache_name = cache_field(out)
            cache = out[cache_name]
            cache.batch_select_indices(owner)
            logits = out.logits[:, -1, :][owner]
            mask = mask[owner]
            last_pos = pos[owner, -1]
            in_cache = list(range(len(rows)))  # row numbers held in the cache, in cache order
            live = [True] * len(rows)
            tokens: list[list[int]] = [[] for _ in rows]
            logp = [0.0] * len(rows)
            texts = [""] * len(rows)
            finish = ["length"] * len(rows)
            for step in range(cfg.max_new_tokens):
                rows_t = torch.tensor(in_cache, device=device)
                nxt = draw_tokens(logits, uniforms[rows_t, step], cfg.temperature, cfg.top_p)
                lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, nxt[:, None]).squeeze(-1).tolist()
                for i, (r, t) in enumerate(zip(in_cache, nxt.tolist())):
                    if not live[r]:  # finished earlier, still in the cache: its draw is ignored
                        continue
                    tokens[r].append(t)
                    logp[r] += lp[i]
                    done = t in stops
                    if not done and cfg.stop:
                        piece = tokenizer.decode([t])
                        texts[r] += piece
                        done = any(s in texts[r][-(len(s) + len(piece)):] for s in cfg.stop)
                    if done:
                        finish[r], live[r] = "stop", False
                keep = [i for i, r in enumerate(in_cache) if live[r]]
                if not keep or step == cfg.max_new_tokens - 1:
                    break
                # drop finished rows from the cache once they are an eighth of it (copying the
                # cache at every single EOS would cost more than decoding a few idle rows)
                if len(in_cache) - len(keep) >= max(1, len(in_cache) // 8):
                    sel = torch.tensor(keep, device=device)
                    cache.batch_select_indices(sel)
                    mask, last_pos, nxt = mask[sel], last_pos[sel], nxt[sel]
                    in_cache = [in_cache[i] for i in keep]
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
                last_pos = last_pos + 1
                out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                            use_cache=True, **{cache_name: cache})
                cache = out[cache_name]
                logits = out.logits[:, -1, :]
        yield [_finish_row(tokenizer, p, j, tokens[r], logp[r], finish[r], stops, cfg.stop)
               for r, (p, j) in enumerate(rows)]


def sample_in_memory(model, tokenizer, problems, cfg: SamplingConfig, on_batch=None) -> dict[str, list[str]]:
    """``cfg.n`` completions per problem from an in-memory model, by :func:`hf_generate`:
    ``{problem id: [completion of sample 0, 1, ...]}`` (what the lab's gates, tuning and RFT
    data read; the same per-sample randomness as a ``sample`` file with ``cfg.seed``)."""
    from deltalens.behavior.formats import as_problems

    cfg.check()
    out: dict[str, list[str | None]] = {}
    probs = as_problems(problems)
    for p in probs:
        out[p.id] = [None] * cfg.n
    for batch in hf_generate(model, tokenizer, [(p, range(cfg.n)) for p in probs], cfg):
        for r in batch:
            out[r["id"]][r["sample_index"]] = r["completion"]
        if on_batch is not None:
            on_batch(len(batch))
    return out


def left_pad(seqs: list[list[int]], pad_id: int, device):
    """Left-padded [B, L] input ids and attention mask (whatever the tokenizer's padding side)."""
    import torch

    if any(len(x) == 0 for x in seqs):
        raise DeltalensError("a prompt encodes to no tokens; sampling needs at least one prompt token")
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, x in enumerate(seqs):
        ids[i, width - len(x):] = torch.tensor(x)
        mask[i, width - len(x):] = 1
    return ids.to(device), mask.to(device)


def cache_field(output) -> str:
    """Name of the KV-cache field: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    return "cache" if "cache" in output.keys() else "past_key_values"


def _finish_row(tokenizer, problem, j, toks, logprob, finish, stops, stop_strings) -> dict:
    body = toks[:-1] if toks and toks[-1] in stops else toks
    text = tokenizer.decode(body, skip_special_tokens=True)
    for s in stop_strings:
        at = text.find(s)
        if at >= 0:
            text = text[:at]
    return {"id": problem.id, "sample_index": j, "completion": text, "n_tokens": len(toks),
            "finish_reason": finish, "logprob": logprob, "token_ids": toks}


def _existing(out: Path, model_name: str, problem_ids: set[str]) -> dict[str, set[int]]:
    from deltalens.behavior.formats import read_samples

    if not out.is_file() or not out.read_text().strip():
        return {}
    sset = read_samples(out)
    if sset.model != model_name:
        raise DeltalensError(f"{out}: holds samples of model {sset.model!r}, which conflicts with {model_name!r}; "
                             "use another --out or --model-name")
    unknown = set(sset.by_id) - problem_ids
    if unknown:
        raise DeltalensError(f"{out}: sample id {sorted(unknown)[0]!r} is not in the problems file")
    return {pid: {r["sample_index"] for r in rows} for pid, rows in sset.by_id.items()}


def sample(model_or_path, problems, *, n: int = 1, tokenizer=None, temperature: float = 1.0,
           top_p: float = 1.0, max_new_tokens: int = 256, seed: int = 0, batch_size: int = 64,
           stop: list[str] | None = None, backend: str = "hf", out=None, model_name: str | None = None,
           verifier=None, device: str | None = None, dtype: str | None = None, base_url: str | None = None,
           api_key: str | None = None, max_retries: int = 5, request_timeout: float = 120.0,
           progress: bool = False, backend_options: dict | None = None, check_server: bool = True,
           revision: str | None = None, trust_remote_code: bool = False, limit: int | None = None) -> list[dict]:
    """Draw ``n`` samples per problem and return every sample row (SPEC §7 samples format).

    ``model_or_path``: a model folder or a loaded ``PreTrainedModel`` (hf), a model folder
    (vllm), or the served model's name (openai, with ``base_url``). ``problems``: a problems
    file or list (answers optional unless ``verifier`` is given). ``out``: a samples JSONL
    that is resumed and appended to. ``verifier``: ``"numeric"``, ``"math-verify"``,
    ``"module:function"`` or a callable, applied to each finished batch. ``check_server``
    (openai): probe the server first and refuse one that ignores temperature
    (:func:`deltalens.behavior.openai_backend.check_server`); what it honoured is appended to
    ``OUT.sampling.json``. ``revision``, ``trust_remote_code``, ``tokenizer`` (an object, a
    folder or a hub id): :func:`deltalens.models.load_model` (hf). ``limit``: sample the first N
    problems of each task (a resumed file may hold samples of the others).
    """
    from deltalens.behavior.formats import as_problems
    from deltalens.progress import counter
    from deltalens.results import append_jsonl, check_output_file

    if backend not in BACKENDS:
        raise DeltalensError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    cfg = SamplingConfig(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                         seed=seed, batch_size=batch_size, stop=list(stop or []))
    cfg.check()
    all_probs = as_problems(problems, need_answer=verifier is not None)
    probs = first_per_task(all_probs, limit)
    if out is not None:
        check_output_file(out, what="samples file")

    gen, default_name = _backend(backend, model_or_path, tokenizer, probs, cfg, out=out, device=device, dtype=dtype,
                                 base_url=base_url, api_key=api_key, max_retries=max_retries,
                                 request_timeout=request_timeout, check_server=check_server,
                                 backend_options=backend_options, revision=revision,
                                 trust_remote_code=trust_remote_code)
    name = model_name or default_name

    settings = {"backend": backend, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                "seed": seed, "stop": list(stop or [])}
    weights = None
    if out is not None and backend != "openai":  # a served model's weights are not here to read
        from deltalens.fingerprint import model_fingerprint

        weights = model_fingerprint(model_or_path, revision)
    jobs, unrecorded = _pending(out, name, all_probs, probs, n, settings, weights)
    by_id = {p.id: p for p in probs}
    check = None
    if verifier is not None:
        from deltalens.behavior.verify import get_verifier

        check = get_verifier(verifier)
    new_rows: list[dict] = []
    total = sum(len(i) for _, i in jobs)
    try:
        with counter(f"sampling {name} ({backend})", total, enabled=progress) as tick:
            for rows in gen(jobs):
                for r in rows:
                    r["model"] = name
                    r["extracted"], r["correct"] = (check(r["completion"], by_id[r["id"]].answer)
                                                    if check else (None, None))
                ordered = [{k: r[k] for k in ("id", "model", "sample_index", "completion", "extracted",
                                              "correct", "logprob", "n_tokens", "finish_reason")} for r in rows]
                if out is not None:
                    append_jsonl(out, ordered)
                    if unrecorded:
                        _record_settings(Path(out), settings, weights)
                        unrecorded = False
                new_rows.extend(ordered)
                tick(len(rows))
    finally:
        if hasattr(check, "close"):
            check.close()
    if out is None:
        return new_rows
    from deltalens.behavior.formats import read_samples

    return [r for rs in read_samples(out).by_id.values() for r in rs]


def _pending(out, name: str, all_probs: list, probs: list, n: int, settings: dict,
             weights: dict | None) -> tuple[list, bool]:
    """What is left to draw: ``[(problem, sample indices)]`` of ``probs`` not already in ``out``
    (which may hold samples of any of ``all_probs``, drawn with the same ``settings``), and
    whether the settings still have to be recorded."""
    done = _existing(Path(out), name, {p.id for p in all_probs}) if out is not None else {}
    unrecorded = out is not None and _check_settings(Path(out), settings, weights, resuming=bool(done))
    jobs = [(p, [j for j in range(n) if j not in done.get(p.id, set())]) for p in probs]
    return [(p, idxs) for p, idxs in jobs if idxs], unrecorded


def _backend(backend, model_or_path, tokenizer, probs, cfg, *, out, device, dtype, base_url, api_key, max_retries,
             request_timeout, check_server, backend_options, revision=None, trust_remote_code=False):
    """``(generate(jobs) -> batches of rows, default model name)`` of one backend."""
    from deltalens.models import model_name

    if backend != "hf" and (revision is not None or trust_remote_code or tokenizer is not None):
        raise DeltalensError(f"--backend {backend}: --revision, --trust-remote-code and --tokenizer apply to the hf "
                             "backend (the server or vllm loads the model)")
    if backend == "hf":
        model, tokenizer, default_name = load_model(model_or_path, tokenizer, device=device, dtype=dtype,
                                                    revision=revision, trust_remote_code=trust_remote_code)
        return (lambda jobs: hf_generate(model, tokenizer, jobs, cfg)), default_name
    if backend == "openai":
        if not base_url:
            raise DeltalensError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        return (lambda jobs: _openai_checked(base_url, str(model_or_path), probs, jobs, cfg, out=out, check=check_server,
                                             api_key=api_key, max_retries=max_retries, timeout=request_timeout)
                ), str(model_or_path)
    from deltalens.behavior.vllm_backend import vllm_generate

    return (lambda jobs: vllm_generate(str(model_or_path), jobs, cfg, **(backend_options or {}))
            ), model_name(str(model_or_path))


def sampling_record_path(out) -> Path:
    """Where :func:`sample` records the settings a samples file was drawn with (``settings``), the
    model's content fingerprint (``fingerprint``, :mod:`deltalens.fingerprint`; None for a served
    or already-loaded model) and what an openai server honoured (``runs``): ``S.jsonl.sampling.json``."""
    out = Path(out)
    return out.with_name(out.name + ".sampling.json")


def _check_settings(out: Path, settings: dict, weights: dict | None, *, resuming: bool) -> bool:
    """Refuse to add samples drawn with other settings, or from other weights (both fingerprints
    known and different), to ``out`` (a resume must draw the same distribution; ``n`` may grow:
    that is what a resume adds). True when ``settings`` still have to be recorded
    (:func:`_record_settings`, once the first new samples are written)."""
    from deltalens.fingerprint import same_weights
    from deltalens.results import read_json

    path = sampling_record_path(out)
    doc = read_json(path) if path.is_file() else {}
    recorded = doc.get("settings")
    if resuming and same_weights(doc.get("fingerprint"), weights) is False:
        raise DeltalensError(f"{out}: its samples were drawn from other weights (sha256 "
                             f"{doc['fingerprint']['sha256'][:12]}…, this model's is {weights['sha256'][:12]}…); "
                             "use another --out")
    if recorded is not None and resuming:
        for key, value in settings.items():
            if key in recorded and recorded[key] != value:
                raise DeltalensError(f"{out}: its samples were drawn with {key} {recorded[key]!r}, this run asks "
                                     f"{value!r}; use another --out or the same settings")
        return False
    return True


def _record_settings(out: Path, settings: dict, weights: dict | None) -> None:
    from deltalens.results import read_json, write_json

    path = sampling_record_path(out)
    write_json(path, {**(read_json(path) if path.is_file() else {}), "settings": settings, "fingerprint": weights})


def recorded_fingerprint(sample_set) -> dict | None:
    """The model fingerprint :func:`sample` recorded beside a samples file (None for samples
    not read from a file, or drawn before fingerprints were recorded)."""
    from deltalens.results import read_json

    path = sampling_record_path(sample_set.source) if sample_set.source not in ("<memory>", "<samples>") else None
    if path is None or not path.is_file():
        return None
    try:
        value = read_json(path).get("fingerprint")
    except (DeltalensError, AttributeError):
        return None
    return value if isinstance(value, dict) else None


def _openai_checked(base_url, model, problems, jobs, cfg, *, out, check: bool, api_key, max_retries, timeout):
    """The openai backend's batches, after :func:`check_server` (when ``check`` and there is work)."""
    from deltalens.behavior.openai_backend import check_server, completions_url, openai_generate, post_json
    from deltalens.results import read_json, write_json

    if not jobs:
        return
    url = completions_url(base_url)
    logprobs = True
    if check:
        record = check_server(url, model, problems, cfg, post=lambda body: post_json(
            url, body, api_key=api_key, timeout=timeout, max_retries=max_retries))
        logprobs = record["logprobs_requested"]
        if out is not None:
            path = sampling_record_path(out)
            doc = read_json(path) if path.is_file() else {}
            write_json(path, {**doc, "runs": doc.get("runs", []) + [{"backend": "openai", "url": url, "model": model,
                                                                     **record}]})
    yield from openai_generate(base_url, model, jobs, cfg, api_key=api_key, max_retries=max_retries,
                               timeout=timeout, logprobs=logprobs)


