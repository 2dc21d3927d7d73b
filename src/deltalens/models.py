"""Loading a causal language model for measurement: one loader for every area."""

from __future__ import annotations

import os
from pathlib import Path

from deltalens.errors import DeltalensError


def load_model(source, tokenizer=None, *, device: str | None = None, dtype: str | None = None,
               need_tokenizer: bool = True):
    """``(model, tokenizer, name)`` from a Hugging Face model folder or an already-loaded module.

    A folder loads with ``AutoModelForCausalLM`` (in ``dtype``, e.g. ``"float32"``, else the
    stored dtype) and its own tokenizer unless one is given; a missing ``config.json`` or
    tokenizer is a :class:`DeltalensError`. A loaded module is used as is (moved only when
    ``device`` is given); it needs ``tokenizer=`` unless ``need_tokenizer=False`` (a generic
    ``nn.Module`` fed ready-made batches). The model is put in eval mode; a tokenizer without a
    pad token pads with its eos token. ``name`` is the folder's name or the module's.
    """
    import torch

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not (path / "config.json").is_file():
            raise DeltalensError(f"{path}: not a model folder (config.json not found)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(path)
            except (OSError, ValueError) as exc:
                raise DeltalensError(f"{path}: no tokenizer found ({exc.__class__.__name__}); pass one") from None
        name = path.resolve().name
    else:
        model = source
        if tokenizer is None and need_tokenizer:
            raise DeltalensError("an already-loaded model needs tokenizer=...")
        config = getattr(model, "config", None)
        name = str(getattr(config, "name_or_path", "") or "") or type(model).__name__
        name = Path(name).name or name
    if device:
        model = model.to(device)
    model.eval()
    if tokenizer is not None and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, name
