"""Merging a model's adapters into its base weights, and taking them out again.

:func:`merge_lora` folds the active adapter of every LoRA layer into the base weight
(``W + s B A``; DoRA: ``m * (W + s B A) / ||W + s B A||_c``), :func:`unmerge_lora` undoes it,
:func:`merged_state_dict` returns the merged weights under the base model's own keys without
changing the model, and :func:`unload_lora` replaces every LoRA layer by its (merged) base.
Every check runs on every layer before the first weight changes.

Imports: torch, ``labkit.lora.guard`` and ``labkit.lora.inject`` (the layers, the configs).
"""

from __future__ import annotations

from labkit._deps import torch  # one clear line when torch is missing

from torch import nn

from labkit.lora.guard import _check_mergeable
from labkit.lora.inject import _configs, _layers_or_raise


def merge_lora(model: nn.Module) -> None:
    """Merge the active adapter into the base weights of every LoRA layer (see ``merge``).

    Raises (all checked on every layer before any weight changes):
        RuntimeError: some layer is merged already, or adapters are disabled.
        ValueError / TypeError: an update holds NaN or inf, or a base layer has no dense
            float weight to merge into (the message names the layer).
    """
    layers = _layers_or_raise(model)
    if merged := [lay.merged_adapter for _, lay in layers if lay.merged]:
        raise RuntimeError(f"adapter {merged[0]!r} is already merged into the model; "
                           "unmerge_lora(model) before merging again")
    if not all(lay.adapters_enabled for _, lay in layers):
        raise RuntimeError("adapters are disabled; enable_adapters(model) before merging")
    active = [(path, lay) for path, lay in layers if lay.active_adapter is not None]
    _check_mergeable(active)
    for _, lay in active:
        lay.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora`."""
    layers = [lay for _, lay in _layers_or_raise(model) if lay.merged]
    if not layers:
        raise RuntimeError("nothing to unmerge: no adapter is merged in this model")
    for lay in layers:
        lay.unmerge()


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the *base* architecture with the active adapters folded in.

    Keys are those of the model before ``add_lora`` (no ``base_layer``, no ``lora_*``),
    so the result loads into a plain copy of the base model with ``load_state_dict``.
    The model itself is not changed.
    """
    layers = dict(_layers_or_raise(model))
    out = {}
    for key, t in model.state_dict().items():
        parts = key.split(".")
        owner = next((".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)
                      if ".".join(parts[:i]) in layers), None)
        if owner is not None:
            lay, rest = layers[owner], key[len(owner) + 1:]
            if rest.split(".")[0] in lay.adapter_kinds:
                continue
            rest = rest.removeprefix("base_layer.")
            key = f"{owner}.{rest}"
            if rest == "weight" and lay._use_adapter():
                name, w, delta = lay._mergeable(where=f"layer {owner!r}")
                t = lay._merged_weight(name, w, delta)
                t = t.T if lay.fan_in_fan_out else t
        out[key] = t.detach().clone()
    return out


def unload_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace every LoRA layer by its base layer (merging the active adapter first when
    ``merge``). Parameters stay frozen; ``model.requires_grad_(True)`` to train them all.
    """
    layers = _layers_or_raise(model)
    if merge:
        _check_mergeable([(n, lay) for n, lay in layers if lay._use_adapter()])
    for name, lay in layers:
        if merge and lay._use_adapter():
            lay.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, lay.base_layer)
    _configs(model).clear()
    return model
