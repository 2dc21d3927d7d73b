"""Answer verification (SPEC §7): exact numeric match, math-verify, or a user function.

- ``numeric``: the final number of the completion (``\\boxed{..}``, else after ``####``, else the
  last number in the text) equals the gold number exactly as rationals ("0.5" = "1/2" = ".50").
- ``math-verify``: Hugging Face ``math_verify.parse``/``verify`` with the gold answer first. Its
  own timeouts use SIGALRM, which fails outside the main thread; here they are switched off and
  each check instead runs in a separate worker *process* that is killed when it exceeds the
  time limit, so verification is safe inside worker threads and cannot hang a run.
- ``module:function`` (or ``path/to/file.py:function``): ``fn(completion, answer)`` returning a
  bool, or a tuple ``(extracted, bool)``.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing as mp
import re
import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from deltalens.errors import DeltalensError

_NUMBER = r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?:\s*/\s*\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
_HASH_RE = re.compile(r"####\s*(" + _NUMBER + ")")


def parse_number(text: str) -> Fraction | None:
    """A decimal, scientific or ``a/b`` number (thousands commas allowed) as an exact Fraction."""
    s = text.strip().replace(",", "").replace("$", "").strip()
    if not s:
        return None
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return Fraction(num.strip()) / Fraction(den.strip())
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def extract_number(completion: str) -> str | None:
    """The completion's final numeric answer as written, or ``None`` when there is none."""
    boxed = _BOXED_RE.findall(completion)
    if boxed:
        return boxed[-1].strip()
    hashed = _HASH_RE.findall(completion)
    if hashed:
        return hashed[-1].strip()
    nums = _NUMBER_RE.findall(completion)
    return nums[-1].strip() if nums else None


def numeric_verifier(completion: str, answer: str) -> tuple[str | None, bool]:
    """Exact numeric match of the completion's final number with the gold ``answer``."""
    gold = parse_number(str(answer))
    if gold is None:
        raise DeltalensError(f"gold answer {answer!r} is not a number (the numeric verifier needs numeric answers)")
    extracted = extract_number(completion)
    if extracted is None:
        return None, False
    value = parse_number(extracted)
    return extracted, value is not None and value == gold


# ----------------------------------------------------------------------------- math-verify
def _math_verify_worker(conn) -> None:  # runs in the child process
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    from math_verify import parse, verify

    while True:
        msg = conn.recv()
        if msg is None:
            return
        completion, answer = msg
        try:
            gold = parse(answer, parsing_timeout=None)
            if not gold:
                gold = parse(f"${answer}$", parsing_timeout=None)
            pred = parse(completion, parsing_timeout=None)
            ok = bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=None))
            extracted = str(pred[-1]) if pred else None
            conn.send(("ok", extracted, ok, bool(gold)))
        except Exception as exc:  # a parse failure is a wrong answer, not a crash
            conn.send(("error", repr(exc), False, True))


class MathVerifier:
    """math-verify with a per-check time limit enforced by a killable worker process.

    Thread-safe (one lock around the worker); each timed-out check counts as incorrect and the
    worker is restarted. Use as a context manager or call :meth:`close`.
    """

    _target = staticmethod(_math_verify_worker)

    def __init__(self, timeout: float = 5.0):
        self.timeout = float(timeout)
        self.timeouts = 0
        self._lock = threading.Lock()
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=self._target, args=(child,), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
        self._proc = self._conn = None

    def __call__(self, completion: str, answer: str) -> tuple[str | None, bool]:
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._start()
                first = True
            else:
                first = False
            self._conn.send((completion, str(answer)))
            # the first call also pays for importing sympy/math_verify in the new process
            if not self._conn.poll(self.timeout + (60.0 if first else 0.0)):
                self._kill()
                self.timeouts += 1
                return None, False
            status, extracted, ok, gold_ok = self._conn.recv()
        if not gold_ok:
            raise DeltalensError(f"gold answer {answer!r} could not be parsed by math-verify")
        return (extracted if status == "ok" else None), ok

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.is_alive():
                try:
                    self._conn.send(None)
                    self._proc.join(timeout=2)
                except (BrokenPipeError, OSError):
                    pass
            self._kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------- user functions
def load_user_function(spec: str) -> Callable:
    """``module:function`` or ``path/to/file.py:function`` -> the callable."""
    if ":" not in spec:
        raise DeltalensError(f"verifier {spec!r} must be 'numeric', 'math-verify' or 'module:function'")
    mod_name, fn_name = spec.rsplit(":", 1)
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise DeltalensError(f"verifier file {mod_name} not found")
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise DeltalensError(f"cannot import verifier module {mod_name!r}: {exc}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise DeltalensError(f"verifier {spec!r}: {mod_name} has no function {fn_name!r}")
    return fn


def _wrap_user(fn: Callable, spec: str) -> Callable:
    def call(completion: str, answer: str) -> tuple[str | None, bool]:
        out = fn(completion, answer)
        if isinstance(out, tuple) and len(out) == 2:
            return (None if out[0] is None else str(out[0])), bool(out[1])
        if isinstance(out, bool):
            return None, out
        raise DeltalensError(f"verifier {spec!r} must return a bool or (extracted, bool), got {type(out).__name__}")
    return call


def get_verifier(method: str | Callable = "numeric", *, timeout: float = 5.0) -> Callable:
    """A callable ``(completion, answer) -> (extracted, correct)`` for a method name or function.

    ``math-verify`` returns a :class:`MathVerifier` (close it when done).
    """
    if callable(method):
        return _wrap_user(method, getattr(method, "__name__", "function"))
    if method == "numeric":
        return numeric_verifier
    if method in ("math-verify", "math_verify"):
        return MathVerifier(timeout=timeout)
    return _wrap_user(load_user_function(method), method)


def verify(samples, problems, *, method: str | Callable = "numeric", timeout: float = 5.0,
           progress: bool = False) -> list[dict]:
    """Fill ``extracted`` and ``correct`` of every sample against its problem's gold answer.

    ``samples``: a samples file, :class:`SampleSet` or list of dicts; ``problems``: a problems
    file or list. Returns the sample dicts (new objects) in (id, sample_index) order.
    """
    from deltalens.behavior.formats import as_problems, as_sample_set

    sset = as_sample_set(samples)
    gold = {p.id: p for p in as_problems(problems)}
    verifier = get_verifier(method, timeout=timeout)
    rows = [dict(r) for rs in sset.by_id.values() for r in rs]
    for r in rows:
        if r["id"] not in gold:
            raise DeltalensError(f"{sset.source}: sample id {r['id']!r} is not in the problems file")
    try:
        it = rows
        if progress:
            from rich.progress import track

            it = track(rows, description=f"verifying ({method if isinstance(method, str) else 'function'})")
        for r in it:
            try:
                r["extracted"], r["correct"] = verifier(str(r["completion"]), gold[r["id"]].answer)
            except DeltalensError as exc:
                raise DeltalensError(f"problem {r['id']!r}: {exc}") from None
    finally:
        if isinstance(verifier, MathVerifier):
            verifier.close()
    return rows
