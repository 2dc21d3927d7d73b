"""Content fingerprints (deltalens.fingerprint) against hashlib over the files' bytes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from deltalens import fingerprint as fp
from tests.fingerprints import folder_sha256, reference_sha256


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """No digest remembered from another test, no cache file unless a test names one."""
    monkeypatch.setattr(fp, "_memo", {})
    monkeypatch.setattr(fp, "_disk", {})
    monkeypatch.setenv(fp.CACHE_ENV, "")
    monkeypatch.delenv(fp.FINGERPRINT_ENV, raising=False)


def _checkpoint(path, seed=0, shards=1):
    gen = torch.Generator().manual_seed(seed)
    state = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(8, 4, generator=gen) for i in range(4)}
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if shards == 1:
        save_file(state, str(path / "model.safetensors"))
        return path
    names = sorted(state)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[s::shards]}
        save_file(part, str(path / fname))
        weight_map.update({n: fname for n in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return path


def test_file_digest_streams_across_buffer_edges(tmp_path, monkeypatch):
    monkeypatch.setattr(fp, "BUFFER_BYTES", 1000)
    data = os.urandom(4321)  # four whole buffers and a partial one
    (tmp_path / "f").write_bytes(data)
    assert fp.file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_copies_share_a_fingerprint_and_other_weights_do_not(tmp_path):
    a = _checkpoint(tmp_path / "run-a" / "tuned", seed=1, shards=2)
    copy = tmp_path / "elsewhere" / "tuned-copy"
    shutil.copytree(a, copy)
    other = _checkpoint(tmp_path / "run-b" / "tuned", seed=2, shards=2)  # same folder name, other weights
    got = {k: fp.model_fingerprint(p) for k, p in (("a", a), ("copy", copy), ("other", other))}
    assert got["a"] == {"sha256": folder_sha256(a)}
    assert got["copy"] == got["a"]
    assert got["other"]["sha256"] != got["a"]["sha256"]
    assert fp.same_weights(got["a"], got["copy"]) is True
    assert fp.same_weights(got["a"], got["other"]) is False
    assert fp.same_weights(got["a"], None) is None


def test_one_changed_value_changes_the_fingerprint_and_a_file_path_equals_its_folder(tmp_path):
    a = _checkpoint(tmp_path / "a")
    b = _checkpoint(tmp_path / "b")
    assert fp.model_fingerprint(a) == fp.model_fingerprint(b) == fp.model_fingerprint(a / "model.safetensors")
    from safetensors.torch import load_file

    state = load_file(str(b / "model.safetensors"))
    state["model.layers.3.mlp.up_proj.weight"][7, 3] += 1e-6
    save_file(state, str(b / "model.safetensors"))
    assert fp.model_fingerprint(b)["sha256"] == reference_sha256(b / "model.safetensors") != fp.model_fingerprint(a)["sha256"]


def test_a_lora_adapter_adds_its_files_to_the_base(tmp_path):
    from deltalens.checkpoints import open_checkpoint
    from deltalens.checkpoints.lora import LoraAdapterSource

    base = _checkpoint(tmp_path / "base")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    save_file({"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.ones(2, 4),
               "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight": torch.ones(8, 2)},
              str(adapter / "adapter_model.safetensors"))
    src = LoraAdapterSource(adapter, open_checkpoint(base), str(adapter))
    files = [base / "model.safetensors", adapter / "adapter_config.json", adapter / "adapter_model.safetensors"]
    assert fp.source_fingerprint(src) == {"sha256": reference_sha256(*files)}


def test_digests_are_remembered_by_inode_size_and_mtime(tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "fingerprints.jsonl"
    monkeypatch.setenv(fp.CACHE_ENV, str(cache))
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x" * 100)
    first = fp.file_sha256(f)
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert first == hashlib.sha256(b"x" * 100).hexdigest()
    assert [r["sha256"] for r in rows] == [first]
    # a planted entry for this key is what a later process uses: the file is not read again
    key = rows[0]["key"]
    cache.write_text(json.dumps({"key": key, "path": str(f), "sha256": "0" * 64}) + "\n")
    monkeypatch.setattr(fp, "_memo", {})
    monkeypatch.setattr(fp, "_disk", {})
    assert fp.file_sha256(f) == "0" * 64
    # a changed file has another mtime (and here size): its entry no longer applies
    f.write_bytes(b"y" * 101)
    os.utime(f, ns=(key[3] + 10**9, key[3] + 10**9))
    assert fp.file_sha256(f) == hashlib.sha256(b"y" * 101).hexdigest()


def test_a_hub_snapshot_records_its_revision_and_reads_no_blob(tmp_path):
    plain = _checkpoint(tmp_path / "plain")
    data = (plain / "model.safetensors").read_bytes()
    repo = tmp_path / "hub" / "models--org--tiny"
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    commit = "a" * 40
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(os.path.relpath(blob, snap))
    (snap / "config.json").write_text("{}")
    got = fp.model_fingerprint(snap)
    assert got == {"sha256": fp.model_fingerprint(plain)["sha256"], "revision": commit}
    blob.write_bytes(b"not read: the blob's name is its digest")
    fp._memo.clear()
    assert fp.file_sha256(snap / "model.safetensors") == hashlib.sha256(data).hexdigest()


def test_a_hub_id_is_read_from_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants

    plain = _checkpoint(tmp_path / "plain")
    data = (plain / "model.safetensors").read_bytes()
    repo = tmp_path / "hub" / "models--org--tiny"
    commit = "b" * 40
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / hashlib.sha256(data).hexdigest()).write_bytes(data)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model.safetensors").symlink_to(
        os.path.relpath(repo / "blobs" / hashlib.sha256(data).hexdigest(), repo / "snapshots" / commit))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    expected = {"sha256": fp.model_fingerprint(plain)["sha256"], "revision": commit}
    assert fp.model_fingerprint("org/tiny") == expected
    assert fp.model_fingerprint(f"org/tiny@{commit}") == fp.model_fingerprint("org/tiny", commit) == expected
    assert fp.model_fingerprint("org/absent") is None  # not in the cache: nothing is downloaded for it


def test_off_loaded_or_not_local_gives_none(tmp_path, monkeypatch):
    a = _checkpoint(tmp_path / "a")
    assert fp.model_fingerprint("org/not-downloaded") is None  # a hub id is not fetched for a fingerprint
    assert fp.model_fingerprint(torch.nn.Linear(2, 2)) is None
    assert fp.model_fingerprint(tmp_path / "no-such-folder") is None
    monkeypatch.setenv(fp.FINGERPRINT_ENV, "0")
    assert fp.model_fingerprint(a) is None
