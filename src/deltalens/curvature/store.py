"""Parameter-space directions too large to hold in memory (SPEC §9 on billion-parameter models).

r unit directions of a P-parameter model take P·r·8 bytes in float64: 10.8 GB for the top 10 of
SmolLM2-135M, 80 GB for a 1B model. When they exceed the memory budget, each direction is
written to disk as soon as it is computed (:class:`ColumnFile`: a ``.npy`` file of shape P × r in
Fortran order, so a column is one contiguous run of bytes) and every number the report needs is
computed from the files in bounded memory: the r × r Gram and cross products behind principal
angles (:func:`streamed_angles_deg`), one column at a time for the PP shares and the update share
(:func:`column_map`). :func:`write_npz` copies the files into ``curvature.npz`` without loading
them; ``numpy.load`` reads such a member as an ordinary (Fortran-ordered) P × r float64 array.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from deltalens.errors import DeltalensError
from deltalens.linalg import angles_from

ROW_BLOCK = 1 << 20  # rows per block when two column files are read side by side (8 MiB a column)


class ColumnFile:
    """A P × r float64 matrix on disk, written one column at a time, read back a column or a
    block of rows at a time. ``path`` is a ``.npy`` file (Fortran order)."""

    def __init__(self, path: str | Path, rows: int, columns: int):
        self.path, self.rows, self.columns = Path(path), int(rows), int(columns)
        self.written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb") as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": "<f8", "fortran_order": True, "shape": (self.rows, self.columns)})
            self.offset = fh.tell()

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.columns

    def append(self, column: torch.Tensor) -> None:
        """Write the next column (P float64 values)."""
        if self.written >= self.columns:
            raise DeltalensError(f"{self.path}: all {self.columns} columns are written")
        values = column.detach().to(device="cpu", dtype=torch.float64).reshape(-1).numpy()
        if values.size != self.rows:
            raise DeltalensError(f"{self.path}: a column of {values.size} values for {self.rows} rows")
        try:
            with open(self.path, "r+b") as fh:
                fh.seek(self.offset + self.written * self.rows * 8)
                fh.write(values.astype("<f8", copy=False).tobytes())
        except OSError as exc:
            raise DeltalensError(f"{self.path}: cannot write a streamed direction ({exc.strerror or exc})") from None
        self.written += 1

    def _check(self) -> None:
        if self.written != self.columns:
            raise DeltalensError(f"{self.path}: {self.written} of {self.columns} columns written")

    def column(self, j: int) -> torch.Tensor:
        """Column j as a float64 tensor (one read of P·8 bytes)."""
        self._check()
        return torch.from_numpy(np.fromfile(self.path, dtype="<f8", count=self.rows,
                                             offset=self.offset + j * self.rows * 8))

    def row_block(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop of every column: (stop − start) × r float64 (r reads)."""
        self._check()
        with open(self.path, "rb") as fh:
            cols = []
            for j in range(self.columns):
                fh.seek(self.offset + (j * self.rows + start) * 8)
                cols.append(np.frombuffer(fh.read((stop - start) * 8), dtype="<f8"))
        return torch.from_numpy(np.stack(cols, axis=1))


def row_blocks(a, start: int, stop: int) -> torch.Tensor:
    """Rows start..stop of a P × r tensor or :class:`ColumnFile`, float64."""
    return a.row_block(start, stop) if isinstance(a, ColumnFile) else a[start:stop].double()


def column_map(directions, fn: Callable[[torch.Tensor], object]) -> list:
    """``[fn(v_j) for each column]``, reading one column at a time from a :class:`ColumnFile`."""
    if isinstance(directions, ColumnFile):
        return [fn(directions.column(j)) for j in range(directions.columns)]
    return [fn(directions[:, j].double()) for j in range(directions.shape[1])]


def streamed_angles_deg(a, b, *, block: int = ROW_BLOCK) -> list[float]:
    """Principal angles (ascending, degrees) between span(a) and span(b), P × p and P × q tensors or
    :class:`ColumnFile` s, reading ``block`` rows at a time: memory O((p + q)·block), not O(P·(p + q)).

    Two passes. The first accumulates AᵀA, BᵀB and AᵀB; with their Cholesky factors R_a, R_b the
    orthonormal bases are Q_a = A R_a⁻¹, Q_b = B R_b⁻¹ and the cosines are the singular values of
    C = Q_aᵀQ_b. The second accumulates the Gram matrix of the residual Q_b − Q_a C (p ≥ q), whose
    square-rooted eigenvalues are the sines, so angles near 0 are as accurate as
    :func:`deltalens.linalg.principal_angles` gives them (sines in float64 to ~1e-8)."""
    rows = a.shape[0]
    if b.shape[0] != rows:
        raise DeltalensError(f"principal angles: {rows} and {b.shape[0]} rows")
    if a.shape[1] < b.shape[1]:
        a, b = b, a
    p, q = a.shape[1], b.shape[1]
    gaa = torch.zeros(p, p, dtype=torch.float64)
    gbb = torch.zeros(q, q, dtype=torch.float64)
    gab = torch.zeros(p, q, dtype=torch.float64)
    spans = [(s, min(rows, s + block)) for s in range(0, rows, block)]
    for start, stop in spans:
        x, y = row_blocks(a, start, stop), row_blocks(b, start, stop)
        gaa += x.T @ x
        gbb += y.T @ y
        gab += x.T @ y
    try:
        ra = torch.linalg.cholesky(gaa).T  # upper: AᵀA = R_aᵀR_a
        rb = torch.linalg.cholesky(gbb).T
    except RuntimeError:
        raise DeltalensError("principal angles: the directions are linearly dependent") from None
    ra_inv = torch.linalg.solve_triangular(ra, torch.eye(p, dtype=torch.float64), upper=True)
    rb_inv = torch.linalg.solve_triangular(rb, torch.eye(q, dtype=torch.float64), upper=True)
    cross = ra_inv.T @ gab @ rb_inv
    cosines = torch.linalg.svdvals(cross)
    gram = torch.zeros(q, q, dtype=torch.float64)
    project = ra_inv @ cross  # Q_a C = A (R_a⁻¹ C)
    for start, stop in spans:
        residual = row_blocks(b, start, stop) @ rb_inv - row_blocks(a, start, stop) @ project
        gram += residual.T @ residual
    sines = torch.linalg.eigvalsh((gram + gram.T) / 2).clamp_min(0.0).sqrt().flip(0)  # descending
    return torch.rad2deg(angles_from(cosines, sines)).tolist()


class DirectionStore:
    """Where a run's streamed directions live: ``folder`` (created on first use, removed by
    :meth:`cleanup`), one :class:`ColumnFile` per array name."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.files: dict[str, ColumnFile] = {}

    def open(self, name: str, rows: int, columns: int) -> ColumnFile:
        if name in self.files:
            raise DeltalensError(f"direction store: '{name}' is already open")
        column_file = ColumnFile(self.folder / f"{len(self.files)}.npy", rows, columns)
        self.files[name] = column_file
        return column_file

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def write_npz(fh, arrays: Mapping[str, object]) -> None:
    """``numpy.savez`` into the open binary file ``fh`` for tensors and :class:`ColumnFile` s alike:
    a tensor is written with ``numpy.lib.format.write_array``, a column file's bytes are copied
    (never loaded whole). Members are stored uncompressed, as ``numpy.savez`` stores them."""
    with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                if isinstance(value, ColumnFile):
                    value._check()
                    with open(value.path, "rb") as src:
                        shutil.copyfileobj(src, member, 16 << 20)
                else:
                    array = value.double().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
                    np.lib.format.write_array(member, array, allow_pickle=False)
