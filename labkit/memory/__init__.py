"""Where training memory goes: measured on a real step, and estimated for models too big to build.

A training step holds four kinds of tensors (Rajbhandari et al., 2020, "ZeRO", sec. 3):

    weights      the parameters (and, for QLoRA, the 4-bit codes plus their quantization
                 state), plus the model's buffers (here: the rotary cos / sin tables)
    gradients    one per *trainable* parameter, in that parameter's dtype
    optimizer    the optimizer's state: AdamW keeps two moments per trainable parameter
    activations  the tensors autograd saves in the forward pass to compute the backward

:func:`measure` runs one real step and counts each kind; :func:`estimate` computes the same
breakdown from a :class:`labkit.models.ModelConfig` without allocating anything: parameter
counts come from the model built on the ``meta`` device, activation bytes from the
architecture and the pinned, written-out attention of :mod:`labkit.models`. No constant is
fitted: every term is a product of shapes and bytes per element, and the tests check the
estimate against the measurement (within 5 %, per component and in total) on the shipped
model and on a second configuration not used while writing the estimator.

Modules (each imports only the ones before it, and torch, :mod:`labkit.models`,
:mod:`labkit.quant`, :mod:`labkit.train`):

    breakdown     :class:`MemoryBreakdown` (what each component counts), :func:`fits`,
                  :func:`dominant`, :func:`bytes_per_param`, units, names, input checks
    measurement   :func:`measure`: one real step, weight and optimizer bytes, the
                  saved-tensor hooks (:class:`SavedTensorCounter`)
    activations   :func:`activation_terms`: the saved tensors of a step, op by op
    estimation    :func:`estimate` from the architecture: weights, gradients, optimizer
                  state, plus the activation terms; :func:`base_weight_bytes`
    peak          :func:`estimate_peak`: the CUDA allocator's peak of a step, the largest
                  of its moments (forward, backward, optimizer step), and what a card
                  must hold beside it (CUDA context, paged optimizer state)
    cards         :func:`will_it_fit`: named GPUs, a verdict, the settings that help

This ``__init__`` re-exports their names lazily and imports no torch itself.
"""

from labkit._api import lazy_exports

_EXPORTS = {
    ".breakdown": ["COMPONENTS", "METHODS", "ESTIMATED_OPTIMIZERS", "BLOCK_LINEARS", "FLOAT_DTYPES",
                   "GB", "MB", "GiB", "MemoryBreakdown", "fits", "dominant", "bytes_per_param"],
    ".measurement": ["weight_bytes", "model_storages", "SavedTensorCounter", "optimizer_bytes",
                     "measure", "_storage_key"],
    ".activations": ["activation_terms"],
    ".peak": ["estimate_peak", "PeakEstimate", "CUBLAS_WORKSPACE", "CUBLAS_HANDLES",
              "CUDA_CONTEXT", "PAGED_MIN_NUMEL", "LOOPS", "measured_rows"],
    ".cards": ["will_it_fit", "FitReport", "Card", "CARDS", "VERDICTS"],
    ".estimation": ["QUANT_DTYPES", "ADAM8BIT_BLOCKSIZE", "ADAM8BIT_MIN_SIZE", "estimate",
                    "base_weight_bytes"],
}
# memory.OPTIMIZERS named the optimizers the estimate models; labkit.train.OPTIMIZERS is the
# one registry of optimizers, so this tuple has a name of its own now.
_DEPRECATED = {"OPTIMIZERS": "labkit.memory.ESTIMATED_OPTIMIZERS"}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, _DEPRECATED)
