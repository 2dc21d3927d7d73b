"""A rich progress bar over tensor pairs, sized in bytes read (both sides)."""

from __future__ import annotations

_BYTES = {"float64": 8, "float32": 4, "int64": 8, "int32": 4}


def pair_bytes(pair) -> int:
    return pair.numel * (_BYTES.get(pair.dtype0, 2) + _BYTES.get(pair.dtype1, 2))


class TensorProgress:
    """Context manager: ``describe(name)`` then ``advance(pair)`` per tensor; silent when disabled."""

    def __init__(self, pairs, *, enabled: bool, label: str):
        self.enabled = enabled
        self.total = sum(pair_bytes(p) for p in pairs)
        self.label = label
        self._progress = None

    def __enter__(self):
        if self.enabled:
            from deltalens.progress import bar

            self._progress = bar(unit="bytes")
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total)
        return self

    def describe(self, name: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=f"{self.label}: {name}")

    def advance(self, pair) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, pair_bytes(pair))

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False
