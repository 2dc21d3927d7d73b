"""deltalens: what did this fine-tune actually change?

The library API mirrors the CLI. Heavy modules (torch, transformers) load on first use, so
``import deltalens`` is cheap: ``deltalens.diff`` and ``deltalens.overlap`` are resolved
lazily through the module's ``__getattr__``.
"""

from __future__ import annotations

from deltalens.errors import DeltalensError

__version__ = "0.1.0"
__all__ = ["DeltalensError", "__version__", "diff", "overlap"]

_LAZY = {
    "diff": ("deltalens.weights.api", "diff"),
    "overlap": ("deltalens.weights.api", "overlap"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deltalens' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
