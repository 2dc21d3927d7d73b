"""Reading and writing results: atomic JSON/Parquet/text writes and line-checked JSONL.

Every output file is written to a temporary sibling and moved into place with
``os.replace``, so a reader (or an interrupted run) never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from deltalens.errors import DeltalensError


def _atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, tuples and paths into plain JSON values.

    Non-finite floats become ``None`` so the file stays strict JSON.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1) -> Path:
    """Write ``obj`` as strict JSON atomically."""
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)
    return _atomic_write_bytes(path, (text + "\n").encode())


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    return _atomic_write_bytes(path, text.encode())


def write_parquet(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame to Parquet atomically."""
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return _atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file is a :class:`DeltalensError`."""
    path = Path(path)
    if not path.is_file():
        raise DeltalensError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DeltalensError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def read_jsonl(path: str | os.PathLike, *, required: Iterable[str] = ()) -> list[dict]:
    """Read a JSONL file, one object a line; blank lines are skipped.

    A malformed line, a line that is not an object, or one missing a ``required`` field
    raises :class:`DeltalensError` naming the file and line number.
    """
    return list(iter_jsonl(path, required=required))


def iter_jsonl(path: str | os.PathLike, *, required: Iterable[str] = ()) -> Iterator[dict]:
    path = Path(path)
    if not path.is_file():
        raise DeltalensError(f"{path}: file not found")
    required = tuple(required)
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DeltalensError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DeltalensError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            for field in required:
                if field not in obj:
                    raise DeltalensError(f"{path}:{lineno}: missing field '{field}'")
            yield obj


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows to a JSONL file, flushing and syncing so a crash loses at most this call."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        for row in rows:
            fh.write(json.dumps(to_jsonable(row), allow_nan=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
