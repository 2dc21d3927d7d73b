"""Package-level checks: the CLI answers fast and lazily, tokenizer and tiny model build."""

from __future__ import annotations

import subprocess
import sys


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys; from deltalens.cli import app; "
        "heavy = [m for m in ('torch', 'transformers', 'trl') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_exit_zero(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0
    assert "deltalens" in out.lower() or "usage" in out.lower()


def test_char_tokenizer_roundtrip(char_tokenizer):
    text = "What is 12+7?\nAnswer: 19"
    ids = char_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert char_tokenizer.decode(ids) == text


def test_tiny_llama_forward(tiny_llama, char_tokenizer):
    import torch

    batch = char_tokenizer(["1+1=2", "3+4=7"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = tiny_llama(**batch).logits
    assert logits.shape == (2, 5, len(char_tokenizer))
    assert torch.isfinite(logits).all()
