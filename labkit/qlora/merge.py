"""Merging adapters into a 4-bit base, and exporting a merged 16-bit model.

Adding ``s * B A`` to a 4-bit weight means dequantizing it, adding, and *re-quantizing*,
which rounds a second time: :func:`merge_qlora` does it and measures, layer by layer, how
large that rounding error is next to the update itself (:class:`MergeReport`).
:func:`unmerge_qlora` restores the 4-bit weights saved at merge time, bit for bit. To keep
everything the adapter learnt, export instead a merged model in 16 bits
(:func:`merged_16bit_state_dict`, :func:`save_merged_16bit`): ``dequant(W4) + s * B A``,
rounded once, to bf16.

:class:`QLoRALinear` lives here because merging is all that sets it apart from
:class:`labkit.lora.LoRALinear`; :func:`labkit.qlora.prepare_qlora` switches the LoRA
layers it adds to this class (``_as_qlora``).

Imports from labkit: :mod:`labkit.qlora.linear4bit` (the 4-bit layers), :mod:`labkit.lora`
(the LoRA layers).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch
from safetensors.torch import save_file
from torch import nn

from labkit.lora import LoRALayer, LoRALinear, _check_finite, _check_mergeable, lora_layers
from labkit.qlora.linear4bit import Linear4bit, _bnb_from_linear, dequantize_weight, is_4bit

# --------------------------------------------------------------------------- merging into 4 bits


class QLoRALinear(LoRALinear):
    """A :class:`labkit.lora.LoRALinear` whose base is a 4-bit layer (either back end).

    Forward is LoRALinear's. Merging is what changes: the base has no float weight to add
    ``s * B A`` to, so :meth:`merge` dequantizes it, adds the update and *re-quantizes*,
    which rounds again: the merged layer is not exactly the adapted one
    (:func:`merge_qlora` measures by how much). :meth:`unmerge` restores the 4-bit weight
    saved at merge time, bit for bit, instead of subtracting (which would round a third
    time).
    """

    def base_weight(self) -> torch.Tensor:
        return dequantize_weight(self.base_layer)

    def _write_base_weight(self, new: torch.Tensor) -> None:
        self.base_layer = _requantized(self.base_layer, new)

    @torch.no_grad()
    def merge(self, name: str | None = None) -> None:
        saved = copy.deepcopy(self.base_layer)  # 4-bit: half a byte a weight
        super().merge(name)
        self.__dict__["_premerge"] = saved  # not a submodule: stays out of the state dict

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            raise RuntimeError("nothing to unmerge: no adapter is merged into this layer")
        saved = self.__dict__.pop("_premerge", None)
        if saved is None:  # merged by labkit.lora.merge on a plain LoRALinear: subtract
            super().unmerge()
            return
        self.base_layer = saved
        self.merged_adapter = None


def _requantized(layer: nn.Module, w: torch.Tensor) -> nn.Module:
    """A new 4-bit layer like ``layer`` (same back end and format) holding weight ``w``."""
    dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                      device="meta")
    dense.weight = nn.Parameter(w.detach().to(_orig_dtype(layer)), requires_grad=False)
    if layer.bias is not None:
        dense.bias = layer.bias
    if isinstance(layer, Linear4bit):
        return Linear4bit.from_linear(dense, layer.quant_type, layer.double_quant,
                                      layer.blocksize, layer.compute_dtype)
    p = layer.weight
    return _bnb_from_linear(dense, p.quant_type, p.compress_statistics, p.blocksize,
                            layer.compute_dtype)


def _orig_dtype(layer: nn.Module) -> torch.dtype:
    if isinstance(layer, Linear4bit):
        return layer.weight_dtype
    return layer.weight.quant_state.dtype


def _as_qlora(model: nn.Module) -> list[tuple[str, QLoRALinear]]:
    """Give every LoRA layer on a 4-bit base the QLoRA merge logic.

    ``add_lora`` builds :class:`LoRALinear` layers; a :class:`QLoRALinear` is the same
    object with two merge methods more and no extra state, so the class is switched in
    place rather than the layers rebuilt (keeping the optimizer's parameters the same).
    """
    out = []
    for name, lay in lora_layers(model):
        if type(lay) is LoRALinear and is_4bit(lay.base_layer):
            lay.__class__ = QLoRALinear
        if isinstance(lay, QLoRALinear):
            out.append((name, lay))
    return out


@dataclass
class MergeRow:
    layer: str
    rms_update: float  # rms of s * B A
    rms_rounding: float  # rms of (re-quantized merged weight - exact merged weight)

    @property
    def ratio(self) -> float:
        """Rounding error relative to the update itself (1.0: as large as the update)."""
        return self.rms_rounding / self.rms_update if self.rms_update else math.inf


@dataclass
class MergeReport:
    """What merging adapters into a 4-bit base cost, layer by layer."""

    rows: list[MergeRow]

    @property
    def mean_ratio(self) -> float:
        return sum(r.ratio for r in self.rows) / len(self.rows)

    def __str__(self) -> str:
        lines = [f"{'layer':<36} {'rms update':>11} {'rms rounding':>13} {'ratio':>6}"]
        lines += [f"{r.layer:<36} {r.rms_update:>11.2e} {r.rms_rounding:>13.2e} {r.ratio:>6.2f}"
                  for r in self.rows]
        return "\n".join(lines)


def _rms(t: torch.Tensor) -> float:
    return t.float().pow(2).mean().sqrt().item()


@torch.no_grad()
def merge_qlora(model: nn.Module) -> MergeReport:
    """Merge the active adapters into the 4-bit bases (dequantize, add, re-quantize).

    Returns:
        A :class:`MergeReport`: per layer, the size of the update ``s * B A`` and of the
        rounding error that re-quantizing the merged weight adds. When the error is
        comparable to the update, a merged 4-bit model has lost much of what the adapter
        learnt: keep the adapter unmerged, or export a 16-bit merged model instead
        (:func:`merged_16bit_state_dict`).

    Raises:
        ValueError: the model has no QLoRA layers, or an update holds NaN or inf (checked
            on every layer before any is merged).
        RuntimeError: as :func:`labkit.lora.merge_lora` (merged already, disabled).
    """
    layers = _as_qlora(model)
    if not layers:
        raise ValueError("the model has no LoRA layers on a 4-bit base; use prepare_qlora() "
                         "first (or labkit.lora.merge_lora for a full-precision base)")
    if merged := [n for n, lay in layers if lay.merged]:
        raise RuntimeError(f"layers {merged[:3]} are merged already; unmerge_qlora(model) first")
    layers = [(n, lay) for n, lay in layers if lay.active_adapter is not None
              and lay.adapters_enabled]
    _check_mergeable(layers)  # NaN / inf in an update: refused, naming the layer, unmerged
    rows = []
    for name, lay in layers:
        delta = lay.delta_weight().float()
        exact = lay.base_weight() + delta
        lay.merge()
        rows.append(MergeRow(name, _rms(delta), _rms(lay.base_weight() - exact)))
    return MergeReport(rows)


@torch.no_grad()
def unmerge_qlora(model: nn.Module) -> None:
    """Undo :func:`merge_qlora`: restore the 4-bit weights saved at merge time exactly."""
    layers = [lay for _, lay in _as_qlora(model) if lay.merged]
    if not layers:
        raise RuntimeError("nothing to unmerge: no adapter is merged in this model")
    for lay in layers:
        lay.unmerge()


# --------------------------------------------------------------------------- 16-bit export


@torch.no_grad()
def merged_16bit_state_dict(model: nn.Module, dtype: torch.dtype = torch.bfloat16
                            ) -> dict[str, torch.Tensor]:
    """The base architecture's state dict, with adapters folded in and nothing 4-bit left.

    For each 4-bit layer ``W = dequant(W4) + s * B A`` (not re-quantized: no second
    rounding), cast to ``dtype``; every other floating tensor is cast to ``dtype`` too.
    Keys are those of the model before quantization, so the result loads into a plain
    copy of it with ``load_state_dict`` (e.g. ``models.build(config)``).
    """
    layers: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoRALayer) and is_4bit(mod.base_layer):
            layers[name] = mod
        elif is_4bit(mod) and not any(name.startswith(p + ".") for p in layers):
            layers[name] = mod
    out = {}
    for key, t in model.state_dict().items():
        owner = next((p for p in layers if key.startswith(p + ".")), None)
        if owner is not None:
            continue
        if ".lora_" in f".{key}":
            continue
        out[key.replace(".base_layer.", ".")] = (t.to(dtype) if t.is_floating_point()
                                                 else t).detach().clone()
    for name, mod in layers.items():
        if isinstance(mod, LoRALayer):
            w = dequantize_weight(mod.base_layer)
            if mod._use_adapter() or mod.merged:
                if mod.merged:  # the saved pre-merge base + the update, not the rounded merge
                    w = dequantize_weight(mod.__dict__.get("_premerge", mod.base_layer))
                delta = mod.delta_weight(mod.active_adapter)
                _check_finite(delta, f"adapter {mod.active_adapter!r} on layer {name!r}",
                              "the merged export would hold them; fix or retrain the adapter")
                w = w + delta.float()
            bias = mod.base_layer.bias
        else:
            w, bias = dequantize_weight(mod), mod.bias
        out[f"{name}.weight"] = w.to(dtype).contiguous()
        if bias is not None:
            out[f"{name}.bias"] = bias.detach().to(dtype).clone()
    return out


def save_merged_16bit(model: nn.Module, path, dtype: torch.dtype = torch.bfloat16) -> int:
    """Write :func:`merged_16bit_state_dict` to a safetensors file; returns its bytes."""
    state = {k: v.contiguous().cpu() for k, v in merged_16bit_state_dict(model, dtype).items()}
    save_file(state, str(path), metadata={"format": "pt", "dtype": str(dtype)})
    return Path(path).stat().st_size
