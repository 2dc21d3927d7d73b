"""The fused CPU pass of the sparsity/size statistics (SPEC §2, §3), compiled by numba.

One loop reads each element of the pair once and computes, per element, the SPEC §2 rules (the
functions of :mod:`deltalens.weights.sparsity`, compiled here for scalars: the same functions the
torch pass applies to tensors) and the §3 sums; the GIL is released. Values are decoded from the
stored bits to float64 in registers (bf16: a 16-bit shift; fp16: the hardware conversion), so
nothing is upcast in memory. The loop vectorizes (the reason for the shapes below: the max is
taken on the integer bits of |Δ| ≥ 0, where integer order is float order, and the float64 sums
may be reassociated); the counts are exact and the sums equal a float64 sum to rounding.

A bf16 pass over a 1.25 GB pair runs at about 6–7 GB per CPU-second here, against about 2.2 for
the numpy pass it replaces (docs/diff.md). Each new dtype costs a compilation of a few seconds
the first time; the compiled code is cached on disk (numba's ``cache=True``).
"""

from __future__ import annotations

import hashlib
import inspect
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from deltalens.weights.sparsity_rules import (
    INF, absolute_unchanged, bits_view, bitwise_unchanged, relative_unchanged, update_abs,
)

BLOCK = 1 << 14  # elements per block of the loop
PART = 1 << 20  # elements per part handed to a thread (≈ 1 ms of work)
# the loop decodes by the element type of the value view: uint16 as bf16, int16 as fp16
_VALUE_VIEW = {torch.bfloat16: np.uint16, torch.float16: np.int16, torch.float32: np.float32, torch.float64: np.float64}

_bitwise = njit(inline="always")(bitwise_unchanged)
_update_abs = njit(inline="always")(update_abs)
_relative = njit(inline="always")(relative_unchanged)
_absolute = njit(inline="always")(absolute_unchanged)


@intrinsic
def _bf16_to_f64(typingctx, bits):
    """float64 of the bf16 whose bits are ``bits`` (uint16): the float32 with those bits on top."""
    def codegen(context, builder, signature, args):
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.fpext(builder.bitcast(wide, ir.FloatType()), ir.DoubleType())
    return types.float64(types.uint16), codegen


@intrinsic
def _f16_to_f64(typingctx, bits):
    """float64 of the IEEE half whose bits are ``bits`` (int16)."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.DoubleType())
    return types.float64(types.int16), codegen


@intrinsic
def _f64_bits(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def _f64_from_bits(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


def _value(a, i):
    """Element ``i`` of a value view, as float64 (compiled only: see the overload)."""
    raise NotImplementedError


@overload(_value, inline="always")
def _value_overload(a, i):
    if a.dtype == types.uint16:
        return lambda a, i: _bf16_to_f64(a[i])
    if a.dtype == types.int16:
        return lambda a, i: _f16_to_f64(a[i])
    return lambda a, i: np.float64(a[i])


@njit(inline="always")
def _block(b0, b1, v0, v1, eta, tol0, checked):
    """Counts and sums over one block. ``checked`` (a constant at each call) masks NaN/Inf out of
    the sums; unchecked, the loop is shorter and valid when both sums come out finite (then every
    w0 and every Δ, hence every w1, is finite)."""
    n_same = n_both = n_rel = n_abs = 0
    s0 = sd = 0.0
    top = 0  # bits of max|Δ|: Δ ≥ 0, where integer order is float order (an integer max vectorizes)
    for i in range(v0.size):
        x0 = _value(v0, i)
        x1 = _value(v1, i)
        same = _bitwise(b0[i], b1[i])
        d = _update_abs(x0, x1)
        if checked:
            fin0 = abs(x0) < INF
            both = fin0 & (abs(x1) < INF)
            n_both += both
            s0 += x0 * x0 if fin0 else 0.0
            d_sum = d if both else 0.0
        else:
            s0 += x0 * x0
            d_sum = d
        sd += d_sum * d_sum
        top = max(top, _f64_bits(d_sum))
        n_same += same
        n_rel += _relative(same, d, x0, x1, eta)
        n_abs += _absolute(same, d, tol0)
    if not checked:
        n_both = v0.size
    return n_same, n_both, n_rel, n_abs, s0, sd, top


def _rules_fingerprint() -> str:
    """sha256 of the source of the rule functions the loop inlines from sparsity.py. numba keys its
    disk cache on this file's timestamp and on the compiled function's bytecode and closure, not on
    the functions it calls, so an edited rule would keep running its old compiled form: the
    fingerprint is put in the loop's closure instead, and a changed rule is compiled anew."""
    rules = (bitwise_unchanged, update_abs, relative_unchanged, absolute_unchanged)
    return hashlib.sha256("".join(inspect.getsource(f) for f in rules).encode()).hexdigest()


def _make_pass(rules: str):
    @njit(nogil=True, cache=True, fastmath={"reassoc"})
    def _pass(bits0, bits1, vals0, vals1, eta, tols, block, counts, sums):
        """Add to ``counts`` [bitwise-unchanged, both finite, relative-unchanged, absolute-unchanged
        per tolerance] and ``sums`` [Σw0², ΣΔ² (finite entries), max|Δ|] over the pair."""
        if len(rules) == 0:  # never: makes the fingerprint part of the closure numba hashes
            return
        ntol = tols.size
        tol0 = tols[0] if ntol > 0 else np.nan
        top = 0
        for lo in range(0, vals0.size, block):
            # per-block views indexed from 0: an index LLVM cannot prove ≥ 0 keeps numba's
            # negative-index wraparound in the loop, which stops it from vectorizing (3× slower)
            b0, b1, v0, v1 = bits0[lo:lo + block], bits1[lo:lo + block], vals0[lo:lo + block], vals1[lo:lo + block]
            r = _block(b0, b1, v0, v1, eta, tol0, False)
            if not (abs(r[4]) < INF and abs(r[5]) < INF):  # a NaN/Inf (or a float64 overflow) in the block
                r = _block(b0, b1, v0, v1, eta, tol0, True)
            counts[0] += r[0]
            counts[1] += r[1]
            counts[2] += r[2]
            if ntol > 0:
                counts[3] += r[3]
            sums[0] += r[4]
            sums[1] += r[5]
            top = max(top, r[6])
            for k in range(1, ntol):  # a further tolerance re-reads the block while it is in cache
                tol = tols[k]
                c = 0
                for i in range(v0.size):
                    c += _absolute(_bitwise(b0[i], b1[i]), _update_abs(_value(v0, i), _value(v1, i)), tol)
                counts[3 + k] += c
        sums[2] = max(sums[2], _f64_from_bits(top))

    return _pass


_pass = _make_pass(_rules_fingerprint())


def supports(dtype: torch.dtype) -> bool:
    """Whether the compiled pass reads this stored dtype."""
    return dtype in _VALUE_VIEW


def accumulate(acc, a: torch.Tensor, b: torch.Tensor, block: int | None = None,
               threads: int = 1, part: int = PART) -> None:
    """Add a same-dtype pair of flat CPU tensors to ``acc`` in the compiled pass: parts of ``part``
    elements, taken in turn by ``threads`` threads as each finishes its last (the loop holds no
    GIL). One thread by default: on the 2-vCPU development box two threads were 17–34% slower on
    the wall and cost 5–16% more CPU per byte (docs/diff.md), so more is for a machine where
    ``bench/bench_sparsity_kernel.py`` shows a gain."""
    bits0, bits1 = bits_view(a.contiguous()).numpy(), bits_view(b.contiguous()).numpy()
    view = _VALUE_VIEW[a.dtype]
    vals0, vals1 = bits0.view(view), bits1.view(view)
    tols = np.asarray(acc.tols, np.float64)
    n = a.numel()
    parts = max(1, -(-n // max(part, 1)))
    counts = np.zeros((parts, 3 + len(acc.tols)), np.int64)
    sums = np.zeros((parts, 3), np.float64)

    def run(k: int) -> None:
        lo, hi = k * part, min(n, (k + 1) * part)
        _pass(bits0[lo:hi], bits1[lo:hi], vals0[lo:hi], vals1[lo:hi], acc.eta, tols, int(block or BLOCK),
              counts[k], sums[k])

    threads = max(1, min(threads, parts))
    if threads == 1:
        for k in range(parts):
            run(k)
    else:  # threads for this pair only
        with ThreadPoolExecutor(threads, thread_name_prefix="deltalens-sparsity") as pool:
            list(pool.map(run, range(parts)))
    total, (s0, sd, top) = counts.sum(axis=0), (sums[:, 0].sum(), sums[:, 1].sum(), sums[:, 2].max())
    acc.add(numel=n, changed=n - total[0], nonfinite=n - total[1], rel_unchanged=total[2],
            abs_unchanged=total[3:], sum_w02=s0, sum_d2=sd, max_abs=top)
