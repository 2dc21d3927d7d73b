"""Curvature: Hessian and Gauss-Newton eigenvectors against the eNTK's and the weights' (SPEC §9).

Products (:mod:`products`) never form H, G or J; Lanczos (:mod:`lanczos`) finds the top-r
eigenpairs from them; :mod:`compare` holds the comparisons with their random baselines and
:mod:`run` the library call behind ``deltalens curvature`` (one model, or a base and a tune).
"""

from deltalens.curvature.compare import (
    angles_deg,
    curvature_rescale_share,
    eigenvalue_drift,
    pp_shares,
    random_subspace_angles_deg,
    residual_term,
    update_share,
)
from deltalens.curvature.lanczos import Eigenpairs, top_eigenpairs
from deltalens.curvature.products import CurvatureProducts, eager_attention, logprob_jt, top_vocabulary, weight_factor
from deltalens.curvature.run import (
    KINDS,
    BlockCurvature,
    block_groups,
    curvature_block,
    curvature_report,
    pair_comparison,
    run_curvature,
    run_curvature_pair,
)

__all__ = [
    "KINDS",
    "BlockCurvature",
    "CurvatureProducts",
    "Eigenpairs",
    "angles_deg",
    "block_groups",
    "curvature_block",
    "curvature_rescale_share",
    "curvature_report",
    "eager_attention",
    "eigenvalue_drift",
    "logprob_jt",
    "pair_comparison",
    "pp_shares",
    "random_subspace_angles_deg",
    "residual_term",
    "run_curvature",
    "run_curvature_pair",
    "top_eigenpairs",
    "top_vocabulary",
    "update_share",
    "weight_factor",
]
