"""What every LoRA layer shares: :class:`LoRALayer`, the named-adapter bookkeeping.

A LoRA layer wraps a frozen base layer and holds one or more named adapters (PEFT's
layout: a dict per hyper-parameter and a ``ModuleDict`` / ``ParameterDict`` per adapter
tensor, keyed by adapter name). This module owns what does not depend on the kind of base
layer: adding an adapter (hyper-parameters, scaling, the ``init`` and ``use_dora`` variants),
switching, enabling and disabling, deleting, and merging ``s * B A`` into the base weight
and out again (through the hooks :meth:`LoRALayer.base_weight` /
``_write_base_weight``, which a 4-bit base overrides). The concrete layers,
:class:`labkit.lora.LoRALinear` and :class:`labkit.lora.LoRAEmbedding`, are in
:mod:`labkit.lora.layers`.

Imports: torch, ``labkit._deps``, ``labkit.lora.guard`` (the checks), ``labkit.lora.dora``
(DoRA's magnitude and merge) and ``labkit.lora.init`` (the initialisations).
"""

from __future__ import annotations

import math

from labkit._deps import torch  # one clear line when torch is missing

from torch import nn

from labkit.lora import dora
from labkit.lora.guard import _check_adapter_name, _check_finite, _check_hparams
from labkit.lora.init import check_init, init_adapter


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
                    use_rslora: bool = False, use_dora: bool = False,
                    init: str = "default") -> None:
        """Create adapter ``name`` (``A``, ``B``, scaling) and make it the active one.

        Scaling ``s = alpha / r`` (paper, section 4.1), or ``alpha / sqrt(r)`` with rsLoRA
        (Kalajdzievski, 2023), which keeps the update's size stable as ``r`` grows.
        ``init`` picks the starting values (:mod:`labkit.lora.init`; ``"pissa"`` also
        rewrites the base weight), then ``use_dora`` adds DoRA's magnitude vector
        (:mod:`labkit.lora.dora`), computed from the weight as it now is.

        Raises:
            ValueError: bad ``r`` / ``alpha`` / ``dropout`` / ``init``, ``name`` already
                exists here, or DoRA / PiSSA on a layer that has none (an embedding).
            TypeError: PiSSA on a base without a float weight (a 4-bit one).
        """
        _check_hparams(r, alpha, dropout)
        _check_adapter_name(name)
        if name in self.r:
            raise ValueError(
                f"this layer already has a LoRA adapter named {name!r}; pass another "
                "adapter_name to add a second adapter, or delete_adapter() the old one first"
            )
        check_init(init, self)
        if use_dora:
            dora.check_dora(self)
        self._create_adapter(name, r, dropout)  # after the checks: nothing changed if refused
        self.r[name] = r
        self.lora_alpha[name] = alpha
        self.use_rslora[name] = bool(use_rslora)
        self.scaling[name] = alpha / math.sqrt(r) if use_rslora else alpha / r
        init_adapter(self, name, init)
        if use_dora:
            dora.init_magnitude(self, name)
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
            if name in getattr(self, kind):  # a DoRA magnitude only where use_dora
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

    def _merged_weight(self, name: str, w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The base weight with adapter ``name`` folded in: ``W + s B A`` (DoRA: its own)."""
        if name in getattr(self, dora.MAGNITUDE, {}):
            return dora.merged_weight(self, name, w, delta)
        return w + delta.to(w.dtype)

    def _unmerged_weight(self, name: str, w: torch.Tensor) -> torch.Tensor:
        if name in getattr(self, dora.MAGNITUDE, {}):
            return dora.unmerged_weight(self, name, w)
        return w - self.delta_weight(name).to(w.dtype)

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
        self._write_base_weight(self._merged_weight(name, w, delta))
        self.merged_adapter = name
        self.active_adapter = name

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged adapter from the base weight again (inverse of :meth:`merge`)."""
        if not self.merged:
            raise RuntimeError("nothing to unmerge: no adapter is merged into this layer")
        self._write_base_weight(self._unmerged_weight(self.merged_adapter, self.base_weight()))
        self.merged_adapter = None

    def extra_repr(self) -> str:
        parts = [f"{n}: r={self.r[n]}, alpha={self.lora_alpha[n]}, scaling={self.scaling[n]:.4g}"
                 + (", dora" if n in getattr(self, dora.MAGNITUDE, {}) else "") for n in self.r]
        return (f"adapters=[{'; '.join(parts)}], active={self.active_adapter!r}, "
                f"merged={self.merged_adapter!r}")
