"""Checkpoint sources, pairing and every bad input of issue 2 (one line, exit 2, no diff.json)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from deltalens.checkpoints import canonical_name, layer_index, module_kind, open_pair, pair_sources
from deltalens.errors import DeltalensError


@pytest.fixture(autouse=True, scope="module")
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _state(seed=0, vocab=10, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": torch.randn(vocab, 8, generator=g).to(dtype),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=g).to(dtype),
        "model.layers.0.mlp.down_proj.weight": torch.randn(8, 16, generator=g).to(dtype),
        "model.norm.weight": torch.ones(8, dtype=dtype),
        "lm_head.weight": torch.randn(vocab, 8, generator=g).to(dtype),
    }


def _folder(path, state, shards=1):
    path.mkdir(parents=True, exist_ok=True)
    names = sorted(state)
    if shards == 1:
        save_file(state, str(path / "model.safetensors"))
    else:
        weight_map = {}
        for i in range(shards):
            part = {k: state[k] for k in names[i::shards]}
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file(part, str(path / fname))
            weight_map.update({k: fname for k in part})
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def test_names():
    assert canonical_name("base_model.model.model.layers.3.mlp.up_proj.weight") == "layers.3.mlp.up_proj.weight"
    assert module_kind("model.layers.3.self_attn.k_proj.weight") == "k"
    assert module_kind("model.layers.3.post_attention_layernorm.weight") == "norm"
    assert module_kind("lm_head.weight") == "lm_head" and module_kind("model.embed_tokens.weight") == "embed"
    assert module_kind("model.rotary_emb.inv_freq") == "other"
    assert layer_index("model.layers.12.mlp.gate_proj.weight") == 12 and layer_index("lm_head.weight") is None


def test_sharded_vs_single_and_wrapper_prefixes(tmp_path):
    state = _state()
    _folder(tmp_path / "sharded", state, shards=3)
    bare = {k.removeprefix("model."): v for k, v in state.items()}  # a bare LlamaModel-style save
    save_file(bare, str(tmp_path / "bare.safetensors"))
    b, t = open_pair(tmp_path / "sharded", tmp_path / "bare.safetensors")
    p = pair_sources(b, t)
    assert len(p.pairs) == 5 and not p.unmatched["base_only"] and not p.unmatched["tuned_only"]
    assert {x.name for x in p.pairs} == set(state)  # outputs show the base's stored names


def test_tied_unmatched_nonfloat_and_vocab_resize(tmp_path):
    base = _state()
    base["lm_head.weight"] = base["model.embed_tokens.weight"].clone()  # tied, stored twice
    base["model.position_ids"] = torch.arange(4)
    base["model.only_in_base.weight"] = torch.zeros(2)
    tuned = _state(seed=1, vocab=13)
    tuned["lm_head.weight"] = tuned["model.embed_tokens.weight"].clone()
    tuned["model.position_ids"] = torch.arange(4)
    tuned["extra.weight"] = torch.zeros(2)
    _folder(tmp_path / "b", base)
    _folder(tmp_path / "t", tuned)
    p = pair_sources(*open_pair(tmp_path / "b", tmp_path / "t"))
    assert p.tied == ["lm_head.weight"]
    assert [s["name"] for s in p.skipped] == ["model.position_ids"] and p.skipped[0]["dtype"] == "int64"
    assert p.unmatched == {"base_only": ["model.only_in_base.weight"], "tuned_only": ["extra.weight"]}
    emb = next(x for x in p.pairs if x.name == "model.embed_tokens.weight")
    assert emb.rows == 10 and emb.shape == (10, 8)
    assert p.resized[0]["compared_rows"] == 10


def test_vocab_resize_compares_overlapping_rows(tmp_path):
    from deltalens.weights.diff import run_diff

    base = _state(vocab=10, dtype=torch.float32)
    tuned = {k: v.clone() for k, v in base.items()}
    emb = torch.cat([base["model.embed_tokens.weight"], torch.randn(6, 8)])
    emb[:10].view(torch.int32)[:2] ^= 1  # change exactly the 16 entries of rows 0 and 1
    tuned["model.embed_tokens.weight"] = emb
    _folder(tmp_path / "b", base)
    _folder(tmp_path / "t", tuned)
    r = run_diff(tmp_path / "b", tmp_path / "t", metrics="sparsity")
    row = next(x for x in r.rows if x["module"] == "embed")
    assert row["numel"] == 80 and row["unchanged_bitwise"] == pytest.approx(64 / 80)


def _lora_pair(tmp_path, tiny_llama, use_rslora):
    from peft import LoraConfig, get_peft_model

    base_dir = tmp_path / "base"
    tiny_llama.save_pretrained(str(base_dir))
    peft_model = get_peft_model(tiny_llama, LoraConfig(r=4, lora_alpha=6, use_rslora=use_rslora,
                                                       target_modules=["q_proj", "down_proj"]))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    return base_dir, tmp_path / "adapter", peft_model


@pytest.mark.parametrize("use_rslora", [False, True])
def test_lora_adapter_matches_float64_merge(tmp_path, tiny_llama, use_rslora):
    from safetensors import safe_open

    from deltalens.weights.diff import run_diff

    base_dir, adapter_dir, _ = _lora_pair(tmp_path, tiny_llama, use_rslora)
    scale = 6 / (math.sqrt(4) if use_rslora else 4)
    r = run_diff(base_dir, adapter_dir, metrics="sparsity,size,rank", exact=True)
    rows = {x["name"]: x for x in r.rows}
    fa = safe_open(str(adapter_dir / "adapter_model.safetensors"), "np")
    fb = safe_open(str(base_dir / "model.safetensors"), "np")
    name = "model.layers.1.mlp.down_proj.weight"
    a = fa.get_tensor("base_model.model." + name.replace(".weight", ".lora_A.weight")).astype(np.float64)
    b = fa.get_tensor("base_model.model." + name.replace(".weight", ".lora_B.weight")).astype(np.float64)
    w0 = fb.get_tensor(name).astype(np.float64)
    delta = (w0 + scale * b @ a) - w0
    sv = np.linalg.svd(delta, compute_uv=False)
    row = rows[name]
    assert row["dtype"] == "float32"
    assert row["delta_fro"] == pytest.approx(np.linalg.norm(delta), rel=1e-4)
    assert row["delta_rel"] == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(w0), rel=1e-4)
    assert row["delta_spectral"] == pytest.approx(sv[0], rel=1e-4)
    assert row["numerical_rank"] == 4 and row["stable_rank"] == pytest.approx((sv ** 2).sum() / sv[0] ** 2, rel=1e-3)
    untouched = rows["model.layers.1.mlp.up_proj.weight"]
    assert untouched["unchanged_bitwise"] == 1.0 and untouched["delta_fro"] == 0.0


# ---- bad inputs: one line naming the file/tensor, exit code 2, no diff.json --------------------


def _expect_cli_error(run_cli, tmp_path, base, tuned, *needles, extra=()):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("diff", base, tuned, "--out", out, "--quiet", *extra)
    assert code == 2, (stdout, stderr)
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("deltalens: error: "), stderr
    assert "Traceback" not in stderr
    for n in needles:
        assert n in lines[0]
    assert not (out / "diff.json").exists()
    return lines[0]


def test_bad_missing_path(run_cli, tmp_path):
    _folder(tmp_path / "b", _state())
    _expect_cli_error(run_cli, tmp_path, tmp_path / "b", tmp_path / "nope", "nope", "does not exist")


def test_bad_truncated_shard(run_cli, tmp_path):
    _folder(tmp_path / "b", _state())
    t = _folder(tmp_path / "t", _state(1), shards=2)
    shard = t / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-40])
    _expect_cli_error(run_cli, tmp_path, tmp_path / "b", t, "model-00002-of-00002.safetensors")


def test_bad_corrupted_header(run_cli, tmp_path):
    _folder(tmp_path / "b", _state())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((20).to_bytes(8, "little") + b'{"a": broken json   ')
    _expect_cli_error(run_cli, tmp_path, tmp_path / "b", bad, "bad.safetensors", "header")


def test_bad_index_names_missing_shard(run_cli, tmp_path):
    _folder(tmp_path / "b", _state())
    t = _folder(tmp_path / "t", _state(1), shards=2)
    (t / "model-00001-of-00002.safetensors").unlink()
    _expect_cli_error(run_cli, tmp_path, tmp_path / "b", t, "model-00001-of-00002.safetensors", "index")


def test_bad_pickle_without_flag_and_ok_with_it(run_cli, tmp_path):
    state = _state()
    _folder(tmp_path / "b", state)
    (tmp_path / "t").mkdir()
    torch.save({k: v.clone() for k, v in state.items()}, tmp_path / "t" / "pytorch_model.bin")
    _expect_cli_error(run_cli, tmp_path, tmp_path / "b", tmp_path / "t", "pytorch_model.bin", "--allow-pickle")
    code, _, err = run_cli("diff", tmp_path / "b", tmp_path / "t", "--out", tmp_path / "ok", "--quiet", "--allow-pickle")
    assert code == 0, err
    assert json.loads((tmp_path / "ok" / "diff.json").read_text())["summary"]["unchanged_bitwise"] == 1.0


def test_pickle_with_arbitrary_objects_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    _folder(tmp_path / "b", _state())
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(DeltalensError, match="weights-only"):
        open_pair(tmp_path / "b", tmp_path / "evil.pt", allow_pickle=True)


def test_bad_shape_mismatch(run_cli, tmp_path):
    base, tuned = _state(), _state(1)
    tuned["model.layers.0.mlp.down_proj.weight"] = torch.zeros(8, 12, dtype=torch.bfloat16)
    _folder(tmp_path / "b", base)
    _folder(tmp_path / "t", tuned)
    _expect_cli_error(run_cli, tmp_path, tmp_path / "b", tmp_path / "t", "model.layers.0.mlp.down_proj.weight", "shape")


def test_bad_adapter_targets_absent_from_base(run_cli, tmp_path, tiny_llama):
    _, adapter_dir, _ = _lora_pair(tmp_path, tiny_llama, False)
    other = {"model.layers.9.mlp.up_proj.weight": torch.zeros(4, 4)}  # none of the adapter's targets
    _folder(tmp_path / "other", other)
    _expect_cli_error(run_cli, tmp_path, tmp_path / "other", adapter_dir, "adapter", "absent from base")


def test_hub_id_offline_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DeltalensError, match="offline") as err:
        open_pair("some-org/some-model-that-is-not-here", "some-org/other")
    assert "\n" not in str(err.value)


def test_handwritten_adapter_over_tied_base_without_config(tmp_path):
    from deltalens.weights.diff import run_diff

    g = torch.Generator().manual_seed(2)
    emb = torch.randn(10, 8, generator=g)
    w = torch.randn(8, 8, generator=g)
    _folder(tmp_path / "b", {"model.embed_tokens.weight": emb, "lm_head.weight": emb.clone(),
                             "model.layers.0.self_attn.q_proj.weight": w})
    a, b = torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g)
    (tmp_path / "ad").mkdir()
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": a,
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": b},
              str(tmp_path / "ad" / "adapter_model.safetensors"))
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    r = run_diff(tmp_path / "b", tmp_path / "ad")
    assert r.tied == ["lm_head.weight"] and len(r.rows) == 2
    q = next(x for x in r.rows if x["module"] == "q")
    delta = 2.0 * b.double().numpy() @ a.double().numpy()
    assert q["delta_fro"] == pytest.approx(np.linalg.norm(delta), rel=1e-5)
    assert q["numerical_rank"] == 2 and q["dtype"] == "float32"


def test_byte_ranges_hold_each_tensors_bytes_and_read_ahead_runs(tmp_path):
    """byte_range (used for read-ahead) points at exactly the stored bytes of each tensor, in
    single files and shards; ReadAhead accepts every key and leaves results unchanged."""
    from deltalens.checkpoints.readahead import ReadAhead

    state = _state(seed=3)
    _folder(tmp_path / "sharded", state, shards=2)
    save_file(state, str(tmp_path / "single.safetensors"))
    for spec in (tmp_path / "sharded", tmp_path / "single.safetensors"):
        src, _ = open_pair(spec, spec)
        with ReadAhead(src) as ahead:
            for key in src.names():
                path, offset, length = src.byte_range(key)
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    stored = fh.read(length)
                want = state[src.info(key).name]
                assert stored == want.view(torch.int16).numpy().tobytes()
                ahead.request(key)
