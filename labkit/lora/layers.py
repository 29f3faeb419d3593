"""LoRA layers: a frozen base layer plus trainable low-rank adapters.

A frozen weight ``W`` (shape ``(d, k)``: ``d`` outputs, ``k`` inputs) gets a trainable
low-rank update (Hu et al., 2021, arXiv:2106.09685, section 4.1)::

    h = W x + s * B A x        A: (r, k), B: (d, r), r << min(d, k), s = alpha / r

This module holds :class:`LoRALayer` (named adapters, switching, enable/disable,
merging), :class:`LoRALinear` (``nn.Linear``, linear-like bases and GPT-2's ``Conv1D``)
and :class:`LoRAEmbedding`. Attribute names are PEFT's (``base_layer``, ``lora_A``, ...).

Imports: torch, ``labkit._deps`` and ``labkit.lora.guard`` (the checks) only.
"""

from __future__ import annotations

import math

from labkit._deps import torch  # one clear line when torch is missing

import torch.nn.functional as F
from torch import nn

from labkit.lora.guard import _check_adapter_name, _check_finite, _check_hparams

# --------------------------------------------------------------------------- layers


def _is_conv1d(mod: nn.Module) -> bool:
    """GPT-2's ``transformers.pytorch_utils.Conv1D``: a linear layer, weight ``(in, out)``."""
    w = getattr(mod, "weight", None)
    return (type(mod).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2
            and getattr(mod, "nf", None) == w.shape[1])


class LoRALayer(nn.Module):
    """What every LoRA layer shares: named adapters, switching, enable/disable, merging.

    Several adapters may live on one base layer (a dict per hyper-parameter, keyed by
    adapter name, as in PEFT); one of them is active at a time. Subclasses create the
    adapter tensors (:meth:`_create_adapter`), compute ``delta_weight`` and run forward.

    Merging adds ``delta_weight()`` into the base weight through two hooks,
    :meth:`base_weight` and :meth:`_write_base_weight`. A base that is not a dense float
    weight (the 4-bit base of QLoRA) overrides both: dequantize in ``base_weight``, and in
    ``_write_base_weight`` re-quantize or raise a clear error.
    """

    adapter_kinds: tuple[str, ...] = ()  # names of the ModuleDict/ParameterDict attributes
    fan_in_fan_out = False  # True when the base stores its weight as (in, out): GPT-2's Conv1D

    def __init__(self, base: nn.Module):
        super().__init__()
        if isinstance(base, LoRALayer):
            raise TypeError(
                "base is already a LoRA layer; add a second adapter with "
                "layer.add_adapter(name, r=..., alpha=...) instead of wrapping it again"
            )
        self.base_layer = base
        for p in base.parameters():  # the whole point: the base stays frozen
            p.requires_grad_(False)
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.use_rslora: dict[str, bool] = {}
        self.active_adapter: str | None = None
        self.adapters_enabled = True
        self.merged_adapter: str | None = None

    # -- bookkeeping ---------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight, for code that reads ``layer.weight`` (tied heads)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    @property
    def adapter_names(self) -> list[str]:
        return list(self.r)

    @property
    def merged(self) -> bool:
        return self.merged_adapter is not None

    def _adapter_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        """Adapters sit on the base's device; float32 unless the base is float64.

        Half-precision bases (fp16/bf16) and 4-bit bases still get float32 adapters, as
        PEFT does by default: tiny updates to tiny matrices need the mantissa bits.
        """
        tensors = list(self.base_layer.parameters()) + list(self.base_layer.buffers())
        device = tensors[0].device if tensors else torch.device("cpu")
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
        return device, dtype

    def add_adapter(self, name: str, r: int, alpha: float, dropout: float = 0.0,
                    use_rslora: bool = False) -> None:
        """Create adapter ``name`` (``A``, ``B``, scaling) and make it the active one.

        Scaling ``s = alpha / r`` (paper, section 4.1), or ``alpha / sqrt(r)`` with rsLoRA
        (Kalajdzievski, 2023), which keeps the update's size stable as ``r`` grows.

        Raises:
            ValueError: bad ``r`` / ``alpha`` / ``dropout``, or ``name`` already exists here.
        """
        _check_hparams(r, alpha, dropout)
        _check_adapter_name(name)
        if name in self.r:
            raise ValueError(
                f"this layer already has a LoRA adapter named {name!r}; pass another "
                "adapter_name to add a second adapter, or delete_adapter() the old one first"
            )
        self._create_adapter(name, r, dropout)  # first: if it refuses, nothing has changed
        self.r[name] = r
        self.lora_alpha[name] = alpha
        self.use_rslora[name] = bool(use_rslora)
        self.scaling[name] = alpha / math.sqrt(r) if use_rslora else alpha / r
        if self.active_adapter is None or not self.merged:
            self.active_adapter = name

    def set_adapter(self, name: str | None) -> None:
        """Make adapter ``name`` the one forward uses (``None``: none of them)."""
        if name is not None and name not in self.r:
            raise KeyError(f"no adapter named {name!r} on this layer; it has {self.adapter_names}")
        if self.merged and name != self.merged_adapter:
            raise RuntimeError(
                f"adapter {self.merged_adapter!r} is merged into the base weight; "
                "unmerge() before switching adapters"
            )
        self.active_adapter = name

    def delete_adapter(self, name: str) -> None:
        if name not in self.r:
            raise KeyError(f"no adapter named {name!r} on this layer; it has {self.adapter_names}")
        if self.merged_adapter == name:
            raise RuntimeError(f"adapter {name!r} is merged; unmerge() before deleting it")
        for kind in self.adapter_kinds:
            del getattr(self, kind)[name]
        for d in (self.r, self.lora_alpha, self.scaling, self.use_rslora):
            del d[name]
        if self.active_adapter == name:
            self.active_adapter = next(iter(self.r), None)

    def enable_adapters(self, enabled: bool = True) -> None:
        """Switch the active adapter on or off (off: the layer is its base layer)."""
        if not enabled and self.merged:
            raise RuntimeError(
                f"adapter {self.merged_adapter!r} is merged into the base weight, so it cannot "
                "be switched off; unmerge() first"
            )
        self.adapters_enabled = bool(enabled)

    def _use_adapter(self) -> bool:
        return (self.adapters_enabled and self.active_adapter is not None
                and self.merged_adapter is None)

    # -- merging -------------------------------------------------------------------
    def delta_weight(self, name: str | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def base_weight(self) -> torch.Tensor:
        """The base layer's dense weight, laid out like :meth:`delta_weight`.

        This is the extension point for bases that are not a dense float weight: override
        it (and :meth:`_write_base_weight`) to dequantize, or to raise a clear error.
        """
        w = getattr(self.base_layer, "weight", None)
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise TypeError(
                f"cannot merge into a {type(self.base_layer).__name__} base: it has no dense "
                "float weight. Override base_weight() and _write_base_weight() for this base "
                "type (dequantize it), or keep the adapter unmerged."
            )
        return w.detach().T if self.fan_in_fan_out else w.detach()

    def _write_base_weight(self, new: torch.Tensor) -> None:
        self.base_layer.weight.data.copy_(new.T if self.fan_in_fan_out else new)

    def _mergeable(self, name: str | None = None, where: str = "this layer"
                   ) -> tuple[str, torch.Tensor, torch.Tensor]:
        """Everything :meth:`merge` checks, changing nothing: ``(name, W, s * B A)``."""
        name = self.active_adapter if name is None else name
        if self.merged:
            raise RuntimeError(
                f"adapter {self.merged_adapter!r} is already merged into {where}; "
                "unmerge() before merging again"
            )
        if name is None or name not in self.r:
            raise RuntimeError(
                f"no adapter to merge (asked {name!r}, {where} has {self.adapter_names})")
        if not self.adapters_enabled:
            raise RuntimeError(
                f"adapters are disabled on {where}; enable_adapters() before merging")
        w, delta = self.base_weight(), self.delta_weight(name)
        _check_finite(delta, f"adapter {name!r} on {where} (its update s * B A)",
                      "merging it would write them into the base weight, so nothing was merged. "
                      "The adapter diverged or comes from a damaged file: train it again (e.g. "
                      "with a lower learning rate) or load a good copy")
        return name, w, delta

    @torch.no_grad()
    def merge(self, name: str | None = None) -> None:
        """Fold adapter ``name`` (default: the active one) into the base: ``W += s * B A``.

        Afterwards forward costs what the base layer costs. :meth:`unmerge` subtracts the
        same product, so the round trip is exact up to float rounding.

        Raises:
            RuntimeError: an adapter is merged already, or adapters are disabled.
            ValueError: the update holds NaN or inf (the base weight stays as it was).
        """
        name, w, delta = self._mergeable(name)
        self._write_base_weight(w + delta.to(w.dtype))
        self.merged_adapter = name
        self.active_adapter = name

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged adapter from the base weight again (inverse of :meth:`merge`)."""
        if not self.merged:
            raise RuntimeError("nothing to unmerge: no adapter is merged into this layer")
        w = self.base_weight()
        self._write_base_weight(w - self.delta_weight(self.merged_adapter).to(w.dtype))
        self.merged_adapter = None

    def extra_repr(self) -> str:
        parts = [f"{n}: r={self.r[n]}, alpha={self.lora_alpha[n]}, scaling={self.scaling[n]:.4g}"
                 for n in self.r]
        return (f"adapters=[{'; '.join(parts)}], active={self.active_adapter!r}, "
                f"merged={self.merged_adapter!r}")


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
    """

    adapter_kinds = ("lora_A", "lora_B", "lora_dropout")

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, adapter_name: str = "default"):
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
        self.add_adapter(adapter_name, r, alpha, dropout, use_rslora)

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
                 use_rslora: bool = False, adapter_name: str = "default"):
        super().__init__(base)
        if not isinstance(base, nn.Embedding):
            raise TypeError(f"LoRAEmbedding wraps an nn.Embedding, got {type(base).__name__}")
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()
        self.add_adapter(adapter_name, r, alpha, dropout, use_rslora)

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

