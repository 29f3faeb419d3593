"""The breakdown of one step's memory by component, the figures read off it, and the
vocabulary that measurement and estimation share (units, names, dtype and input checks).

Definitions (the same in :func:`measure` and :func:`estimate`):

- **activations**: the bytes of the distinct storages that autograd saves during the forward
  pass (counted with ``torch.autograd.graph.saved_tensors_hooks``), i.e. what is held when
  backward starts. Tensors that share a storage (views) count once; the model's own
  parameters and buffers are not activations. The input ids and labels that the loss and the
  embedding save do count (they are saved tensors).
- **recompute** (gradient checkpointing only): with checkpointing the forward saves only each
  block's input; during backward each block is re-run and its saved tensors live until its
  backward is done. ``recompute`` is the largest one block's saved bytes. Peak model:
  ``activations + recompute`` is an upper bound of what saved tensors occupy at any time in
  the backward (the block inputs still held plus one block's worth). Neither function counts
  the transient tensors of backward itself (incoming gradients, temporaries) or allocator
  overhead; on CUDA, :func:`measure` reports the allocator's peak beside the count.
- **optimizer**: every tensor in ``optimizer.state`` (distinct storages), after one step.

Imports torch and :mod:`labkit.models` (configs by name); no other labkit module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch

from labkit import models

#: The four components of the stacked bars, in drawing order.
COMPONENTS = ("weights", "gradients", "optimizer", "activations")
METHODS = ("full", "lora", "qlora")
ESTIMATED_OPTIMIZERS = ("sgd", "sgd_momentum", "adamw", "paged_adamw", "adamw8bit")
#: The linear layers of a block, by name: LoRA / QLoRA targets the estimator understands.
BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FLOAT_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}
GB = 10**9
MB = 10**6
#: GPU memory is sold in binary units: an "80 GB" card holds 80 GiB = 80 * 2^30 bytes.
GiB = 2**30
MiB = 2**20


# --------------------------------------------------------------------------- the breakdown


@dataclass
class MemoryBreakdown:
    """Bytes held by one training step, by component; :func:`measure` and :func:`estimate`.

    Attributes:
        weights: parameters + 4-bit quantization state + buffers.
        gradients: gradients of the trainable parameters.
        optimizer: optimizer state (and an fp32 master copy, if any).
        activations: tensors saved for backward by the forward pass (see the module doc).
        recompute: with gradient checkpointing, one block's saved tensors during backward.
        weights_by_dtype: ``weights`` split by dtype name, ``"4bit"`` (packed codes),
            ``"quant_state"`` and ``"buffers"``.
        terms: named terms (``"activations/probs"``...) that add up to the components.
        peak_allocated: on CUDA, ``torch.cuda.max_memory_allocated`` over the step.
    """

    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    recompute: int = 0
    weights_by_dtype: dict[str, int] = field(default_factory=dict)
    terms: dict[str, int] = field(default_factory=dict)
    peak_allocated: int | None = None
    label: str = ""

    @property
    def total(self) -> int:
        """weights + gradients + optimizer + activations + recompute."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.recompute

    def stack(self, separate_recompute: bool = False) -> dict[str, int]:
        """The components of a stacked bar. By default four, with ``recompute`` added to
        the activations (both are saved tensors); ``separate_recompute=True`` adds a fifth
        part ``"recompute"`` and leaves ``"activations"`` as the forward's saved tensors."""
        if separate_recompute:
            return {"weights": self.weights, "gradients": self.gradients,
                    "optimizer": self.optimizer, "activations": self.activations,
                    "recompute": self.recompute}
        return {"weights": self.weights, "gradients": self.gradients,
                "optimizer": self.optimizer, "activations": self.activations + self.recompute}

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["total"] = self.total
        return d

    def table(self, unit: str = "MB") -> str:
        """A small text table in MB (1 decimal) or GB (2 decimals)."""
        if unit not in ("MB", "GB"):
            raise ValueError(f"unit must be 'MB' or 'GB', got {unit!r}")
        div, fmt = {"MB": (MB, "{:10.1f}"), "GB": (GB, "{:10.2f}")}[unit]
        rows = [("weights", self.weights), ("gradients", self.gradients),
                ("optimizer", self.optimizer), ("activations", self.activations)]
        if self.recompute:
            rows.append(("recompute", self.recompute))
        rows.append(("total", self.total))
        if self.peak_allocated is not None:
            rows.append(("CUDA peak", self.peak_allocated))
        head = f"{self.label}\n" if self.label else ""
        return head + "\n".join(f"{k:<12}{fmt.format(v / div)} {unit}" for k, v in rows)

    def __str__(self) -> str:
        return self.table()


# --------------------------------------------------------------------------- read off a breakdown


def fits(breakdown: MemoryBreakdown, device_gib: float) -> bool:
    """Whether the total fits in ``device_gib`` GiB (2^30 bytes) of device memory.

    GPU memory is sold in binary units: an "80 GB" A100 has 80 GiB (``nvidia-smi``: 81920
    MiB), 85.9 * 10^9 bytes, while the estimates count GB = 10^9 bytes. So
    ``fits(b, 80)`` compares ``b.total`` with 80 * 2^30 bytes. Nothing is subtracted for
    the CUDA context, library workspaces or allocator rounding (a few hundred MB that no
    tensor count sees): a fit by less than that is a fit on paper only.
    """
    if not device_gib > 0:
        raise ValueError(f"device_gib must be > 0 (GiB of device memory), got {device_gib!r}")
    return breakdown.total <= device_gib * GiB


def dominant(breakdown: MemoryBreakdown) -> str:
    """The component of :meth:`MemoryBreakdown.stack` that holds the most bytes."""
    st = breakdown.stack()
    return max(st, key=st.get)


def bytes_per_param(breakdown: MemoryBreakdown, n_params: int) -> dict[str, float]:
    """Each component of the stack divided by the model's parameter count."""
    _positive_int("n_params", n_params)
    return {k: v / n_params for k, v in breakdown.stack().items()}


# --------------------------------------------------------------------------- input checks


def _dtype(value, what: str, allowed: dict) -> torch.dtype:
    if isinstance(value, torch.dtype) and value in allowed.values():
        return value
    if isinstance(value, str) and value.lower() in allowed:
        return allowed[value.lower()]
    raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(allowed)}")


def _nbytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


def _positive_int(name: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int (> 0), got {v!r}")
    return v


def _get_config(config):
    if isinstance(config, models.ModelConfig):
        return config
    if isinstance(config, dict):
        need = ("vocab_size", "hidden_size", "intermediate_size", "n_layers", "n_heads")
        missing = [k for k in need if k not in config]
        if missing:
            raise ValueError(f"config is missing field(s) {missing}; a ModelConfig needs "
                             f"{list(need)} (n_kv_heads, max_seq_len... have defaults)")
        return models.ModelConfig.from_dict(config)
    if isinstance(config, str):
        return models.get_config(config)
    need = ("vocab_size", "hidden_size", "intermediate_size", "n_layers", "n_heads")
    missing = [k for k in need if not hasattr(config, k)]
    if missing:
        raise ValueError(f"config {type(config).__name__} is missing field(s) {missing}; pass "
                         "a labkit.models.ModelConfig, a registered name or a dict")
    fields = [f.name for f in dataclasses.fields(models.ModelConfig)]
    return models.ModelConfig(**{k: getattr(config, k) for k in fields if hasattr(config, k)})


def _targets(targets) -> tuple[str, ...]:
    if targets in ("all-linear", "all_linear", None):
        return BLOCK_LINEARS
    if isinstance(targets, str):
        targets = [targets]
    bad = [t for t in targets if t not in BLOCK_LINEARS]
    if bad or not targets:
        raise ValueError(f"unknown LoRA target(s) {bad or targets!r}; the estimator knows the "
                         f"block linears {', '.join(BLOCK_LINEARS)} (or 'all-linear')")
    return tuple(dict.fromkeys(targets))

