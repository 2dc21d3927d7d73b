"""Exact selection for the §5 overlaps: |S ∩ M| where S = the ``count`` largest (or smallest)
entries of a large non-negative matrix given row chunk by row chunk, and M a bool mask, with ties
at the boundary taken in position order (as a stable sort would), in one pass over the chunks and
the memory of one chunk plus the candidates.  SPEC §5 (Path Not Taken §4.2).

Entry point :func:`count_selected`: a strided sample of the rows gives a value bracket around the
boundary (:func:`_selection_bracket`), one pass counts what lies beyond it and keeps what lies
inside (:func:`_count_selected_in_bracket`), ``numpy.partition`` finishes
(:func:`_count_selected_in_memory`); a three-pass radix select on the float32 bit pattern
(:func:`_count_selected_in_mask`) is the fallback when the sample missed or the bracket held too
many values. Tested against numpy's stable argsort in ``tests/weights/test_spectral.py`` (the overlap tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from deltalens.linalg import chunk_rows

SELECT_SAMPLE = (32, 1 << 16, 1 << 21)  # overlaps: the bracket's sample, 1/32 of the entries within these bounds
SELECT_Z = 5.0  # ... its half-width in standard errors of the sample's boundary fraction
SELECT_CANDIDATES = (32, 1 << 16, 1 << 24)  # ... at most 1/32 of the entries kept inside it, within these bounds


def _radix_boundary(hist: torch.Tensor, count: int, largest: bool) -> tuple[int, int]:
    """(bucket holding the count-th largest/smallest item, items strictly beyond that bucket)."""
    order = hist.flip(0) if largest else hist
    cum = torch.cumsum(order, 0)
    idx = int(torch.searchsorted(cum, torch.tensor(count, dtype=cum.dtype)))
    bucket = (len(hist) - 1 - idx) if largest else idx
    return bucket, int(cum[idx] - order[idx])


def _count_selected_in_mask(
    chunks: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]], count: int, largest: bool
) -> int:
    """Exact |S ∩ M| where S = the ``count`` largest (or smallest) values over all chunks.

    ``chunks()`` yields (non-negative float32 values, bool mask) pairs, flat, always in the same
    order; it is called three times. Selection is a radix select on the float32 bit pattern
    (monotone for x ≥ 0): a histogram of the high 16 bits, then of the low 16 bits inside the
    boundary bucket, gives the exact boundary value; ties at the boundary are taken in position
    order (as a stable sort would). Memory: one chunk and two histograms, whatever the ties.
    """
    if count <= 0:
        return 0
    hist = None
    for vals, _ in chunks():
        h = torch.bincount((vals.view(torch.int32) >> 16).long(), minlength=1 << 15).cpu()
        hist = h if hist is None else hist + h
    high, before_high = _radix_boundary(hist, count, largest)
    hist = torch.zeros(1 << 16, dtype=torch.int64)
    for vals, _ in chunks():
        keys = vals.view(torch.int32)
        low = (keys[(keys >> 16) == high] & 0xFFFF).long()
        hist += torch.bincount(low, minlength=1 << 16).cpu()
    low, before_low = _radix_boundary(hist, count - before_high, largest)
    boundary = (high << 16) | low
    need = count - before_high - before_low  # entries equal to the boundary value still to take
    hits = 0
    for vals, mask in chunks():
        keys = vals.view(torch.int32)
        beyond = keys > boundary if largest else keys < boundary
        hits += int(torch.count_nonzero(beyond & mask))
        if need > 0:
            tied = torch.nonzero(keys == boundary).flatten()[:need]
            hits += int(torch.count_nonzero(mask[tied]))
            need -= len(tied)
    return hits


def _on_host(t: torch.Tensor) -> bool:
    """Whether the overlap selection works on ``t`` (a CPU tensor) with numpy rather than torch:
    numpy's compares and extraction measured 3-4x torch's on one thread, its abs as fast, and it
    has no thread-pool barrier to stall on when the cores are shared (torch's two-thread abs_
    measured 8x slower there)."""
    return t.device.type == "cpu"


def abs_into(src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = |src| (float32, same shape; src may be out itself), in one pass where numpy can."""
    if not _on_host(out):
        return out.copy_(src).abs_()  # (a no-op copy when src is out)
    import numpy as np

    if src.dtype != torch.float32:  # bf16/fp16: torch casts, numpy takes the abs in place
        src = out.copy_(src)
    np.abs(src.numpy(), out=out.numpy())
    return out


def _chunk_ops(host: bool) -> dict:
    """The elementwise operations of :func:`_count_selected_in_bracket`, from numpy or torch (same
    calling convention: ``op(a, b, out=buffer)``)."""
    import numpy as np

    if host:
        return dict(gt=np.greater, ge=np.greater_equal, lt=np.less, le=np.less_equal, and_=np.bitwise_and,
                    xor=np.bitwise_xor, nnz=np.count_nonzero, where=np.flatnonzero, to_host=lambda a: a,
                    bools=lambda size, like: np.empty(size, dtype=bool))
    return dict(gt=torch.gt, ge=torch.ge, lt=torch.lt, le=torch.le, and_=torch.bitwise_and, xor=torch.bitwise_xor,
                nnz=torch.count_nonzero, where=lambda a: torch.nonzero(a).flatten(), to_host=lambda a: a.cpu().numpy(),
                bools=lambda size, like: torch.empty(size, dtype=torch.bool, device=like.device))


def _count_selected_in_memory(vals, mask, count: int, largest: bool) -> int:
    """Exact |S ∩ M| for S = the ``count`` largest (smallest) of the flat float32 numpy array
    ``vals`` (bool numpy ``mask``), ties at the boundary taken in position order (the same set as
    :func:`_count_selected_in_mask` and a stable sort give). ``numpy.partition`` finds the boundary."""
    import numpy as np

    if count <= 0:
        return 0
    kth = vals.size - count if largest else count - 1
    boundary = np.partition(vals, kth)[kth]
    beyond = vals > boundary if largest else vals < boundary
    hits = int(np.count_nonzero(beyond & mask))
    need = count - int(np.count_nonzero(beyond))
    if need > 0:
        hits += int(np.count_nonzero(mask[np.flatnonzero(vals == boundary)[:need]]))
    return hits


def _selection_bracket(sample: torch.Tensor, total: int, count: int, largest: bool) -> tuple[float, float]:
    """A value interval [lo, hi] that holds the boundary of the ``count`` largest (smallest) of
    ``total`` values with high probability, from ``sample`` (r × n: r rows of the matrix).

    The boundary is the q-quantile, q = (total − count + ½)/total (largest) or (count − ½)/total.
    The sample's rows are clusters, so the standard error of a fraction is estimated across
    rows: se = max(std_r(f_r)/√r, √(q(1−q)/s)), f_r = the fraction of row r below the sample's
    q-quantile, s = sample size. [lo, hi] = the sample's quantiles at q ∓ (SELECT_Z·se + 1/s);
    lo = 0 or hi = +inf where that runs off the sample (the values are ≥ 0)."""
    import numpy as np

    x = sample.cpu().numpy()
    s = x.size
    q = ((total - count + 0.5) if largest else (count - 0.5)) / total
    flat = x.reshape(-1)
    i_est = min(s - 1, int(q * s))
    est = np.partition(flat, i_est)[i_est]
    frac = (x < est).mean(axis=1)
    se = max(float(frac.std(ddof=1)) / math.sqrt(len(frac)) if len(frac) > 1 else 1.0, math.sqrt(q * (1 - q) / s))
    d = SELECT_Z * se + 1.0 / s
    i_lo, i_hi = math.floor((q - d) * s), math.ceil((q + d) * s)
    kth = [i for i in (i_lo, i_hi) if 0 <= i < s]
    part = np.partition(flat, kth) if kth else flat
    lo = float(part[i_lo]) if i_lo >= 0 else 0.0
    hi = float(part[i_hi]) if i_hi < s else math.inf
    return lo, hi


def _count_selected_in_bracket(
    chunks: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]],
    count: int, largest: bool, lo: float, hi: float, cap: int,
) -> int | None:
    """Exact |S ∩ M| in one pass when the boundary of S (the ``count`` largest/smallest values)
    lies in [lo, hi]; None when it does not or when more than ``cap`` values fall inside.

    Over the chunks (flat non-negative float32 values, bool mask, in position order): values
    beyond the bracket (> hi for largest, < lo for smallest) are all in S: count them and their
    mask hits; values inside [lo, hi] are kept with their mask bits, in position order. If the
    values beyond number b ≤ count ≤ b + |candidates|, S is those b plus the ``count − b``
    largest (smallest) candidates, ties in position order (:func:`_count_selected_in_memory` on
    the candidates), the same set as a stable sort of everything gives. Memory: one chunk and
    the candidates (5 bytes each, at most ``cap``). Numpy or torch ops (:func:`_on_host`)."""
    import numpy as np

    beyond = hits = kept = 0
    cand_vals, cand_mask = [], []
    ops = None
    for vals, mask in chunks():
        if ops is None:  # two bool buffers of a chunk's size, reused (fresh ones fault their pages in)
            host = _on_host(vals)
            ops = _chunk_ops(host)
            out_buf, band_buf = ops["bools"](len(vals), vals), ops["bools"](len(vals), vals)
        if host:
            vals, mask = vals.numpy(), mask.numpy()
        size = len(vals)
        out, band = out_buf[:size], band_buf[:size]
        if largest:
            ops["gt"](vals, hi, out=out)
        else:
            ops["lt"](vals, lo, out=out)
        b = int(ops["nnz"](out))
        if b:
            beyond += b
            if beyond > count:  # the boundary is beyond the bracket
                return None
            hits += int(ops["nnz"](ops["and_"](out, mask, out=band)))
        if largest:
            ops["ge"](vals, lo, out=band)
        else:
            ops["le"](vals, hi, out=band)
        idx = ops["where"](ops["xor"](band, out, out=band))  # lo <= value <= hi (out lies inside)
        kept += len(idx)
        if kept > cap:  # too many candidates (a mass of ties, or a wide bracket)
            return None
        cand_vals.append(ops["to_host"](vals[idx]))
        cand_mask.append(ops["to_host"](mask[idx]))
    if beyond + kept < count:  # the boundary is short of the bracket
        return None
    if count == beyond:
        return hits
    return hits + _count_selected_in_memory(np.concatenate(cand_vals), np.concatenate(cand_mask), count - beyond, largest)


def count_selected(
    rows: Callable[[object, torch.Tensor], torch.Tensor], mask: torch.Tensor, count: int, largest: bool
) -> int:
    """Exact |S ∩ M|, S = the ``count`` largest (smallest) entries of the m×n non-negative float32
    matrix whose rows ``rows(index, out)`` writes into the float32 buffer ``out`` (ties in
    position order). One pass over row chunks inside a bracket estimated from a strided sample
    of 1/32 of the rows (:func:`_selection_bracket`, :func:`_count_selected_in_bracket`); when the
    sample missed or the bracket held too many values, the three-pass radix select
    (:func:`_count_selected_in_mask`). One chunk buffer is reused throughout (a fresh 16 MB
    buffer per chunk costs its page faults every time)."""
    m, n = mask.shape
    if count <= 0:
        return 0
    step = min(m, chunk_rows(n))
    buf = torch.empty(step, n, device=mask.device)

    def chunks():
        for start in range(0, m, step):
            vals = rows(slice(start, start + step), buf[: min(step, m - start)])
            yield vals.reshape(-1), mask[start : start + step].reshape(-1)

    part, lo_s, hi_s = SELECT_SAMPLE
    r = min(m, max(1, math.ceil(min(hi_s, max(lo_s, m * n // part)) / n)))
    sample = rows((2 * torch.arange(r, device=mask.device) + 1) * m // (2 * r), torch.empty(r, n, device=mask.device))
    lo, hi = _selection_bracket(sample, m * n, count, largest)
    del sample
    part, floor, ceiling = SELECT_CANDIDATES
    cap = min(ceiling, max(floor, m * n // part))
    hits = _count_selected_in_bracket(chunks, count, largest, lo, hi, cap)
    if hits is not None:
        return hits
    return _count_selected_in_mask(chunks, count, largest)
