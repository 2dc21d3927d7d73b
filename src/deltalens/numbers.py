"""Number formatting shared by the HTML report, the terminal tables and the lab's claim tables (one definition)."""

from __future__ import annotations

import math


def fmt(value: object, digits: int = 3) -> str:
    """A number for a table cell: ``digits`` significant digits, scientific notation below 1e-3
    and from 1e6, thousands separators for integers, '—' for missing or NaN, ±∞ for infinities."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy or torch scalar
        value = value.item()
    if value is None or isinstance(value, bool):
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—" if math.isnan(value) else ("∞" if value > 0 else "−∞")
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def pct(value: object, digits: int = 2) -> str:
    """A fraction shown as a percentage ('—' when missing); below 0.01% in scientific notation
    so a tiny but non-zero fraction never prints as 0.00%."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if value != 0 and abs(100 * value) < 10 ** -digits:
            return f"{100 * value:.1e}%"
        return f"{100 * value:.{digits}f}%"
    return "—"
