"""A small demo built in code: a tiny bf16 base model and three "fine-tunes" of it.

- ``sft``: a dense update (low-rank part plus noise on every tensor), as supervised
  fine-tuning tends to give;
- ``rl``: a sparse update (a random ~20% of entries move), as RL fine-tunes show in bf16;
- ``lora``: a PEFT LoRA adapter (r = 8, alpha = 16) on the attention projections.

Nothing is trained or downloaded; the updates are synthetic and seeded, so every run gives
the same numbers.

It lives at the package's top level, not in ``weights/``: it builds its base with the lab's tiny
Llama and character tokenizer, and ``weights`` never imports ``lab``.
"""

from __future__ import annotations

from pathlib import Path

DEMO_SEED = 0


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return path


def build_demo_checkpoints(out: str | Path) -> dict[str, Path]:
    """Write base/, sft/, rl/ (bf16 HF safetensors folders) and lora/ (PEFT adapter) under ``out``."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers.utils import logging as hf_logging

    from deltalens.lab.tiny_model import TinyConfig, build_tiny_llama
    from deltalens.lab.tokenizer import build_char_tokenizer

    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():  # PEFT/transformers FutureWarnings, for this call only
        warnings.simplefilter("ignore", category=FutureWarning)
        out = Path(out)
        tok = build_char_tokenizer()
        cfg = TinyConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2)
        base = build_tiny_llama(cfg, seed=DEMO_SEED, tokenizer=tok).to(torch.bfloat16)
        paths = {"base": _save(base, tok, out / "base")}
        state = {k: v.clone() for k, v in base.state_dict().items()}
        gen = torch.Generator().manual_seed(DEMO_SEED + 1)

        def rms(w):
            return float(w.float().square().mean().sqrt())

        with torch.no_grad():
            for name, p in base.named_parameters():  # dense, SFT-like
                w = state[name].float()
                if w.ndim == 2:
                    m, n = w.shape
                    low = torch.randn(m, 8, generator=gen) @ torch.randn(8, n, generator=gen) / 8 ** 0.5
                    delta = 0.02 * rms(w) * low + 0.004 * rms(w) * torch.randn(m, n, generator=gen)
                else:
                    delta = 0.01 * rms(w) * torch.randn(w.shape, generator=gen)
                p.copy_((w + delta).to(torch.bfloat16))
            paths["sft"] = _save(base, tok, out / "sft")
            for name, p in base.named_parameters():  # sparse, RL-like
                w = state[name].float()
                mask = torch.rand(w.shape, generator=gen) < 0.2
                delta = 0.02 * w.abs().clamp_min(rms(w) * 0.1) * torch.randn(w.shape, generator=gen)
                p.copy_((w + delta * mask).to(torch.bfloat16))
            paths["rl"] = _save(base, tok, out / "rl")
            base.load_state_dict(state)
            lora_model = get_peft_model(base.float(), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
            for name, p in lora_model.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            lora_model.save_pretrained(str(out / "lora"))
            paths["lora"] = out / "lora"
        return paths


def run_demo(out: str | Path, *, progress: bool = False) -> dict:
    """Build the demo checkpoints under ``out``/checkpoints and diff each fine-tune against the
    base (``out``/<name>-vs-base), then the sft/rl/lora update-mask overlaps (``out``/overlap)."""
    from deltalens.weights.diff import run_diff
    from deltalens.weights.overlap import run_overlap

    out = Path(out)
    paths = build_demo_checkpoints(out / "checkpoints")
    diffs = {name: run_diff(paths["base"], paths[name], out=out / f"{name}-vs-base", progress=progress)
             for name in ("sft", "rl", "lora")}
    overlap = run_overlap(paths["base"], [paths["sft"], paths["rl"], paths["lora"]], out=out / "overlap",
                          progress=progress)
    return {"checkpoints": paths, "diffs": diffs, "overlap": overlap}
