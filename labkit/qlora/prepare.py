"""Making a model a QLoRA model: quantize its target layers, add adapters, count the bytes.

:func:`quantize_model` swaps the target ``nn.Linear`` layers for frozen 4-bit ones (either
back end, :mod:`labkit.qlora.linear4bit`) and reports what it did (:class:`QuantReport`:
the layers, bytes before and after, and what stays in higher precision and why, as
:class:`KeptLayer` rows). :func:`prepare_qlora` does that and adds LoRA adapters on the same
targets (:class:`QLoRAReport`). The byte counts of 4-bit layers (:func:`layer_bytes`,
:func:`base_weight_bytes`) live here too; gradient checkpointing is the model's own switch,
:func:`labkit.models.set_gradient_checkpointing`.

Imports from labkit: :mod:`labkit.qlora.linear4bit` (the 4-bit layers),
:mod:`labkit.qlora.merge` (the QLoRA layer class the adapters are switched to),
:mod:`labkit.lora` (targets and adapters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch
from torch import nn

from labkit.lora import (
    LoRAEmbedding,
    LoRALayer,
    LoRAReport,
    _check_hparams,
    add_lora,
    dora,
    find_targets,
    model_params,
)
from labkit.lora.init import PEFT_INIT, check_init
from labkit.lora.inject import _check_new_adapter, _configs, set_adapter
from labkit.models import set_gradient_checkpointing
from labkit.qlora.linear4bit import (
    Linear4bit,
    _check_quantizable,
    _is_bnb_4bit,
    _quantized,
    disable_cpu_inference_repack,
    is_4bit,
    resolve_backend,
    resolve_compute_dtype,
)
from labkit.qlora.loftq import float_inits, layer_roundtrip
from labkit.qlora.merge import _as_qlora

# --------------------------------------------------------------------------- accounting


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def layer_bytes(layer: nn.Module) -> int:
    """Bytes a 4-bit layer stores: packed codes + quantization state (+ its bias).

    Equals :func:`labkit.quant.quantized_nbytes` of the weight (codebooks counted) plus the
    bias, for both back ends.
    """
    if isinstance(layer, Linear4bit):
        return sum(_nbytes(t) for t in (*layer.parameters(), *layer.buffers()))
    if _is_bnb_4bit(layer):
        qs = layer.weight.quant_state
        n = _nbytes(layer.weight.data) + _nbytes(layer.bias)
        n += _nbytes(qs.absmax) + _nbytes(qs.code) + _nbytes(qs.offset)
        if qs.state2 is not None:
            n += _nbytes(qs.state2.absmax) + _nbytes(qs.state2.code)
        return n
    raise TypeError(f"{type(layer).__name__} is not a 4-bit layer")


def base_weight_bytes(model: nn.Module) -> int:
    """Bytes of the base model's weights: every parameter except LoRA adapters, with 4-bit
    layers counted by :func:`layer_bytes` (codes + quantization state). Buffers that are
    not weights (e.g. rotary tables) are left out. Works on labkit and PEFT models alike.

    The same count from a config, without building anything, is
    :func:`labkit.memory.base_weight_bytes`, which adds the buffers a loaded model holds
    (``tests/test_memory_estimation.py`` checks that the two differ by exactly those).
    """
    total, seen = 0, set()
    for mod in model.modules():
        if is_4bit(mod):
            total += layer_bytes(mod)
            seen.update(id(p) for p in mod.parameters())
    for name, p in model.named_parameters():
        if id(p) in seen or ".lora_" in f".{name}":
            continue
        seen.add(id(p))
        total += _nbytes(p)
    return total


@dataclass
class KeptLayer:
    """A part of the model that stays in higher precision, and why."""

    name: str
    kind: str
    numel: int
    nbytes: int
    why: str


_WHY = {
    "embedding": "a lookup table: each token reads one row, so 4 bits would save memory but "
                 "put the rounding error straight into every input; QLoRA keeps it 16/32-bit",
    "norm": "a vector of d scales (tiny), multiplying every activation: nothing to save, "
            "much to lose",
    "head": "the output projection decides every logit; like transformers' 4-bit loading, "
            "it stays in higher precision",
    "linear": "not among the targets",
    "other": "not a linear layer",
}


def _kind(name: str, mod: nn.Module, model: nn.Module) -> str:
    if isinstance(mod, (nn.Embedding, LoRAEmbedding)):
        return "embedding"
    if "norm" in type(mod).__name__.lower() or "norm" in name.rsplit(".", 1)[-1].lower():
        return "norm"
    if isinstance(mod, nn.Linear):
        last = name.rsplit(".", 1)[-1]
        out = getattr(model, "get_output_embeddings", lambda: None)()
        return "head" if mod is out or last in ("lm_head", "head", "output") else "linear"
    return "other"


def _kept(model: nn.Module) -> list[KeptLayer]:
    rows = []
    for name, mod in model.named_modules():
        if is_4bit(mod) or isinstance(mod, LoRALayer):
            continue
        own = [p for n, p in mod.named_parameters(recurse=False)]
        if not own:
            continue
        kind = _kind(name, mod, model)
        rows.append(KeptLayer(name, kind, sum(p.numel() for p in own),
                              sum(_nbytes(p) for p in own), _WHY[kind]))
    return rows


@dataclass
class QuantReport:
    """What :func:`quantize_model` did.

    Attributes:
        backend: ``"bnb"`` or ``"labkit"``.
        quant_type, double_quant, blocksize, compute_dtype: the format and compute dtype.
        layers: names of the layers now stored in 4 bits.
        layer_numel: weights in those layers.
        target_bytes_before / target_bytes_after: those layers' bytes before (their float
            dtype) and after (codes + quantization state + bias).
        base_bytes_before / base_bytes_after: the whole base model's weight bytes
            (:func:`base_weight_bytes`).
        kept: the parts that stay in higher precision, with the reason.
    """

    backend: str
    quant_type: str
    double_quant: bool
    blocksize: int
    compute_dtype: torch.dtype
    layers: list[str]
    layer_numel: int
    target_bytes_before: int
    target_bytes_after: int
    base_bytes_before: int
    base_bytes_after: int
    kept: list[KeptLayer] = field(default_factory=list)

    @property
    def bits_per_weight(self) -> float:
        """Bits a quantized weight costs, all state included (biases excluded)."""
        return 8 * self.target_bytes_after / self.layer_numel

    def kept_summary(self) -> dict[str, tuple[int, int]]:
        """``{kind: (numel, bytes)}`` of the parts kept in higher precision."""
        out: dict[str, tuple[int, int]] = {}
        for k in self.kept:
            n, b = out.get(k.kind, (0, 0))
            out[k.kind] = (n + k.numel, b + k.nbytes)
        return out

    def __str__(self) -> str:
        mb = 1e6
        dq = " + double quant" if self.double_quant else ""
        lines = [
            f"4-bit base ({self.backend}): {self.quant_type.upper()}{dq}, blocks of "
            f"{self.blocksize}, compute in {str(self.compute_dtype).removeprefix('torch.')}",
            f"quantized {len(self.layers)} layers, {self.layer_numel:,d} weights: "
            f"{self.target_bytes_before / mb:.1f} MB -> {self.target_bytes_after / mb:.1f} MB "
            f"({self.bits_per_weight:.2f} bits per weight)",
            f"base model weights: {self.base_bytes_before / mb:.1f} MB -> "
            f"{self.base_bytes_after / mb:.1f} MB",
        ]
        for kind, (n, b) in self.kept_summary().items():
            lines.append(f"kept {kind}: {n:,d} params, {b / mb:.1f} MB: {_WHY[kind]}")
        return "\n".join(lines)


@dataclass
class QLoRAReport:
    """What :func:`prepare_qlora` did: the quantization and the adapters."""

    quant: QuantReport
    lora: LoRAReport
    gradient_checkpointing: bool = False

    def __str__(self) -> str:
        gc = "\ngradient checkpointing: on" if self.gradient_checkpointing else ""
        return f"{self.quant}\n{self.lora}{gc}"


# --------------------------------------------------------------------------- preparing


def _device_of(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _plan(model: nn.Module, targets, quant_type: str, blocksize: int,
          compute_dtype: torch.dtype | None, backend: str
          ) -> tuple[str, torch.dtype, list[tuple[str, nn.Module]]]:
    """Every check :func:`quantize_model` makes, changing nothing: back end, compute dtype
    and the target layers, each one quantizable (:func:`_check_quantizable`)."""
    device = _device_of(model)
    backend = resolve_backend(backend, device)
    compute_dtype = resolve_compute_dtype(compute_dtype, device)
    hits = find_targets(model, targets)
    twice = [n for n, m in hits if is_4bit(m) or isinstance(m, LoRALayer)
             and is_4bit(m.base_layer)]
    if twice:
        raise ValueError(f"layers {twice[:3]} are already quantized to 4 bits; quantizing "
                         "twice would stack two rounding errors. Start from the "
                         "full-precision model.")
    bad = [f"{n} ({type(m).__name__})" for n, m in hits if type(m) is not nn.Linear]
    if bad:
        raise ValueError(f"targets matched layers that are not plain nn.Linear: {bad[:3]}; "
                         "QLoRA quantizes linear layers only (embeddings and norms stay in "
                         "higher precision). Name linear layers, e.g. q_proj, v_proj.")
    for name, lin in hits:
        _check_quantizable(lin, f"layer {name!r}", backend, quant_type, blocksize)
    return backend, compute_dtype, hits


def quantize_model(model: nn.Module, targets, *, quant_type: str = "nf4",
                   double_quant: bool = True, blocksize: int = 64,
                   compute_dtype: torch.dtype | None = None, backend: str = "auto"
                   ) -> QuantReport:
    """Replace the ``targets`` linear layers of ``model`` by frozen 4-bit layers, in place.

    Everything else (embeddings, norms, the output head, untargeted layers) stays as it
    is; the report says which parts and why. All base parameters are frozen.

    Args:
        model: any ``nn.Module``; its targeted layers must be plain ``nn.Linear``.
        targets: module-name suffixes or a compiled regex, as in
            :func:`labkit.lora.add_lora`.
        quant_type, double_quant, blocksize, compute_dtype, backend: see
            :func:`quantize_linear`.

    Every layer is checked before the first one is replaced, so a refused call leaves the
    model as it was. (No rollback after that: keeping the full-precision layers alive until
    the end would hold the whole model twice, in 16 and in 4 bits, on the device.)

    Raises:
        ValueError: a target matches nothing (the message lists the names that exist),
            matches a layer that is already 4-bit or is not an ``nn.Linear``, a weight that
            holds NaN or inf (the message names the layer), or bad options.
        TypeError: a target's weight is not float32, bfloat16 or float16.
    """
    backend, compute_dtype, hits = _plan(model, targets, quant_type, blocksize, compute_dtype,
                                         backend)
    before = base_weight_bytes(model)
    names, numel, t_before, t_after = [], 0, 0, 0
    for name, lin in hits:
        q = _quantized(lin, backend, quant_type, double_quant, blocksize, compute_dtype)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, q)
        names.append(name)
        numel += lin.weight.numel()
        t_before += _nbytes(lin.weight) + _nbytes(lin.bias)
        t_after += layer_bytes(q) - _nbytes(q.bias)
        t_before -= _nbytes(lin.bias)
    for p in model.parameters():
        if p.is_floating_point():
            p.requires_grad_(False)
    disable_cpu_inference_repack(model)
    return QuantReport(backend, quant_type, double_quant, blocksize, compute_dtype, names, numel,
                       t_before, t_after, before, base_weight_bytes(model), _kept(model))


def prepare_qlora(model: nn.Module, targets, *, r: int = 8, alpha: float = 16,
                  dropout: float = 0.0, quant_type: str = "nf4", double_quant: bool = True,
                  blocksize: int = 64, compute_dtype: torch.dtype | None = None,
                  backend: str = "auto", adapter_name: str = "default",
                  gradient_checkpointing: bool = False, use_rslora: bool = False,
                  use_dora: bool = False, init: str = "default",
                  loftq_iter: int = 1) -> QLoRAReport:
    """Make ``model`` a QLoRA model, in place: 4-bit frozen targets plus LoRA adapters.

    0. With ``init="pissa"`` or ``"loftq"``, the adapters are computed from the float
       weights first, and the weights rewritten to what the 4-bit base must hold
       (:func:`labkit.qlora.loftq.float_inits`): PiSSA's residual (QPiSSA), or LoftQ's
       ``Q`` after ``loftq_iter`` alternating steps, quantized exactly as the base is.
    1. :func:`quantize_model`: the target linear layers become frozen 4-bit layers
       (NF4 + double quantization by default); embeddings, norms and the head stay.
    2. :func:`labkit.lora.add_lora` on the same targets: float32 adapters ``A`` and ``B``,
       the only parameters that train (with ``use_dora``, DoRA's magnitudes too, computed
       from the 4-bit base and the adapters as they start).
    3. Optionally, gradient checkpointing of the transformer blocks
       (:func:`labkit.models.set_gradient_checkpointing`).

    Train it with :func:`labkit.train.train` as any LoRA model (``optimizer="paged_adamw"``
    on a GPU); save the adapters with :func:`labkit.lora.save_adapter` (PEFT's format).

    Returns:
        A :class:`QLoRAReport`; ``print`` it for bytes before and after, and what stays in
        higher precision.

    Raises:
        ValueError: as :func:`quantize_model` and :func:`labkit.lora.add_lora`, an unknown
            ``init``, ``loftq_iter`` < 1; all checked before the model changes, so after an
            error it is as it was.
    """
    # Everything is checked before anything changes (see quantize_model for why there is
    # no rollback of the quantization): the adapter's settings and name, every target ...
    _check_hparams(r, alpha, dropout)
    _check_new_adapter(model, adapter_name)
    if init != "loftq":
        check_init(init)
    if isinstance(loftq_iter, bool) or not isinstance(loftq_iter, int) or loftq_iter < 1:
        raise ValueError(f"loftq_iter must be an int >= 1, got {loftq_iter!r}")
    backend, cdt, hits = _plan(model, targets, quant_type, blocksize, compute_dtype, backend)
    if gradient_checkpointing:  # ... and checkpointing, which checks the model before it
        set_gradient_checkpointing(model)  # changes it (only flags: order does not matter)
    factors = {}
    if init in ("pissa", "loftq"):  # from the float weights, before they are quantized
        s = alpha / (math.sqrt(r) if use_rslora else r)  # the adapters' scaling, as add_lora
        dtype = hits[0][1].weight.dtype
        rt = layer_roundtrip(backend, quant_type, double_quant, blocksize, cdt, dtype)
        factors = float_inits(hits, init, r, s, rt, loftq_iter)
    qrep = quantize_model(model, targets, quant_type=quant_type, double_quant=double_quant,
                          blocksize=blocksize, compute_dtype=compute_dtype, backend=backend)
    lrep = add_lora(model, targets, r=r, alpha=alpha, dropout=dropout, use_rslora=use_rslora,
                    init="default" if factors else init, adapter_name=adapter_name)
    _as_qlora(model)  # from here the layers read their 4-bit base (DoRA needs it)
    for name, (A, B) in factors.items():
        lay = model.get_submodule(name)
        lay.lora_A[adapter_name].weight.data.copy_(A)
        lay.lora_B[adapter_name].weight.data.copy_(B)
    if use_dora:
        for name, _ in hits:
            dora.init_magnitude(model.get_submodule(name), adapter_name)
    cfg = _configs(model)[adapter_name]
    cfg.use_dora, cfg.init_lora_weights = bool(use_dora), PEFT_INIT[init]
    cfg.loftq_config = {"loftq_bits": 4, "loftq_iter": loftq_iter} if init == "loftq" else {}
    set_adapter(model, adapter_name)  # the magnitudes train too
    lrep.params = model_params(model)
    return QLoRAReport(qrep, lrep, gradient_checkpointing)



# --------------------------------------------------------------------------- memory savers
