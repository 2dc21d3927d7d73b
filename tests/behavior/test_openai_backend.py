"""The openai backend against real HTTP servers on 127.0.0.1.

1. ``transformers serve`` (the ``transformers[serving]`` extra) serving a tiny model saved by the
   test; skipped when fastapi/uvicorn/openai cannot be imported (set DELTALENS_SERVING_PATH to a
   folder holding them, e.g. ``pip install --target DIR fastapi uvicorn openai``).
2. A small stdlib HTTP server that answers /v1/completions with the hf backend and injects
   HTTP 503s, to test retries, logprobs parsing and errors whatever is installed.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from behavior_helpers import write_jsonl

from deltalens.behavior.sampling import sample
from deltalens.errors import DeltalensError

PROBLEMS = [{"id": "a", "prompt": "1+1=", "answer": "2"}, {"id": "b", "prompt": "12+30=", "answer": "42"}]
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving_path() -> str | None:
    """Where fastapi/uvicorn/openai live: the venv itself (''), DELTALENS_SERVING_PATH or .cache/serving."""
    try:
        import fastapi  # noqa: F401
        import openai  # noqa: F401
        import uvicorn  # noqa: F401

        return ""
    except ImportError:
        pass
    for cand in (os.environ.get("DELTALENS_SERVING_PATH"), str(ROOT / ".cache" / "serving")):
        if cand and (Path(cand) / "fastapi").is_dir() and (Path(cand) / "uvicorn").is_dir():
            return cand
    return None


LAUNCH = """
import sys
extra = sys.argv.pop(1)
if extra:
    sys.path.append(extra)  # the serving extras fill gaps; the environment's own packages win
from transformers.cli.transformers import main
sys.argv = ["transformers"] + sys.argv[1:]
main()
"""


@pytest.mark.slow
@pytest.mark.skipif(serving_path() is None, reason="transformers[serving] extras (fastapi, uvicorn, openai) not available")
def test_transformers_serve(tmp_path, tok, random_model):
    folder = tmp_path / "tiny"
    random_model.save_pretrained(folder)
    tok.save_pretrained(folder)
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, serving_path(), "serve", str(folder), "--host", "127.0.0.1",
                             "--port", str(port), "--device", "cpu"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = tmp_path / "s.jsonl"
        # the first requests arrive while the server is still starting: retries with backoff wait for it
        rows = sample(str(folder), PROBLEMS, n=3, backend="openai", base_url=f"http://127.0.0.1:{port}/v1",
                      max_new_tokens=5, temperature=0.0, out=out, model_name="tiny", max_retries=12, batch_size=4)
        assert sorted((r["id"], r["sample_index"]) for r in rows) == [(p, j) for p in "ab" for j in range(3)]
        assert all(r["n_tokens"] == 5 and r["finish_reason"] == "length" for r in rows)
        # the server decodes greedily here: the same text as the hf backend's greedy decoding
        ref = sample(random_model, PROBLEMS, n=1, tokenizer=tok, temperature=0.0, max_new_tokens=5)
        ref = {r["id"]: r["completion"] for r in ref}
        assert all(r["completion"] == ref[r["id"]] for r in rows)
        # resume: only the missing samples are requested
        rows = sample(str(folder), PROBLEMS, n=4, backend="openai", base_url=f"http://127.0.0.1:{port}/v1",
                      max_new_tokens=5, temperature=0.0, out=out, model_name="tiny")
        assert len(out.read_text().splitlines()) == 8 and len(rows) == 8
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class _Handler(BaseHTTPRequestHandler):
    server_version = "stub-openai/0"

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests.append(body)
            fail = srv.failures > 0
            srv.failures -= int(fail)
        if fail:
            return self._reply(503, {"error": "warming up"})
        if self.path != "/v1/completions" or body.get("model") != "stub":
            return self._reply(400, {"error": f"unknown model {body.get('model')}"})
        if "logprobs" in body and srv.mode == "rejects logprobs":
            return self._reply(400, {"error": "logprobs is not supported"})
        if srv.mode == "sure":  # a model that puts all its mass on one answer: identical, logprob ~ 0
            return self._reply(200, {"choices": [{"text": "2", "finish_reason": "stop",
                                                  "logprobs": {"tokens": ["2"], "token_logprobs": [-1e-4]}}],
                                     "usage": {"completion_tokens": 1}})
        temperature = 0.0 if srv.mode.startswith("greedy") else body["temperature"]  # transformers serve's way
        seed = random.randrange(2 ** 31) if srv.mode == "ignores seed" else body["seed"]
        with srv.lock:  # one generation at a time on the shared model
            rows = sample(srv.model, [{"id": "x", "prompt": body["prompt"]}], n=1, tokenizer=srv.tok,
                          temperature=temperature, top_p=body["top_p"], seed=seed, max_new_tokens=body["max_tokens"])
        r = rows[0]  # its logprob is the model's own (temperature 1), also for a greedy completion
        logprobs = ({"tokens": list(r["completion"]), "token_logprobs": [r["logprob"]] + [0.0] * (r["n_tokens"] - 1)}
                    if "logprobs" in body and srv.mode not in ("greedy", "rejects logprobs") else None)
        self._reply(200, {"object": "text_completion", "choices": [{
            "index": 0, "text": r["completion"], "finish_reason": r["finish_reason"], "logprobs": logprobs}],
            "usage": {"completion_tokens": r["n_tokens"]}})

    def _reply(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def stub_server(tok, random_model):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.lock, srv.requests, srv.failures, srv.model, srv.tok = threading.Lock(), [], 0, random_model, tok
    srv.mode = "samples"  # or: greedy (no logprobs), greedy with logprobs, ignores seed, rejects logprobs, sure
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_stub_server_retries_concurrency_and_logprobs(tmp_path, stub_server, run_cli):
    stub_server.failures = 3
    url = f"http://127.0.0.1:{stub_server.server_address[1]}/v1"
    rows = sample("stub", PROBLEMS, n=4, backend="openai", base_url=url, max_new_tokens=4, temperature=0.9,
                  seed=1, batch_size=8)
    # 8 samples, 3 retried 503s, and the server check's 5 probes (2 problems x 2 seeds, one seed again)
    assert len(stub_server.requests) == 8 + 3 + 5 and stub_server.failures == 0
    assert {r["model"] for r in rows} == {"stub"} and all(r["n_tokens"] == 4 for r in rows)
    # token_logprobs are summed (the stub puts the whole sum on the first token, zeros after)
    assert all(isinstance(r["logprob"], float) and r["logprob"] < 0 for r in rows)
    assert len({r["seed"] for r in stub_server.requests[3:]}) == 8  # one seed per sample
    # CLI with verification
    probs = write_jsonl(tmp_path / "p.jsonl", PROBLEMS)
    code, out, err = run_cli("sample", "stub", "--backend", "openai", "--base-url", url, "--problems", probs,
                             "-n", "2", "--max-new-tokens", "3", "--out", tmp_path / "s.jsonl", "--verify", "numeric")
    assert code == 0, err
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 4
    # a client error is not retried and is one clear line
    code, _, err = run_cli("sample", "other", "--backend", "openai", "--base-url", url, "--problems", probs,
                           "--out", tmp_path / "s2.jsonl")
    assert code == 2 and "HTTP 400" in err and "unknown model other" in err
    code, _, err = run_cli("sample", "stub", "--backend", "openai", "--problems", probs, "--out", tmp_path / "s3.jsonl")
    assert code == 2 and "--base-url" in err


def test_unreachable_server_gives_up():
    with pytest.raises(DeltalensError, match="no answer after 2 tries"):
        sample("m", PROBLEMS[:1], backend="openai", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1)


def test_vllm_backend_is_optional(tmp_path):
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed")
    except ImportError:
        pass
    with pytest.raises(DeltalensError, match=r"deltalens\[vllm\]"):
        sample(str(tmp_path), PROBLEMS, backend="vllm")


def _sample_cli(run_cli, tmp_path, url, *extra):
    tmp_path.mkdir(exist_ok=True)
    probs = write_jsonl(tmp_path / "p.jsonl", PROBLEMS)
    out = tmp_path / "s.jsonl"
    return (*run_cli("sample", "stub", "--backend", "openai", "--base-url", url, "--problems", probs, "-n", "2",
                     "--max-new-tokens", "6", "--temperature", "1.0", "--out", out, *extra), out)


def test_server_that_samples_is_recorded_as_honouring_everything(tmp_path, stub_server, run_cli):
    url = f"http://127.0.0.1:{stub_server.server_address[1]}/v1"
    code, stdout, err, out = _sample_cli(run_cli, tmp_path, url)
    assert code == 0, err
    record = json.loads((tmp_path / "s.jsonl.sampling.json").read_text())["runs"][-1]
    assert record["honoured"] == {"logprobs": True, "max_tokens": True, "stop": None, "top_p": None,
                                  "temperature": True, "seed": True}
    assert record["evidence"]["identical_completions_for_two_seeds"] is False
    assert all(b["logprobs"] == 1 for b in stub_server.requests)  # asked for in every request
    assert "server honoured: logprobs yes" in stdout and "temperature yes" in stdout and "warning" not in stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(isinstance(r["logprob"], float) for r in rows)


@pytest.mark.parametrize("mode, needle", [("greedy", "returns no log-probabilities"),
                                          ("greedy with logprobs", "the chance of that would be")])
def test_server_that_ignores_temperature_is_refused(mode, needle, tmp_path, stub_server, run_cli):
    stub_server.mode = mode
    url = f"http://127.0.0.1:{stub_server.server_address[1]}/v1"
    code, stdout, err, out = _sample_cli(run_cli, tmp_path, url)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert "ignores temperature" in lines[0] and "on each of 2 problems" in lines[0] and needle in lines[0]
    assert "--temperature 0" in lines[0] and "vLLM" in lines[0]
    assert not out.exists() and not (tmp_path / "s.jsonl.sampling.json").exists()
    assert len(stub_server.requests) <= 4  # refused after the probes, before any sample
    # greedy decoding asked for is what such a server gives: no refusal
    code, _, err, out = _sample_cli(run_cli, tmp_path, url, "--temperature", "0")
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 4


def test_model_that_is_sure_is_not_mistaken_for_a_greedy_server(tmp_path, stub_server, run_cli):
    stub_server.mode = "sure"  # identical completions, but the model gives each probability ~1
    url = f"http://127.0.0.1:{stub_server.server_address[1]}/v1"
    code, stdout, err, out = _sample_cli(run_cli, tmp_path, url)
    assert code == 0, err
    record = json.loads((tmp_path / "s.jsonl.sampling.json").read_text())["runs"][-1]
    assert record["honoured"]["temperature"] is None and record["evidence"]["joint_probability_if_sampling"] > 0.99


def test_ignored_seed_and_refused_logprobs_are_recorded_and_said(tmp_path, stub_server, run_cli):
    url = f"http://127.0.0.1:{stub_server.server_address[1]}/v1"
    stub_server.mode = "ignores seed"
    code, stdout, err, _ = _sample_cli(run_cli, tmp_path / "a", url)
    assert code == 0, err
    record = json.loads((tmp_path / "a" / "s.jsonl.sampling.json").read_text())["runs"][-1]
    assert record["honoured"]["seed"] is False and record["honoured"]["temperature"] is True
    assert "ignores seed" in stdout
    stub_server.mode, stub_server.requests = "rejects logprobs", []
    code, stdout, err, out = _sample_cli(run_cli, tmp_path / "b", url)
    assert code == 0, err
    record = json.loads((tmp_path / "b" / "s.jsonl.sampling.json").read_text())["runs"][-1]
    assert record["honoured"]["logprobs"] is False and record["logprobs_requested"] is False
    assert "logprobs" not in stub_server.requests[-1]  # the samples were asked for without it
    assert all(json.loads(line)["logprob"] is None for line in out.read_text().splitlines())
    assert "no log-probabilities" in stdout
