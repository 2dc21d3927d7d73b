"""deltalens: what did this fine-tune actually change?

The library API mirrors the CLI. Heavy modules (torch, transformers) load on first use, so
``import deltalens`` is cheap.
"""

from __future__ import annotations

from deltalens.errors import DeltalensError

__version__ = "0.1.0"
__all__ = ["DeltalensError", "__version__"]
