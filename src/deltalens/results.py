"""Reading and writing results: atomic JSON/Parquet/text writes and line-checked JSONL.

Every output file is written to a temporary sibling and moved into place with
``os.replace``, so a reader (or an interrupted run) never sees half a file; files get the
umask's mode like any other. :func:`check_output_dir` / :func:`check_output_file` are the one
place commands check, before their work starts, that their outputs can be written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from deltalens.errors import DeltalensError


def current_umask() -> int:
    """The process's umask, read without changing it where Linux exposes it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only where /proc is absent)
    os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    """Temporary siblings are named ``.NAME.PID.XXXXXXXX.tmp``: the pid lets a later run tell one
    left by a killed process (removed by :func:`check_output_dir`) from one being written now."""
    return f".{path.name}.{os.getpid()}."


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` atomically: a temporary sibling, fsync, ``os.replace``. The file gets the
    mode a plain ``open()`` would give (0666 less the umask), not ``mkstemp``'s private 0600.
    An unwritable place is a :class:`DeltalensError` naming the path; the temporary is removed
    on any failure or interruption."""
    return write_stream(path, lambda fh: fh.write(data))


def write_stream(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """:func:`write_bytes` for content too large to hold: ``write(fh)`` fills the temporary
    sibling (a binary file object), which then replaces ``path`` atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise DeltalensError(f"{path}: cannot write here ({exc.strerror or type(exc).__name__})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise DeltalensError(f"{path}: cannot write here ({exc.strerror or type(exc).__name__})") from None
        raise
    return path


@contextmanager
def write_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a folder atomically: yields an empty temporary sibling (named like
    :func:`write_bytes`' temporaries, so :func:`remove_stale_temps` knows a dead writer's), and
    on success replaces ``path`` with it; on any failure or interruption the temporary is
    removed and ``path`` is left as it was. A folder that exists is therefore complete."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~current_umask())
    except OSError as exc:
        raise DeltalensError(f"{path}: cannot write here ({exc.strerror or type(exc).__name__})") from None
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of :func:`write_bytes` and :func:`write_folder` in ``folder`` whose writer has died
    (a ``kill -9`` mid-write); ones of live processes are left alone (as seen from this pid
    namespace: a writer in another container sharing the folder would look dead). Returns what
    was removed."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        parts = tmp.name[: -len(".tmp")].rsplit(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            try:
                shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def _probe_writable(folder: Path, what: str) -> None:
    """Try to create (and remove) a file in ``folder``: permission bits alone do not tell (root,
    ACLs, read-only mounts)."""
    try:  # named like write_bytes' temporaries, so one left by a kill right here is swept as well
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(Path("deltalens-write-check")), suffix=".tmp", dir=folder)
    except OSError as exc:
        raise DeltalensError(f"{folder}: {what} is not writable ({exc.strerror or type(exc).__name__})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_dir(folder: str | os.PathLike, files: Iterable[str] = (), *, what: str = "output folder") -> Path:
    """Make sure ``folder`` can take a command's outputs, before any work starts.

    The folder must be a folder or not exist yet; then the folder, or the nearest existing
    folder above it (where it will be created), must take a file: it is tried, since
    permission bits alone do not tell (root, ACLs, read-only mounts). None of ``files`` (the
    names the command writes there) may exist as a folder. Nothing is created, so a command
    that fails later leaves nothing behind; temporary files left in the folder by a killed run
    are removed. Any problem is one :class:`DeltalensError` line naming the path and what was
    expected.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DeltalensError(f"{folder}: the {what} is a file, not a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DeltalensError(f"{folder}: cannot create the {what}: {existing} is a file, not a folder")
    _probe_writable(existing, what if existing == folder else f"folder in which the {what} would be created")
    for name in files:
        if (folder / name).is_dir():
            raise DeltalensError(f"{folder / name}: exists as a folder, where this command writes a file; "
                                 "remove it or choose another output folder")
    if folder.is_dir():
        remove_stale_temps(folder)
    return folder


def check_output_file(path: str | os.PathLike, *, what: str = "output file") -> Path:
    """Make sure ``path`` can be written as a file (not a folder; its folder creatable and
    writable), before any work starts; one :class:`DeltalensError` line otherwise."""
    path = Path(path)
    if path.is_dir():
        raise DeltalensError(f"{path}: the {what} is a folder, not a file")
    check_output_dir(path.parent, what=f"folder of the {what}")
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
    return write_bytes(path, (text + "\n").encode())


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    return write_bytes(path, text.encode())


def write_parquet(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame to Parquet atomically."""
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return write_bytes(path, buf.getvalue())


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = path.open("a")
    except OSError as exc:
        raise DeltalensError(f"{path}: cannot append here ({exc.strerror or type(exc).__name__})") from None
    with fh:
        for row in rows:
            fh.write(json.dumps(to_jsonable(row), allow_nan=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
