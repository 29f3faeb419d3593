"""Injecting LoRA into a model by target names, and managing the adapters it holds.

:func:`add_lora` wraps the layers :func:`find_targets` names (suffixes or a regex, as in
PEFT) in the layers of :mod:`labkit.lora.layers`, records each adapter's
:class:`LoRAConfig` on the model, and returns a :class:`LoRAReport`. Named adapters can
then be switched (:func:`set_adapter`), switched off (:func:`disable_adapters`,
:func:`adapters_disabled`) or deleted; merging them into the base weights is
:mod:`labkit.lora.merging`'s. The variants are switches of :func:`add_lora`: ``use_rslora``,
``use_dora`` (:mod:`labkit.lora.dora`) and ``init`` (:mod:`labkit.lora.init`).

A call that fails leaves the model as it was: inputs are checked before the first change,
and :func:`add_lora` also runs under :func:`labkit.lora.guard.unchanged_on_error`.

Imports: torch, ``labkit.lora.layers``, ``labkit.lora.init``, ``labkit.lora.guard`` and
``labkit.lora.counts``.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from labkit._deps import torch  # noqa: F401  (one clear line when torch is missing)

from torch import nn

from labkit.lora.counts import ParamCount, model_params
from labkit.lora.guard import _check_adapter_name, _check_hparams, unchanged_on_error
from labkit.lora.init import PEFT_INIT, check_init
from labkit.lora.layers import LoRAEmbedding, LoRALayer, LoRALinear, _is_conv1d

BIAS_MODES = ("none", "all", "lora_only")


@dataclass
class LoRAConfig:
    """One adapter's settings; field names are PEFT's ``LoraConfig`` names.

    ``target_modules`` is what ``add_lora`` matched with: module-name suffixes, or (for a
    regex injection) the full names of the layers it wrapped. ``init_lora_weights`` is
    PEFT's record of ``init`` (``True`` for the default, ``"gaussian"``, ``"pissa"``,
    ``"loftq"``), ``loftq_config`` PEFT's ``{"loftq_bits": 4, "loftq_iter": n}``.
    """

    r: int
    lora_alpha: float
    target_modules: list[str]
    lora_dropout: float = 0.0
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: bool | str = True
    loftq_config: dict = field(default_factory=dict)
    bias: str = "none"
    fan_in_fan_out: bool = False
    base_model_name_or_path: str | None = None
    task_type: str | None = None
    peft_type: str = "LORA"


def _configs(model: nn.Module) -> dict[str, LoRAConfig]:
    """The adapters ``add_lora`` put on ``model``, by name (kept on the model itself)."""
    return model.__dict__.setdefault("_lora_configs", {})


def _can_wrap(mod: nn.Module) -> bool:
    return isinstance(mod, (LoRALayer, nn.Embedding)) or _is_conv1d(mod) or (
        isinstance(getattr(mod, "in_features", None), int)
        and isinstance(getattr(mod, "out_features", None), int))


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Named sub-modules, skipping the insides of LoRA layers (never wrap a wrapper)."""
    out, inside = [], ()
    for name, mod in model.named_modules():
        if not name or (inside and name.startswith(inside)):
            continue
        if isinstance(mod, LoRALayer):
            inside = inside + (name + ".",)
        out.append((name, mod))
    return out


def find_targets(model: nn.Module, targets) -> list[tuple[str, nn.Module]]:
    """The layers ``targets`` names, in model order.

    Args:
        targets: a suffix or a list of suffixes of module names (``"q_proj"`` matches
            ``model.layers.0.self_attn.q_proj``; a suffix must end at a dot boundary, as
            in PEFT), or a compiled regex (``re.compile(r".*\\.[qv]_proj")``) that must
            match a full module name.

    Raises:
        ValueError: a target matches nothing (the message lists the layer names that
            exist), or matches a module LoRA cannot wrap.
    """
    cands = _candidates(model)
    wrappable = sorted({n.rsplit(".", 1)[-1] for n, m in cands if _can_wrap(m)})
    hint = f"layers LoRA can wrap here, by name: {', '.join(wrappable) or '(none)'}"
    if isinstance(targets, re.Pattern):
        hits = [(n, m) for n, m in cands if targets.fullmatch(n)]
        if not hits:
            raise ValueError(f"target pattern {targets.pattern!r} matches no module; {hint}")
    else:
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, Sequence) or not targets or not all(
                isinstance(t, str) and t for t in targets):
            raise ValueError(
                f"targets must be a non-empty list of module-name suffixes such as "
                f"['q_proj', 'v_proj'], or a compiled regex; got {targets!r}")
        missing = [t for t in targets
                   if not any(n == t or n.endswith("." + t) for n, _ in cands)]
        if missing:
            raise ValueError(f"target(s) {missing} match no module; {hint}")
        hits = [(n, m) for n, m in cands if any(n == t or n.endswith("." + t) for t in targets)]
    bad = [f"{n} ({type(m).__name__})" for n, m in hits if not _can_wrap(m)]
    if bad:
        raise ValueError(
            f"targets matched modules LoRA cannot wrap: {bad[:5]}; LoRA wraps nn.Linear, "
            "nn.Embedding, GPT-2 Conv1D or layers with in_features/out_features. "
            f"Name those instead: {hint}")
    return hits


@dataclass
class LoRAReport:
    """What ``add_lora`` did: which layers it wrapped and the parameter count after."""

    adapter_name: str
    config: LoRAConfig
    layers: list[str]
    params: ParamCount
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        kinds: dict[str, int] = {}
        for n in self.layers:
            kinds[n.rsplit(".", 1)[-1]] = kinds.get(n.rsplit(".", 1)[-1], 0) + 1
        c = self.config
        scale = c.lora_alpha / (math.sqrt(c.r) if c.use_rslora else c.r)
        extra = "".join([", DoRA" if c.use_dora else "", ", rsLoRA" if c.use_rslora else "",
                         "" if c.init_lora_weights is True else f", init {c.init_lora_weights}"])
        lines = [f"LoRA adapter {self.adapter_name!r}: r={c.r}, alpha={c.lora_alpha} "
                 f"(scaling {scale:.4g}{extra}) on {len(self.layers)} layers "
                 f"({', '.join(f'{k} x{v}' for k, v in kinds.items())})",
                 self.params.summary()]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def add_lora(model: nn.Module, targets, *, r: int, alpha: float, dropout: float = 0.0,
             use_rslora: bool = False, use_dora: bool = False, init: str = "default",
             bias: str = "none", adapter_name: str = "default") -> LoRAReport:
    """Wrap the target layers of ``model`` in LoRA layers, in place, and freeze the rest.

    Each matched ``nn.Linear`` (or linear-like layer) becomes a :class:`LoRALinear`, each
    ``nn.Embedding`` a :class:`LoRAEmbedding`. A layer that is already a LoRA layer gets
    a second, named adapter. Afterwards only the new adapter trains (plus biases, if
    ``bias`` says so), and it is the active adapter.

    Args:
        model: any ``nn.Module`` (labkit's model, a transformers model, your own).
        targets: suffixes such as ``["q_proj", "v_proj"]``, or ``re.compile(...)``
            matched against full module names (see :func:`find_targets`).
        r, alpha, dropout, use_rslora: the adapter's hyper-parameters.
        use_dora: DoRA (:mod:`labkit.lora.dora`): each wrapped linear also trains a
            magnitude vector (``out_features`` numbers). Not for embeddings.
        init: ``"default"`` (Kaiming ``A``, zero ``B``), ``"gaussian"`` or ``"pissa"``
            (:mod:`labkit.lora.init`; PiSSA rewrites the base weights to the residual).
            ``"loftq"`` quantizes the base: use :func:`labkit.qlora.prepare_qlora`.
        bias: ``"none"`` (biases frozen), ``"all"`` (every bias trains) or ``"lora_only"``
            (biases of the wrapped layers train), as in PEFT.
        adapter_name: name of this adapter; several may share one model.

    Returns:
        A :class:`LoRAReport`; ``print`` it for the PEFT-style summary line.

    Raises (after an error the model is as it was):
        ValueError: bad hyper-parameters (NaN / inf too), a target that matches nothing,
            an adapter of this name already on the model / on one of the layers, an unknown
            ``init``, or DoRA / PiSSA on an embedding.
        TypeError: ``init="pissa"`` on a layer without a float weight (4-bit).
        RuntimeError: an adapter is merged into the model (unmerge first).
    """
    _check_hparams(r, alpha, dropout)
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
    check_init(init)  # the layers check PiSSA / DoRA before they change (and say why)
    _check_new_adapter(model, adapter_name)
    with unchanged_on_error(model):  # checks first; the guard covers what they miss
        return _add_lora(model, targets, r, alpha, dropout, use_rslora, bias, adapter_name,
                         bool(use_dora), init)


def _check_new_adapter(model: nn.Module, adapter_name: str) -> None:
    """Refuse a name that cannot be a new adapter of ``model``, or a merged ``model``."""
    _check_adapter_name(adapter_name)
    configs = model.__dict__.get("_lora_configs", {})  # read only: _configs() would add it
    if adapter_name in configs:
        raise ValueError(
            f"model already has a LoRA adapter named {adapter_name!r} (targets "
            f"{configs[adapter_name].target_modules}); pass another adapter_name, or "
            f"delete_adapter(model, {adapter_name!r}) first")
    if merged := [n for n, lay in lora_layers(model) if lay.merged]:
        raise RuntimeError(f"layers {merged[:3]} have an adapter merged into their weights; "
                           "unmerge_lora(model) before adding another adapter")


def _add_lora(model, targets, r, alpha, dropout, use_rslora, bias, adapter_name, use_dora,
              init) -> LoRAReport:
    hits = find_targets(model, targets)
    conv = {_is_conv1d(getattr(m, "base_layer", m)) for _, m in hits}
    if len(conv) > 1:  # the file format has one fan_in_fan_out flag per adapter
        raise ValueError(
            "targets mix GPT-2 Conv1D layers with other layers; PEFT's adapter format records "
            "one fan_in_fan_out flag per adapter, so put them in two adapters (adapter_name=)")
    if twice := [n for n, m in hits if isinstance(m, LoRALayer) and adapter_name in m.r]:
        raise ValueError(
            f"layers {twice[:5]} already have a LoRA adapter named {adapter_name!r}; "
            "pass another adapter_name to add a second adapter")
    if init == "pissa":  # PiSSA rewrites base weights in place: check them all first
        for _, mod in hits:
            check_init(init, mod)
    notes = []
    for name, mod in hits:
        emb = isinstance(mod, (nn.Embedding, LoRAEmbedding))
        p = 0.0 if emb else dropout  # token ids take no dropout
        if isinstance(mod, LoRALayer):
            mod.add_adapter(adapter_name, r, alpha, p, use_rslora, use_dora, init)
            continue
        cls = LoRAEmbedding if emb else LoRALinear
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, cls(mod, r, alpha, p, use_rslora, adapter_name, use_dora, init))
    if dropout > 0 and any(isinstance(m, (nn.Embedding, LoRAEmbedding)) for _, m in hits):
        notes.append("dropout is not applied to embedding layers (their input is token ids)")
    if isinstance(targets, re.Pattern):  # save the exact layers: PEFT matches full names too
        saved = [n for n, _ in hits]
    else:
        saved = sorted({targets} if isinstance(targets, str) else set(targets))
    _configs(model)[adapter_name] = cfg = LoRAConfig(
        r=r, lora_alpha=alpha, target_modules=saved, lora_dropout=dropout,
        use_rslora=use_rslora, use_dora=use_dora, init_lora_weights=PEFT_INIT[init], bias=bias,
        fan_in_fan_out=conv == {True})
    set_adapter(model, adapter_name)
    return LoRAReport(adapter_name, cfg, [n for n, _ in hits], model_params(model), notes)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALayer]]:
    """``(name, layer)`` for every LoRA layer in ``model``."""
    for name, mod in model.named_modules():
        if isinstance(mod, LoRALayer):
            yield name, mod


def _layers_or_raise(model: nn.Module) -> list[tuple[str, LoRALayer]]:
    layers = list(lora_layers(model))
    if not layers:
        raise ValueError("the model has no LoRA layers; call add_lora(model, targets, ...) first")
    return layers


def get_adapter_params(model: nn.Module,
                       adapter_name: str | None = None) -> dict[str, nn.Parameter]:
    """The adapter tensors (``A`` and ``B`` of every layer), by parameter name.

    ``adapter_name=None`` takes every adapter. Useful to build an optimizer over exactly
    the LoRA parameters, or to save them.
    """
    out = {}
    for path, layer in lora_layers(model):
        for n, p in layer.named_parameters():
            kind, _, rest = n.partition(".")
            if kind in layer.adapter_kinds and (
                    adapter_name is None or rest.split(".")[0] == adapter_name):
                out[f"{path}.{n}" if path else n] = p
    return out


def set_trainable_params(model: nn.Module, names) -> None:
    """Let exactly the parameters named in ``names`` train; freeze all others."""
    names = set(names)
    known = {n for n, _ in model.named_parameters()}
    if names - known:
        raise KeyError(f"no parameters named {sorted(names - known)[:5]} in the model")
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)


def set_adapter(model: nn.Module, adapter_name: str) -> None:
    """Make ``adapter_name`` the active adapter of every layer that has it, and the only
    trainable one (plus the biases its ``bias`` setting names). Layers without it go idle.
    """
    layers = _layers_or_raise(model)
    have = {n for _, lay in layers for n in lay.r}
    if adapter_name not in have:
        raise KeyError(f"no adapter named {adapter_name!r}; the model has {sorted(have)}")
    for _, lay in layers:
        if lay.merged and lay.merged_adapter != adapter_name:
            raise RuntimeError(f"adapter {lay.merged_adapter!r} is merged; unmerge_lora(model) "
                               "before switching adapters")
    for _, lay in layers:
        lay.set_adapter(adapter_name if adapter_name in lay.r else None)
    names = set(get_adapter_params(model, adapter_name))
    bias = getattr(_configs(model).get(adapter_name), "bias", "none")
    if bias == "all":
        names |= {n for n, _ in model.named_parameters() if n.rpartition(".")[2] == "bias"}
    if bias == "lora_only":
        for path, lay in layers:
            if adapter_name in lay.r and getattr(lay.base_layer, "bias", None) is not None:
                names.add(f"{path}.base_layer.bias")
    set_trainable_params(model, names)


def enable_adapters(model: nn.Module, enabled: bool = True) -> None:
    """Switch all adapters on (or off: the model computes exactly its base model)."""
    for _, lay in _layers_or_raise(model):
        lay.enable_adapters(enabled)


def disable_adapters(model: nn.Module) -> None:
    enable_adapters(model, False)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """``with adapters_disabled(model):`` runs the base model, then switches back."""
    disable_adapters(model)
    try:
        yield model
    finally:
        enable_adapters(model)


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove adapter ``adapter_name`` from every layer (layers keep their other adapters)."""
    layers = _layers_or_raise(model)
    if not any(adapter_name in lay.r for _, lay in layers):
        raise KeyError(f"no adapter named {adapter_name!r} in the model")
    for _, lay in layers:
        if adapter_name in lay.r:
            lay.delete_adapter(adapter_name)
    _configs(model).pop(adapter_name, None)
