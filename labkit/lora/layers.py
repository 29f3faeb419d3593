"""LoRA layers: a frozen base layer plus trainable low-rank adapters.

A frozen weight ``W`` (shape ``(d, k)``: ``d`` outputs, ``k`` inputs) gets a trainable
low-rank update (Hu et al., 2021, arXiv:2106.09685, section 4.1)::

    h = W x + s * B A x        A: (r, k), B: (d, r), r << min(d, k), s = alpha / r

This module holds :class:`LoRALinear` (``nn.Linear``, linear-like bases and GPT-2's
``Conv1D``) and :class:`LoRAEmbedding`; what they share (named adapters, switching,
enable/disable, merging) is :class:`LoRALayer` in :mod:`labkit.lora.base`. Attribute names
are PEFT's (``base_layer``, ``lora_A``, ...). Variants live in their own modules and plug
in per adapter: DoRA (``use_dora``, :mod:`labkit.lora.dora`) and the initialisations
(``init``, :mod:`labkit.lora.init`).

Imports: torch, ``labkit._deps``, ``labkit.lora.base`` and ``labkit.lora.dora``.
"""

from __future__ import annotations

import math

from labkit._deps import torch  # one clear line when torch is missing

import torch.nn.functional as F
from torch import nn

from labkit.lora import dora
from labkit.lora.base import LoRALayer

__all__ = ["LoRALayer", "LoRALinear", "LoRAEmbedding", "_is_conv1d"]

# --------------------------------------------------------------------------- layers


def _is_conv1d(mod: nn.Module) -> bool:
    """GPT-2's ``transformers.pytorch_utils.Conv1D``: a linear layer, weight ``(in, out)``."""
    w = getattr(mod, "weight", None)
    return (type(mod).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2
            and getattr(mod, "nf", None) == w.shape[1])


class LoRALinear(LoRALayer):
    """A frozen linear map plus a low-rank trainable update.

    ``y = base(x) + s * B(A(dropout(x)))``, with ``x: (..., k)``, ``A: (r, k)``,
    ``B: (d, r)`` and ``y: (..., d)``; ``s = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
    Example shapes for ``k = d = 512``, ``r = 8``: ``x (2, 16, 512) -> A x (2, 16, 8)
    -> B A x (2, 16, 512)``.

    Initialisation as in the paper and PEFT: ``A`` Kaiming-uniform (``a = sqrt(5)``, the
    ``nn.Linear`` default), ``B`` zeros, so ``B A = 0`` and an untrained adapter changes
    nothing. The base's bias stays in the base (frozen unless ``add_lora(bias=...)``).

    ``base`` may be any module mapping ``(..., in_features) -> (..., out_features)`` that
    has ``in_features`` / ``out_features`` attributes (e.g. a 4-bit linear); merging then
    needs :meth:`base_weight` to work for it (see :class:`LoRALayer`). GPT-2's ``Conv1D``
    (a linear layer storing its weight transposed, ``(in, out)``) works too: PEFT calls
    that ``fan_in_fan_out``; only merging needs to know.

    Args:
        base: the layer to adapt; its parameters are frozen.
        r: rank, > 0.
        alpha: scaling numerator, > 0.
        dropout: dropout on the adapter's input, in [0, 1).
        use_rslora: scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
        adapter_name: the first adapter's name.
        use_dora: DoRA (:mod:`labkit.lora.dora`): a trainable magnitude ``m`` (shape
            ``(out_features,)``) rescales each output of ``W + s B A``.
        init: ``"default"``, ``"gaussian"`` or ``"pissa"`` (:mod:`labkit.lora.init`).
    """

    adapter_kinds = ("lora_A", "lora_B", "lora_dropout", dora.MAGNITUDE)

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, adapter_name: str = "default",
                 use_dora: bool = False, init: str = "default"):
        super().__init__(base)
        k, d = getattr(base, "in_features", None), getattr(base, "out_features", None)
        if _is_conv1d(base):
            (k, d), self.fan_in_fan_out = base.weight.shape, True
        if not (isinstance(k, int) and isinstance(d, int)):
            raise TypeError(
                f"LoRALinear needs a base with int in_features/out_features (like nn.Linear); "
                f"got {type(base).__name__}"
            )
        self.in_features, self.out_features = k, d
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.lora_magnitude_vector = nn.ParameterDict()  # DoRA's m, (d,), per DoRA adapter
        self.add_adapter(adapter_name, r, alpha, dropout, use_rslora, use_dora, init)

    def _create_adapter(self, name: str, r: int, dropout: float) -> None:
        device, dtype = self._adapter_device_dtype()
        A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        if device.type != "meta":
            nn.init.kaiming_uniform_(A.weight, a=math.sqrt(5))  # A: (r, k), random
            nn.init.zeros_(B.weight)  # B: (d, r), zero -> B A = 0 at the start
        self.lora_A[name], self.lora_B[name] = A, B
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def A(self) -> torch.Tensor:
        """The active adapter's ``A`` weight, shape ``(r, in_features)``."""
        return self.lora_A[self.active_adapter].weight

    @property
    def B(self) -> torch.Tensor:
        """The active adapter's ``B`` weight, shape ``(out_features, r)``."""
        return self.lora_B[self.active_adapter].weight

    def delta_weight(self, name: str | None = None) -> torch.Tensor:
        """``s * B @ A``, shape ``(out_features, in_features)`` like ``nn.Linear.weight``."""
        name = self.active_adapter if name is None else name
        return self.scaling[name] * (self.lora_B[name].weight @ self.lora_A[name].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)  # (..., k) -> (..., d): the frozen path, W x (+ bias)
        if not self._use_adapter():  # disabled, no active adapter, or merged into W already
            return out
        name = self.active_adapter
        A = self.lora_A[name]
        # Adapters may be float32 under a bf16 or 4-bit base: compute in their dtype. Under
        # autocast the matmuls cast for themselves (to the autocast dtype, whatever x is), so
        # x goes in as it is, as PEFT does: an explicit float32 copy of every adapter input
        # would be one more activation-sized tensor per adapter (benchmarks/README.md).
        h = x if torch.is_autocast_enabled(x.device.type) else x.to(A.weight.dtype)
        if name in self.lora_magnitude_vector:  # DoRA: m * direction (labkit.lora.dora)
            return dora.dora_forward(self, name, h, out)
        h = self.lora_dropout[name](h)
        # (..., k) -A-> (..., r) -B-> (..., d): never forms the d x k product B A.
        return out + (self.lora_B[name](A(h)) * self.scaling[name]).to(out.dtype)


class LoRAEmbedding(LoRALayer):
    """A frozen ``nn.Embedding`` plus a low-rank update of its table.

    The table ``E`` is ``(num_embeddings, dim)``; the update is ``s * (B A)^T`` with
    ``A: (r, num_embeddings)`` and ``B: (dim, r)`` (PEFT's shapes). Looking up token ``t``
    adds ``s * B A[:, t]``: the lookup picks column ``t`` of ``A`` (an ``r``-vector) and
    ``B`` lifts it to ``dim``.

    Initialisation follows PEFT: ``A`` zeros and ``B`` normal, so again ``B A = 0`` at the
    start. The roles swap relative to :class:`LoRALinear` because ``A`` is indexed by
    token: the first gradient reaches only the columns of ``A`` for tokens in the batch.
    No dropout: the input is token ids, not features, so ``dropout`` must be 0 here (PEFT
    silently skips it; ``add_lora`` passes 0 to embeddings and says so in its report).
    """

    adapter_kinds = ("lora_embedding_A", "lora_embedding_B")

    def __init__(self, base: nn.Embedding, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, adapter_name: str = "default",
                 use_dora: bool = False, init: str = "default"):
        super().__init__(base)
        if not isinstance(base, nn.Embedding):
            raise TypeError(f"LoRAEmbedding wraps an nn.Embedding, got {type(base).__name__}")
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()
        self.add_adapter(adapter_name, r, alpha, dropout, use_rslora, use_dora, init)

    def _create_adapter(self, name: str, r: int, dropout: float) -> None:
        if dropout > 0:
            raise ValueError(f"dropout={dropout} does not apply to an embedding (its input is "
                             "token ids, not features); use dropout=0.0")
        device, dtype = self._adapter_device_dtype()
        A = torch.zeros(r, self.num_embeddings, device=device, dtype=dtype)
        B = torch.empty(self.embedding_dim, r, device=device, dtype=dtype)
        if device.type != "meta":
            nn.init.normal_(B)
        self.lora_embedding_A[name] = nn.Parameter(A)
        self.lora_embedding_B[name] = nn.Parameter(B)

    @property
    def A(self) -> torch.Tensor:
        return self.lora_embedding_A[self.active_adapter]

    @property
    def B(self) -> torch.Tensor:
        return self.lora_embedding_B[self.active_adapter]

    def delta_weight(self, name: str | None = None) -> torch.Tensor:
        """``s * (B @ A)^T``, shape ``(num_embeddings, embedding_dim)`` like the table."""
        name = self.active_adapter if name is None else name
        B, A = self.lora_embedding_B[name], self.lora_embedding_A[name]
        return self.scaling[name] * (B @ A).T

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(ids)
        if not self._use_adapter():
            return out
        name, base = self.active_adapter, self.base_layer
        # Look up columns of A: (..., r). padding_idx etc. behave as in the base lookup.
        a = F.embedding(ids, self.lora_embedding_A[name].T, base.padding_idx, base.max_norm,
                        base.norm_type, base.scale_grad_by_freq, base.sparse)
        return out + ((a @ self.lora_embedding_B[name].T) * self.scaling[name]).to(out.dtype)

