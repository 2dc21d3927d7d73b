"""``--limit N``: the first N items of each task, for every command that reads problems or probes.

One rule for all inputs (problems, probes, trait suites, alignment data), after lm-eval's
``--limit``: items keep their file order, and an item's task is its ``task`` field (a line
without one belongs to the one unnamed task, so a file without tasks gives its first N lines).
"""

from __future__ import annotations

from collections.abc import Iterable

from deltalens.errors import DeltalensError


def check_limit(limit) -> None:
    """``None`` (no limit) or a positive integer; one :class:`DeltalensError` line otherwise."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DeltalensError(f"--limit: expected a positive number of items per task, got {limit!r}")


def first_per_task(items: Iterable, limit: int | None) -> list:
    """The first ``limit`` items of each task, in file order (all of them when ``limit`` is None).

    Items are dicts (``item.get("task")``) or objects with a ``task`` attribute (problems)."""
    check_limit(limit)
    items = list(items)
    if limit is None:
        return items
    seen: dict = {}
    kept = []
    for item in items:
        task = item.get("task") if isinstance(item, dict) else getattr(item, "task", None)
        if seen.get(task, 0) < limit:
            seen[task] = seen.get(task, 0) + 1
            kept.append(item)
    return kept
