"""Behaviour-level comparison of two models (SPEC §7): sampling, verification, pass@k,
support, KL/entropy/cross-perplexity, suite evaluation and forgetting.

The main functions are re-exported here, so ``deltalens.behavior.verify`` (and ``passk``,
``support``, ``divergence``, ``evaluate``) is the *function*; import a module's other names with
``from deltalens.behavior.<module> import name``. Importing this package does not import torch.
"""

from __future__ import annotations

from deltalens.behavior.divergence import (answer_entropy, divergence, entropy_categorical, kl_categorical,
                                           kl_estimators, perplexity, score_sequences)
from deltalens.behavior.evaluate import evaluate, forgetting, linear_fit
from deltalens.behavior.formats import Problem, SampleSet, read_problems, read_samples
from deltalens.behavior.passk import bootstrap_ci, crossover_k, pass_at_k, pass_at_k_curve, passk, plot_passk
from deltalens.behavior.sampling import SamplingConfig, load_model, sample
from deltalens.behavior.support import support, support_from_flags, support_metrics
from deltalens.behavior.verify import MathVerifier, extract_number, get_verifier, numeric_verifier, verify

__all__ = [
    "MathVerifier", "Problem", "SampleSet", "SamplingConfig", "answer_entropy", "bootstrap_ci", "crossover_k",
    "divergence", "entropy_categorical", "evaluate", "extract_number", "forgetting", "get_verifier",
    "kl_categorical", "kl_estimators", "linear_fit", "load_model", "numeric_verifier", "pass_at_k", "pass_at_k_curve", "passk",
    "perplexity", "plot_passk", "read_problems", "read_samples", "sample", "score_sequences", "support",
    "support_from_flags", "support_metrics", "verify",
]
