"""Check a written curvature run's G eigenpairs with the other code path (SPEC §9).

Reads ``OUT/curvature.json`` and the directions of ``OUT/curvature.npz`` one column at a time
(the member is read in place, never loaded whole: SmolLM2's is 10.8 GB), applies the
parameter-space GGN product G v (JVP, H_z, VJP) on the same probes, and prints for each chosen
direction its norm, vᵀGv against the reported λ, and ‖G v − λ v‖ against the reported residual.
A function-space run computed neither G v nor these residuals this way, so agreement is a check.

    PYTHONPATH=src python bench/check_curvature_real.py OUT --model MODEL --probes P.jsonl --limit 32
"""

from __future__ import annotations

import argparse
import json
import time
import zipfile

import numpy as np
import torch


def column(zf: zipfile.ZipFile, name: str, rows: int, j: int) -> torch.Tensor:
    """Column j of the P × r member ``name`` (Fortran order, as the streamed route writes it)."""
    with zf.open(f"{name}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(fh)
        if shape[0] != rows or not fortran or dtype != np.float64:
            raise SystemExit(f"{name}: expected a Fortran-ordered {rows} × r float64 array, got {shape} {dtype} "
                             f"fortran={fortran}")
        fh.seek(fh.tell() + j * rows * 8)
        return torch.from_numpy(np.frombuffer(fh.read(rows * 8), dtype="<f8").copy())


def main() -> None:
    from deltalens.curvature import CurvatureProducts
    from deltalens.curvature.run import _encode, load_for_curvature
    from deltalens.kernel.run import Loading

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="a deltalens curvature output folder")
    parser.add_argument("--model", required=True)
    parser.add_argument("--probes", required=True)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--columns", default="0,1,-1", help="directions to check (0-based, comma-separated)")
    args = parser.parse_args()
    report = json.load(open(f"{args.out}/curvature.json"))
    g = report["gauss_newton"]
    net, tok = load_for_curvature(args.model)
    batch, _ = _encode(net, tok, args.probes, Loading(None, False, args.limit))
    products = CurvatureProducts(net, batch)
    zf = zipfile.ZipFile(f"{args.out}/curvature.npz")
    top = len(g["eigenvalues"])
    for j in (int(c) % top for c in args.columns.split(",")):
        v = column(zf, "gauss_newton", products.dim, j)
        started = time.perf_counter()
        gv = products.ggn_vp(v)
        lam, rq = g["eigenvalues"][j], float(v @ gv)
        print(f"v{j + 1}: |v| {float(v.norm()):.6f}  vᵀGv {rq:.6g} vs λ {lam:.6g} (relative {abs(rq - lam) / abs(lam):.1e}); "
              f"‖Gv − λv‖ {float((gv - lam * v).norm()):.3g} vs reported {g['residuals'][j]:.3g} "
              f"({time.perf_counter() - started:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
