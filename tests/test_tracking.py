"""UpdateStatsCallback and its per-step quantities, against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

from deltalens.results import read_jsonl
from deltalens.weights.sparsity import bf16_half_ulp
from deltalens.tracking import (
    TRACKING_FIELDS,
    UpdateStatsCallback,
    bf16_visible_fraction,
    top_k_angle_deg,
    top_singular_subspaces,
)


def next_bf16_up(x: torch.Tensor) -> torch.Tensor:
    """The next bf16 value away from zero, by incrementing the bit pattern (reference)."""
    b = x.to(torch.bfloat16).view(torch.int16)
    return (b + 1).view(torch.bfloat16).float()


def test_half_ulp_closed_form():
    w = torch.tensor([1.0, 1.5, 0.75, -3.0, 2.0**-20])
    expected = torch.tensor([2.0**-8, 2.0**-8, 2.0**-9, 2.0**-7, 2.0**-28])
    assert torch.equal(bf16_half_ulp(w), expected)


def test_half_ulp_matches_bf16_bit_increment():
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(1000, generator=g) * 10.0 ** torch.randint(-6, 3, (1000,), generator=g)).to(torch.bfloat16).float()
    ref = 0.5 * (next_bf16_up(w.abs()) - w.abs())
    assert torch.equal(bf16_half_ulp(w), ref)


def test_bf16_visible_fraction_planted():
    w0 = torch.ones(4, 25)
    w1 = w0.clone()
    w1[:1] += 0.003  # below half an ULP at 1.0 (2^-8 ≈ 0.0039): invisible
    w1[1:3] += 0.005  # above: visible
    w1[3:] -= 0.0  # unchanged
    assert bf16_visible_fraction(w0, w1) == pytest.approx(0.5)
    # Visible updates of bf16-representable weights change the stored bf16 value.
    changed = (w1.to(torch.bfloat16) != w0.to(torch.bfloat16)).double().mean().item()
    assert changed == pytest.approx(0.5)


def rotation(n: int, i: int, j: int, theta: float) -> np.ndarray:
    r = np.eye(n)
    r[i, i] = r[j, j] = math.cos(theta)
    r[i, j], r[j, i] = -math.sin(theta), math.sin(theta)
    return r


def test_top_k_angle_planted_rotation_matches_scipy():
    n, k, theta = 12, 2, math.radians(3.0)
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.diag(np.linspace(10, 1, n))
    w0 = u @ s @ v.T
    w1 = (u @ rotation(n, 1, 5, theta)) @ s @ v.T  # rotate the 2nd left vector out of the top-2 span
    a = top_singular_subspaces(torch.from_numpy(w0), k)
    b = top_singular_subspaces(torch.from_numpy(w1), k)
    got = top_k_angle_deg(a, b)
    ref = math.degrees(subspace_angles(u[:, :k], (u @ rotation(n, 1, 5, theta))[:, :k]).max())
    assert got == pytest.approx(3.0, abs=1e-6)
    assert got == pytest.approx(ref, abs=1e-6)


class _Snapshots:
    """Independent record of the tracked weights after every step (reference)."""

    def __init__(self, name):
        self.name, self.weights = name, {}

    def __call__(self, model, step):
        self.weights[step] = dict(model.named_parameters())[self.name].detach().double().numpy().copy()


def test_callback_in_a_real_trainer(tmp_path, char_tokenizer):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from deltalens.lab.tiny_model import build_tiny_llama

    model = build_tiny_llama(tokenizer=char_tokenizer, seed=0)
    name = "model.layers.0.self_attn.q_proj.weight"
    snaps = _Snapshots(name)

    class Snap(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            snaps(model, 0)

        def on_step_end(self, args, state, control, model=None, **kw):
            snaps(model, state.global_step)

    enc = char_tokenizer(["12+34=46", "5+5=10", "c:ab=ab", "r:ab=ba"] * 4, padding=True, return_tensors="pt")
    rows = [{"input_ids": i, "attention_mask": m, "labels": i.masked_fill(m == 0, -100)}
            for i, m in zip(enc["input_ids"], enc["attention_mask"])]
    args = TrainingArguments(output_dir=str(tmp_path / "t"), max_steps=4, per_device_train_batch_size=4,
                             learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to=[],
                             use_cpu=True, disable_tqdm=True, seed=0)
    cb = UpdateStatsCallback(tmp_path / "tracking.jsonl", tensors=[r"layers\.0\.self_attn\.q_proj"], every=2)
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[Snap(), cb])
    trainer.train()
    got = read_jsonl(tmp_path / "tracking.jsonl", required=TRACKING_FIELDS)
    assert [r["step"] for r in got] == [2, 4] and {r["tensor"] for r in got} == {name}
    w = snaps.weights
    assert got[0]["update_fro"] == pytest.approx(np.linalg.norm(w[2] - w[0]), rel=1e-5)
    assert got[1]["update_fro"] == pytest.approx(np.linalg.norm(w[4] - w[2]), rel=1e-5)
    w0 = w[0].astype(np.float32)
    for row, step in zip(got, (2, 4)):
        ulp_half = 0.5 * np.spacing(np.abs(w0).astype(np.float32)) * 2.0**16  # float32 ULP × 2^16 = bf16 ULP
        visible = np.abs(w[step].astype(np.float32) - w0) >= ulp_half
        assert row["bf16_visible_fraction"] == pytest.approx(visible.mean(), abs=1e-12)
        assert row["k"] == 1 and row["angle_to_base_deg"] >= 0
    # shown in the trainer's own logs at the recorded steps
    logged = {h["step"]: h for h in trainer.state.log_history if "deltalens/update_fro" in h}
    assert sorted(logged) == [2, 4]
    assert logged[4]["deltalens/update_fro"] == pytest.approx(got[1]["update_fro"])
