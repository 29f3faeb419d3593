"""QLoRA: LoRA adapters on a frozen base stored in 4 bits (Dettmers et al., 2023, arXiv:2305.14314).

QLoRA keeps LoRA's recipe (a frozen ``W`` plus a trainable ``s * B A``) and changes how ``W``
is stored: NF4 codes, 4 bits a weight, with blockwise absmax scales that are themselves
quantized (double quantization, about 4.127 bits a weight in all). For every matmul the
weight is dequantized on the fly and thrown away again::

    h = dequant(W4) x + s * B A x          W4: packed 4-bit codes + quantization state
    dL/dx = dequant(W4)^T dL/dh + ...      gradients flow *through* the base to the input
    dL/dW4 = (none)                        the 4-bit base never trains; only A and B do

So the base costs about 0.52 bytes a weight instead of 2 (bf16) or 4 (fp32), and the
adapters, their gradients and their optimizer state stay in higher precision.

Two interchangeable back ends hold the 4-bit base:

* ``"bnb"``: bitsandbytes' ``Linear4bit`` (its CPU and CUDA kernels), what PEFT and
  transformers use; a model prepared here looks, layer for layer, like theirs.
* ``"labkit"``: :class:`Linear4bit` below, written on :mod:`labkit.quant` (pure PyTorch): an
  autograd function that dequantizes in forward and returns a gradient for the input only.
  Its packed codes and scales are bit for bit those of bitsandbytes on the CPU, so the two
  back ends give the same outputs and input gradients (``tests/test_qlora.py``). On a CUDA
  GPU it follows bitsandbytes' CUDA rounding rules; only codes that the kernel's approximate
  reciprocal moves can differ (none of NF4's in 22.6 million weights on an H200; see
  :mod:`labkit.quant`).

``backend="auto"`` takes bitsandbytes where it imports and supports the device, and falls
back to labkit's layer otherwise, saying so once.

A CPU trap, defused here: on CPUs with AVX512-BF16, bitsandbytes 0.50's ``Linear4bit``
repacks its weight into an inference-only layout the first time it runs in ``eval()`` mode
on an input that needs no gradient, and never unpacks it. Training afterwards raises no
error, but the base's matmul then has no backward (gradients into earlier layers go
missing) and its outputs shift (a bf16 kernel); a layer whose ``out_features`` is not a
multiple of 32 fails with an assertion instead. Each ``Linear4bit`` has a switch for that
path, ``support_avx512bf16_for_cpu``; labkit turns it off on every layer it creates
(:func:`disable_cpu_inference_repack` does it for any model, e.g. a PEFT one), so results
do not depend on the CPU.

Typical use::

    model = models.load_pretrained().model
    report = prepare_qlora(model, ["q_proj", "k_proj", "v_proj", "o_proj",
                                   "gate_proj", "up_proj", "down_proj"], r=8, alpha=16)
    print(report)                       # layers, bytes before / after, what stays 32-bit
    train.train(model, "shift", steps=200, lr=1e-2)
    adapters.save_adapter(model, "out/")  # PEFT's format, as for plain LoRA
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from dataclasses import dataclass, field

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch
import torch.nn.functional as F
from torch import nn

from labkit import quant as Q
from labkit.lora import (
    LoRAEmbedding,
    LoRALayer,
    LoRALinear,
    LoRAReport,
    add_lora,
    find_targets,
    lora_layers,
)

__all__ = [
    "BACKENDS", "Params4bit", "Linear4bit", "QLoRALinear", "QuantReport", "QLoRAReport",
    "MergeReport", "KeptLayer", "resolve_backend", "resolve_compute_dtype", "quantize_linear",
    "quantize_model", "prepare_qlora", "is_4bit", "dequantize_weight",
    "disable_cpu_inference_repack", "base_weight_nbytes", "layer_nbytes", "merge_qlora",
    "unmerge_qlora", "merged_16bit_state_dict", "save_merged_16bit",
    "enable_gradient_checkpointing",
]

BACKENDS = ("auto", "bnb", "labkit")


class QLoRAWarning(UserWarning):
    """A fallback labkit took (back end, compute dtype): shown once per process."""


_said: set[str] = set()


def _say_once(key: str, message: str) -> None:
    """Warn with ``message`` the first time ``key`` comes up in this process only."""
    if key not in _said:
        _said.add(key)
        warnings.warn(message, QLoRAWarning, stacklevel=3)


# --------------------------------------------------------------------------- choices


def resolve_backend(backend: str = "auto", device: torch.device | str = "cpu") -> str:
    """``"bnb"`` or ``"labkit"``: which 4-bit layer to build on ``device``.

    ``"auto"`` takes bitsandbytes when it imports and has a 4-bit path for the device (CPU
    and CUDA), and labkit's reference layer otherwise, with one warning per process.

    Raises:
        ValueError: an unknown name.
        ImportError: ``"bnb"`` asked for, but bitsandbytes does not import.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if backend == "labkit":
        return "labkit"
    if backend == "bnb":
        _deps.import_bnb()  # raises an ImportError that says how to install it
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"bitsandbytes' 4-bit layer has no {device.type} path here; "
                             "use backend='labkit' (pure PyTorch) or 'auto'")
        return "bnb"
    if device.type not in ("cpu", "cuda"):
        _say_once(f"backend-{device.type}",
                  f"bitsandbytes has no 4-bit path for {device.type}; using labkit's reference "
                  "4-bit layer (same numbers, pure PyTorch)")
        return "labkit"
    try:
        _deps.import_bnb()
    except ImportError as exc:
        _say_once("backend-import", f"bitsandbytes is unavailable ({exc}); using labkit's "
                  "reference 4-bit layer (same numbers, pure PyTorch)")
        return "labkit"
    return "bnb"


def resolve_compute_dtype(compute_dtype: torch.dtype | None = None,
                          device: torch.device | str = "cpu") -> torch.dtype:
    """The dtype the 4-bit matmuls compute in on ``device``.

    ``None`` picks: float32 on the CPU (exact, reproducible; the CPU gains little from
    bf16 here), bfloat16 on a CUDA GPU that has it, float16 (with a warning) on one that
    does not (e.g. a T4). An explicit bfloat16 on such a GPU falls back to float16 with a
    warning too.

    Raises:
        ValueError: float16 on the CPU, or a dtype that is not a float type.
    """
    device = torch.device(device)
    allowed = (torch.float32, torch.bfloat16, torch.float16)
    if compute_dtype is not None and compute_dtype not in allowed:
        raise ValueError(f"compute_dtype must be torch.float32, bfloat16 or float16 (or None to "
                         f"choose), got {compute_dtype!r}")
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if compute_dtype in (None, torch.bfloat16) and not bf16:
            _say_once("fp16", "this GPU has no bfloat16; computing the 4-bit matmuls in "
                      "float16 instead (watch for overflow: keep the adapters in float32)")
            return torch.float16
        return torch.bfloat16 if compute_dtype is None else compute_dtype
    if compute_dtype == torch.float16:
        raise ValueError("float16 compute is not supported on the CPU (slow, and labkit.train "
                         "refuses it there); use compute_dtype=torch.bfloat16 or torch.float32")
    return torch.float32 if compute_dtype is None else compute_dtype


# --------------------------------------------------------------------------- labkit's layer


class Params4bit(nn.Parameter):
    """A frozen parameter holding packed 4-bit codes (uint8, two codes a byte).

    Named like bitsandbytes' class on purpose: :func:`labkit.lora.count_params` (as PEFT)
    counts a ``Params4bit`` as the weights it holds, two per byte, not as its bytes.
    It can never require a gradient: 4-bit codes are not differentiable.
    """

    def __new__(cls, data: torch.Tensor, requires_grad: bool = False):
        if data.dtype != torch.uint8:
            raise TypeError(f"Params4bit holds packed uint8 codes, got {data.dtype}")
        if requires_grad:
            raise RuntimeError(_NO_TRAIN)
        return torch.Tensor._make_subclass(cls, data, False)

    def requires_grad_(self, requires_grad: bool = True):
        if requires_grad:
            raise RuntimeError(_NO_TRAIN)
        return self


_NO_TRAIN = (
    "a 4-bit weight cannot train: it is packed NF4/FP4 codes, and QLoRA's gradients flow "
    "through it to the input only. Train LoRA adapters on it (prepare_qlora), or for full "
    "fine-tuning load the model in 16/32 bit (dequantize_weight() gives a dense copy)."
)


class _Dequant4bitLinear(torch.autograd.Function):
    """``y = x W^T + b`` with ``W = dequantize(packed, state)`` made afresh in forward and
    again in backward, so no dense copy of ``W`` outlives one matmul.

    Backward: ``dL/dx = dL/dy W`` (shape of x) and ``dL/db`` (summed over the batch);
    the packed codes get no gradient (``None``).
    """

    @staticmethod
    def forward(ctx, x, packed, state, bias):
        w = Q.dequantize_4bit(packed, state).to(x.dtype)  # (out, in), lives for this op only
        ctx.state = state
        ctx.save_for_backward(packed)
        ctx.has_bias = bias is not None
        return F.linear(x, w, None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad_out):
        (packed,) = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            w = Q.dequantize_4bit(packed, ctx.state).to(grad_out.dtype)
            grad_x = grad_out @ w  # (..., out) @ (out, in) -> (..., in)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, None, None, grad_bias


class Linear4bit(nn.Module):
    """labkit's reference frozen 4-bit linear layer, on :mod:`labkit.quant`.

    ``forward(x)``: ``x (..., in_features) -> (..., out_features)``, computed in
    ``compute_dtype`` and returned in ``x``'s dtype (as bitsandbytes does). State-dict
    entries: ``weight`` (packed codes, ``(ceil(out * in / 2), 1)`` uint8), ``bias``, and the
    quantization state as buffers (``absmax``, ``code``; with double quantization also
    ``offset``, ``nested_absmax``, ``nested_code``).

    Build one with :meth:`from_linear`.
    """

    def __init__(self, in_features: int, out_features: int, packed: torch.Tensor,
                 state: Q.QuantState, bias: torch.Tensor | None = None,
                 compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        if tuple(state.shape) != (out_features, in_features):
            raise ValueError(f"quantization state is for shape {tuple(state.shape)}, "
                             f"the layer is ({out_features}, {in_features})")
        self.in_features, self.out_features = in_features, out_features
        self.weight = Params4bit(packed)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)
        self.compute_dtype = compute_dtype
        self.quant_type, self.blocksize = state.quant_type, state.blocksize
        self.double_quant, self.weight_dtype = state.double_quant, state.dtype
        self.register_buffer("absmax", state.absmax)
        self.register_buffer("code", state.code)
        for name in ("offset", "nested_absmax", "nested_code"):
            self.register_buffer(name, getattr(state, name))

    @classmethod
    def from_linear(cls, linear: nn.Linear, quant_type: str = "nf4", double_quant: bool = True,
                    blocksize: int = 64, compute_dtype: torch.dtype = torch.float32
                    ) -> Linear4bit:
        """Quantize an ``nn.Linear``'s weight (out, in) blockwise to 4 bits."""
        packed, state = Q.quantize_4bit(linear.weight.detach(), blocksize, quant_type,
                                        double_quant)
        return cls(linear.in_features, linear.out_features, packed, state, linear.bias,
                   compute_dtype)

    @property
    def quant_state(self) -> Q.QuantState:
        """The :class:`labkit.quant.QuantState` (views of this layer's buffers)."""
        return Q.QuantState(
            absmax=self.absmax, shape=torch.Size((self.out_features, self.in_features)),
            dtype=self.weight_dtype, blocksize=self.blocksize, quant_type=self.quant_type,
            code=self.code, offset=self.offset, nested_absmax=self.nested_absmax,
            nested_code=self.nested_code if self.nested_code is not None else None)

    def dequantize(self) -> torch.Tensor:
        """The dense weight ``(out_features, in_features)`` in the dtype it was quantized from."""
        return Q.dequantize_4bit(self.weight.data, self.quant_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _Dequant4bitLinear.apply(x.to(self.compute_dtype), self.weight.data,
                                     self.quant_state, self.bias)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, quant_type={self.quant_type}, "
                f"double_quant={self.double_quant}, blocksize={self.blocksize}, "
                f"compute_dtype={self.compute_dtype}")


# --------------------------------------------------------------------------- both back ends


def _is_bnb_4bit(mod: nn.Module) -> bool:
    # bitsandbytes is imported only when a model may hold its layers: check by class name
    # first, so that this test never imports it.
    return any(c.__name__ == "Linear4bit" and c.__module__.startswith("bitsandbytes")
               for c in type(mod).__mro__)


def is_4bit(mod: nn.Module) -> bool:
    """True for a 4-bit linear layer of either back end."""
    return isinstance(mod, Linear4bit) or _is_bnb_4bit(mod)


def disable_cpu_inference_repack(model: nn.Module) -> int:
    """Turn off bitsandbytes' CPU inference repack on every ``Linear4bit`` in ``model``.

    Call it on any model that holds bitsandbytes 4-bit layers (labkit's own, PEFT's,
    transformers') before it runs in ``eval()`` mode and then trains (see the module
    docstring). Returns how many layers it switched off.
    """
    n = 0
    for mod in model.modules():
        if _is_bnb_4bit(mod):
            mod.support_avx512bf16_for_cpu = False
            n += 1
    return n


def _bnb_from_linear(linear: nn.Linear, quant_type: str, double_quant: bool, blocksize: int,
                     compute_dtype: torch.dtype) -> nn.Module:
    bnb = _deps.import_bnb()
    device = linear.weight.device
    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features,
                              bias=linear.bias is not None, compute_dtype=compute_dtype,
                              compress_statistics=double_quant, quant_type=quant_type,
                              device="meta")
    layer.support_avx512bf16_for_cpu = False  # never repack for inference: see module doc
    layer.weight = bnb.nn.Params4bit(linear.weight.detach().clone(), requires_grad=False,
                                     blocksize=blocksize, compress_statistics=double_quant,
                                     quant_type=quant_type, module=layer)
    layer.weight = layer.weight.to(device)  # quantizes (bitsandbytes does it on .to(device))
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return layer


def quantize_linear(linear: nn.Module, backend: str = "auto", quant_type: str = "nf4",
                    double_quant: bool = True, blocksize: int = 64,
                    compute_dtype: torch.dtype | None = None) -> nn.Module:
    """A frozen 4-bit copy of ``linear`` on its device: bitsandbytes' or labkit's layer.

    Args:
        linear: an ``nn.Linear`` (float weight).
        backend: ``"auto"``, ``"bnb"`` or ``"labkit"`` (see :func:`resolve_backend`).
        quant_type: ``"nf4"`` or ``"fp4"`` (``"int4"`` only with the labkit back end).
        double_quant: quantize the absmax scales too (bitsandbytes' ``compress_statistics``).
        blocksize: weights per absmax block (64 as in QLoRA).
        compute_dtype: see :func:`resolve_compute_dtype`.

    Raises:
        ValueError: ``linear`` is 4-bit already, is not an ``nn.Linear``, or bad options.
    """
    if is_4bit(linear) or isinstance(linear, LoRALayer) and is_4bit(linear.base_layer):
        raise ValueError("this layer is already quantized to 4 bits; quantizing twice would "
                         "stack two rounding errors. Quantize the full-precision model once.")
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"only nn.Linear layers can be quantized to 4 bits, got "
                         f"{type(linear).__name__}")
    device = linear.weight.device
    backend = resolve_backend(backend, device)
    compute_dtype = resolve_compute_dtype(compute_dtype, device)
    Q._check_quant_type(quant_type)
    Q._check_blocksize(blocksize)
    if backend == "bnb":
        if quant_type not in ("nf4", "fp4"):
            raise ValueError(f"bitsandbytes quantizes to 'nf4' or 'fp4', not {quant_type!r}; "
                             "use backend='labkit' for int4")
        return _bnb_from_linear(linear, quant_type, double_quant, blocksize, compute_dtype)
    return Linear4bit.from_linear(linear, quant_type, double_quant, blocksize, compute_dtype)


def dequantize_weight(layer: nn.Module) -> torch.Tensor:
    """The dense ``(out, in)`` float32 weight of a 4-bit layer (either back end)."""
    if isinstance(layer, LoRALayer):
        layer = layer.base_layer
    if isinstance(layer, Linear4bit):
        return layer.dequantize().float()
    if _is_bnb_4bit(layer):
        bnb = _deps.import_bnb()
        w = layer.weight
        return bnb.functional.dequantize_4bit(w.data, w.quant_state).float()
    raise TypeError(f"{type(layer).__name__} is not a 4-bit layer")


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


def _format(layer: nn.Module) -> tuple[str, bool, int]:
    if isinstance(layer, Linear4bit):
        return layer.quant_type, layer.double_quant, layer.blocksize
    p = layer.weight
    return p.quant_type, bool(p.compress_statistics), p.blocksize


# --------------------------------------------------------------------------- accounting


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def layer_nbytes(layer: nn.Module) -> int:
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


def base_weight_nbytes(model: nn.Module) -> int:
    """Bytes of the base model's weights: every parameter except LoRA adapters, with 4-bit
    layers counted by :func:`layer_nbytes` (codes + quantization state). Buffers that are
    not weights (e.g. rotary tables) are left out. Works on labkit and PEFT models alike.
    """
    total, seen = 0, set()
    for mod in model.modules():
        if is_4bit(mod):
            total += layer_nbytes(mod)
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
            (:func:`base_weight_nbytes`).
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

    Raises:
        ValueError: a target matches nothing (the message lists the names that exist),
            matches a layer that is already 4-bit or is not an ``nn.Linear``, or bad options.
    """
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
    before = base_weight_nbytes(model)
    names, numel, t_before, t_after = [], 0, 0, 0
    for name, lin in hits:
        q = quantize_linear(lin, backend, quant_type, double_quant, blocksize, compute_dtype)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, q)
        names.append(name)
        numel += lin.weight.numel()
        t_before += _nbytes(lin.weight) + _nbytes(lin.bias)
        t_after += layer_nbytes(q) - _nbytes(q.bias)
        t_before -= _nbytes(lin.bias)
    for p in model.parameters():
        if p.is_floating_point():
            p.requires_grad_(False)
    disable_cpu_inference_repack(model)
    return QuantReport(backend, quant_type, double_quant, blocksize, compute_dtype, names, numel,
                       t_before, t_after, before, base_weight_nbytes(model), _kept(model))


def prepare_qlora(model: nn.Module, targets, *, r: int = 8, alpha: float = 16,
                  dropout: float = 0.0, quant_type: str = "nf4", double_quant: bool = True,
                  blocksize: int = 64, compute_dtype: torch.dtype | None = None,
                  backend: str = "auto", adapter_name: str = "default",
                  gradient_checkpointing: bool = False) -> QLoRAReport:
    """Make ``model`` a QLoRA model, in place: 4-bit frozen targets plus LoRA adapters.

    1. :func:`quantize_model`: the target linear layers become frozen 4-bit layers
       (NF4 + double quantization by default); embeddings, norms and the head stay.
    2. :func:`labkit.lora.add_lora` on the same targets: float32 adapters ``A`` and ``B``,
       the only parameters that train.
    3. Optionally, gradient checkpointing of the transformer blocks
       (:func:`enable_gradient_checkpointing`).

    Train it with :func:`labkit.train.train` as any LoRA model (``optimizer="paged_adamw"``
    on a GPU); save the adapters with :func:`labkit.adapters.save_adapter` (PEFT's format).

    Returns:
        A :class:`QLoRAReport`; ``print`` it for bytes before and after, and what stays in
        higher precision.

    Raises:
        ValueError: as :func:`quantize_model` and :func:`labkit.lora.add_lora`.
    """
    from labkit.lora import _check_hparams

    _check_hparams(r, alpha, dropout)  # before anything changes
    qrep = quantize_model(model, targets, quant_type=quant_type, double_quant=double_quant,
                          blocksize=blocksize, compute_dtype=compute_dtype, backend=backend)
    lrep = add_lora(model, targets, r=r, alpha=alpha, dropout=dropout,
                    adapter_name=adapter_name)
    _as_qlora(model)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return QLoRAReport(qrep, lrep, gradient_checkpointing)


# --------------------------------------------------------------------------- merging


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
        ValueError: the model has no QLoRA layers.
        RuntimeError: as :func:`labkit.lora.merge_lora` (merged already, disabled).
    """
    layers = _as_qlora(model)
    if not layers:
        raise ValueError("the model has no LoRA layers on a 4-bit base; use prepare_qlora() "
                         "first (or labkit.lora.merge_lora for a full-precision base)")
    if merged := [n for n, lay in layers if lay.merged]:
        raise RuntimeError(f"layers {merged[:3]} are merged already; unmerge_qlora(model) first")
    rows = []
    for name, lay in layers:
        if lay.active_adapter is None or not lay.adapters_enabled:
            continue
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
                w = w + mod.delta_weight(mod.active_adapter).float()
            bias = mod.base_layer.bias
        else:
            w, bias = dequantize_weight(mod), mod.bias
        out[f"{name}.weight"] = w.to(dtype).contiguous()
        if bias is not None:
            out[f"{name}.bias"] = bias.detach().to(dtype).clone()
    return out


def save_merged_16bit(model: nn.Module, path, dtype: torch.dtype = torch.bfloat16) -> int:
    """Write :func:`merged_16bit_state_dict` to a safetensors file; returns its bytes."""
    from pathlib import Path

    from safetensors.torch import save_file

    state = {k: v.contiguous().cpu() for k, v in merged_16bit_state_dict(model, dtype).items()}
    save_file(state, str(path), metadata={"format": "pt", "dtype": str(dtype)})
    return Path(path).stat().st_size


# --------------------------------------------------------------------------- memory savers


def enable_gradient_checkpointing(model: nn.Module, blocks: str = "layers") -> int:
    """Recompute each transformer block's activations in backward instead of storing them.

    Wraps the forward of every module in the ``nn.ModuleList`` called ``blocks``
    (``model.layers`` in labkit's and LLaMA's models) with
    ``torch.utils.checkpoint.checkpoint`` (non-reentrant). Only the block inputs are kept:
    activation memory drops from O(layers x block activations) to O(layers x one tensor
    + one block), at the price of a second forward pass per block in backward (about a
    third more compute). Active only while training with gradients enabled.

    Returns:
        The number of blocks wrapped.

    Raises:
        ValueError: no ``nn.ModuleList`` called ``blocks`` in the model.
    """
    from torch.utils.checkpoint import checkpoint

    lists = [m for n, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and n.rsplit(".", 1)[-1] == blocks]
    if not lists:
        have = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                       if isinstance(m, nn.ModuleList)})
        raise ValueError(f"no nn.ModuleList called {blocks!r} to checkpoint; the model has "
                         f"{have or 'none'}")
    n = 0
    for blist in lists:
        for block in blist:
            if getattr(block, "_checkpointed", False):
                continue
            inner = block.forward

            @functools.wraps(inner)
            def forward(*args, _inner=inner, _block=block, **kwargs):
                if _block.training and torch.is_grad_enabled():
                    return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
                return _inner(*args, **kwargs)

            block.forward = forward
            block._checkpointed = True
            n += 1
    return n

