"""The frozen 4-bit linear layer, with either of two back ends, and how to build one.

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

Holds: the back-end and compute-dtype choices (:func:`resolve_backend`,
:func:`resolve_compute_dtype`), labkit's layer (:class:`Params4bit`, the dequantizing
autograd function, :class:`Linear4bit`), and what works on both back ends
(:func:`is_4bit`, :func:`quantize_linear`, :func:`dequantize_weight`,
:func:`disable_cpu_inference_repack`).

Imports from labkit: ``_api`` (warn-once), ``_deps`` (bitsandbytes, imported only when
used), :mod:`labkit.quant` (the 4-bit format), :mod:`labkit.lora` (to recognise a LoRA
layer wrapping a 4-bit base).
"""

from __future__ import annotations

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch
import torch.nn.functional as F
from torch import nn

from labkit import quant as Q
from labkit._api import warn_once
from labkit.lora import LoRALayer

BACKENDS = ("auto", "bnb", "labkit")


class QLoRAWarning(UserWarning):
    """A fallback labkit took (back end, compute dtype): shown once per process."""


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
        warn_once(f"qlora:backend-{device.type}",
                  f"bitsandbytes has no 4-bit path for {device.type}; using labkit's reference "
                  "4-bit layer (same numbers, pure PyTorch)", QLoRAWarning)
        return "labkit"
    try:
        _deps.import_bnb()
    except ImportError as exc:
        warn_once("qlora:backend-import", f"bitsandbytes is unavailable ({exc}); using "
                  "labkit's reference 4-bit layer (same numbers, pure PyTorch)", QLoRAWarning)
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
            warn_once("qlora:fp16", "this GPU has no bfloat16; computing the 4-bit matmuls "
                      "in float16 instead (watch for overflow: keep the adapters in float32)",
                      QLoRAWarning)
            return torch.float16
        return torch.bfloat16 if compute_dtype is None else compute_dtype
    if compute_dtype == torch.float16:
        raise ValueError("float16 compute is not supported on the CPU (slow, and labkit.train "
                         "refuses it there); use compute_dtype=torch.bfloat16 or torch.float32")
    return torch.float32 if compute_dtype is None else compute_dtype


# --------------------------------------------------------------------------- labkit's layer


class Params4bit(nn.Parameter):
    """A frozen parameter holding packed 4-bit codes (uint8, two codes a byte).

    Named like bitsandbytes' class on purpose: :func:`labkit.lora.model_params` (as PEFT)
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
        ValueError: ``linear`` is 4-bit already, is not an ``nn.Linear``, bad options, or
            its weight holds NaN or inf (with either back end).
        TypeError: its weight is not float32, bfloat16 or float16.
    """
    device = linear.weight.device if isinstance(getattr(linear, "weight", None),
                                                torch.Tensor) else torch.device("cpu")
    backend = resolve_backend(backend, device)
    compute_dtype = resolve_compute_dtype(compute_dtype, device)
    _check_quantizable(linear, "quantize_linear", backend, quant_type, blocksize)
    return _quantized(linear, backend, quant_type, double_quant, blocksize, compute_dtype)


def _check_quantizable(linear: nn.Module, what: str, backend: str, quant_type: str,
                       blocksize: int) -> None:
    """Everything :func:`quantize_linear` refuses, for either back end, before it builds
    anything: a 4-bit or non-``nn.Linear`` layer, bad options, a weight that is not float32
    / bfloat16 / float16, or one that holds NaN or inf (bitsandbytes would quantize it to
    an all-NaN layer without a word). ``what`` names the layer in the message."""
    if is_4bit(linear) or isinstance(linear, LoRALayer) and is_4bit(linear.base_layer):
        raise ValueError(f"{what}: the layer is already quantized to 4 bits; quantizing twice "
                         "would stack two rounding errors. Quantize the full-precision model "
                         "once.")
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"{what}: only nn.Linear layers can be quantized to 4 bits, got "
                         f"{type(linear).__name__}")
    Q._check_quant_type(quant_type)
    Q._check_blocksize(blocksize)
    if backend == "bnb" and quant_type not in ("nf4", "fp4"):
        raise ValueError(f"bitsandbytes quantizes to 'nf4' or 'fp4', not {quant_type!r}; "
                         "use backend='labkit' for int4")
    w = linear.weight.detach()
    Q._check_float_input(w, what)
    if not bool(torch.isfinite(w).all()):
        Q._raise_not_finite(w, what)


def _quantized(linear: nn.Linear, backend: str, quant_type: str, double_quant: bool,
               blocksize: int, compute_dtype: torch.dtype) -> nn.Module:
    """The 4-bit layer, with every input already checked (:func:`_check_quantizable`)."""
    if backend == "bnb":
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

