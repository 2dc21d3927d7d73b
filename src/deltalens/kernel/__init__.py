"""Function-space kernels (SPEC §6): empirical NTK, trait kernels, comparisons, alignment.

The library API works on any ``torch.nn.Module`` with an output function
``(model, batch) -> Tensor[b]`` (one scalar per example) or ``Tensor[b, m]`` (m outputs per
example: full or traced multi-output kernels), and on Hugging Face folders through the ``run_*``
drivers.
"""

from deltalens.kernel.align import alignment_share, mean_loss_gradient
from deltalens.kernel.compare import (
    compare_kernels,
    eigenvalue_log_ratios,
    kernel_alignment,
    kernel_rescale_baseline,
    kernel_rescale_share,
    kernel_spectrum,
)
from deltalens.kernel.gradients import CountSketch, per_example_gradients, trainable_parameters
from deltalens.kernel.ntk import KernelResult, default_memory_budget_mb, empirical_ntk, sketch_error_estimate
from deltalens.kernel.outputs import (
    completion_logprob,
    completion_loss,
    encode_probes,
    evaluate_outputs,
    logits_output,
    top_tokens,
)
from deltalens.kernel.structured import prefers_structured
from deltalens.kernel.run import KernelOptions, Loading, parameter_delta, run_align, run_kernel, run_trajectory
from deltalens.kernel.traits import averaging_matrix, suite_to_probes, trait_changes, trait_kernel
from deltalens.kernel.trajectory import kernel_trajectory

__all__ = [
    "CountSketch",
    "KernelOptions",
    "KernelResult",
    "Loading",
    "alignment_share",
    "averaging_matrix",
    "compare_kernels",
    "default_memory_budget_mb",
    "completion_logprob",
    "completion_loss",
    "eigenvalue_log_ratios",
    "empirical_ntk",
    "encode_probes",
    "evaluate_outputs",
    "kernel_alignment",
    "kernel_spectrum",
    "kernel_trajectory",
    "logits_output",
    "mean_loss_gradient",
    "parameter_delta",
    "per_example_gradients",
    "prefers_structured",
    "kernel_rescale_baseline",
    "kernel_rescale_share",
    "run_align",
    "run_kernel",
    "run_trajectory",
    "sketch_error_estimate",
    "top_tokens",
    "suite_to_probes",
    "trait_changes",
    "trait_kernel",
    "trainable_parameters",
]
