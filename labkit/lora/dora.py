"""DoRA: weight-decomposed low-rank adaptation (Liu et al., 2024, arXiv:2402.09353).

DoRA splits each weight into a magnitude and a direction (paper, section 3, eq. 2) and lets
LoRA move the direction while a vector ``m`` (one number per output) sets the length::

    W' = m * (W + s B A) / ||W + s B A||_c          W: (d, k), A: (r, k), B: (d, r), m: (d,)

``||.||_c`` is the norm of each output's weights: in PyTorch's ``(out, in)`` layout, the L2
norm of each *row* of ``W + s B A`` (the paper writes ``W`` as ``(k, d)`` and says
"column"). ``m`` starts at ``||W||_c`` (``B = 0``), so an untrained DoRA adapter changes
nothing, and it trains with ``A`` and ``B``: ``d`` more trainable numbers per layer, e.g.
``r (d + k) + d`` = 16,384 + 1,024 for a 1024 x 1024 layer at ``r = 8``.

Forward never forms ``W'``. With ``g = m / ||W + s B A||_c`` (shape ``(d,)``)::

    y = W' x + bias = g * (W x) + g * s * B A x + bias
      = base(x) + (g - 1) * (W x) + g * s * B A x         (what :func:`dora_forward` adds)

The norm in ``g`` is *detached*: treated as a constant in the backward pass, so gradients
reach ``m``, ``A`` and ``B`` through the numerator only. The paper suggests this (section
4.3) to save the memory of the norm's backward; PEFT does it, and so does labkit (same
numbers as PEFT's, checked in ``tests/test_lora_variants_dora.py``).

Merging writes ``W' = g * (W + s B A)`` into the base (:func:`merged_weight`); the norm is
kept so that :func:`unmerged_weight` can divide it out again, as PEFT caches it.

Embeddings are refused (labkit's DoRA covers linear layers; PEFT also has an embedding
version). Everything here works on a :class:`labkit.lora.LoRALinear` through its
``base_weight()`` (so a 4-bit base is dequantized, and GPT-2's ``Conv1D`` read as
``(out, in)``).

Imports: torch only (the layer is passed in).
"""

from __future__ import annotations

from labkit._deps import torch  # one clear line when torch is missing

import torch.nn.functional as F
from torch import nn

#: PEFT's name for the magnitude: state-dict key ``<layer>.lora_magnitude_vector.<adapter>``,
#: file key ``base_model.model.<layer>.lora_magnitude_vector`` (see labkit.lora.files).
MAGNITUDE = "lora_magnitude_vector"


def check_dora(layer: nn.Module) -> None:
    """Refuse DoRA where labkit does not implement it: anything but a linear layer, or a
    layer whose base weight it cannot read (a 4-bit base not prepared by prepare_qlora)."""
    if not hasattr(layer, MAGNITUDE):
        raise ValueError(
            f"use_dora=True needs a linear layer; {type(layer).__name__} has no DoRA here "
            "(labkit's DoRA covers linear layers, as the paper does). Leave embeddings out of "
            "the targets, or add them in a second adapter without use_dora")
    try:
        layer.base_weight()
    except TypeError:
        raise ValueError(
            f"use_dora=True needs the base weight of each layer, and this "
            f"{type(layer.base_layer).__name__} base has no dense float weight to read; for a "
            "4-bit base use labkit.qlora.prepare_qlora(model, targets, use_dora=True), whose "
            "layers dequantize it") from None


@torch.no_grad()
def weight_norm(w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``||w + delta||`` per output (row), shape ``(d,)``, computed in float32 or better,
    without a gradient (the detached norm of section 4.3)."""
    dt = torch.promote_types(w.dtype, torch.float32)
    return torch.linalg.vector_norm(w.to(dt) + delta.to(dt), dim=1)


def _lora_weight(layer, name: str) -> torch.Tensor:
    """``s * B A``, shape ``(d, k)``, detached (only the norm uses it)."""
    with torch.no_grad():
        return layer.scaling[name] * (layer.lora_B[name].weight @ layer.lora_A[name].weight)


@torch.no_grad()
def init_magnitude(layer, name: str) -> None:
    """Set (or reset) adapter ``name``'s magnitude to ``||W + s B A||_c`` of the layer now.

    Called when the adapter is created (``B = 0``: ``m = ||W||_c``), and again after an
    initialisation that changes ``A``, ``B`` or the base (PiSSA, LoftQ, QLoRA's quantized
    residual), so that the adapted layer starts equal to ``W + s B A``.
    """
    check_dora(layer)
    m = weight_norm(layer.base_weight(), _lora_weight(layer, name))
    dtype = layer.lora_A[name].weight.dtype
    mags = getattr(layer, MAGNITUDE)
    if name in mags:
        mags[name].data = m.to(dtype)
    else:
        mags[name] = nn.Parameter(m.to(dtype))


def dora_forward(layer, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The DoRA layer's output: ``out + (g - 1) * (W x) + g * s * B A x``.

    Args:
        layer: a LoRALinear with a magnitude for ``name``.
        x: the adapter's input ``(..., k)``, in the adapters' dtype, before dropout.
        out: the base layer's output ``(..., d)``, ``W x + bias``.

    As in PEFT, without dropout (or in eval mode) ``W x`` is ``out - bias``, the base's own
    result; with dropout in training it is recomputed on the dropped-out input, so that the
    base term and the adapter term see the same ``x``.
    """
    A, B = layer.lora_A[name], layer.lora_B[name]
    s, drop = layer.scaling[name], layer.lora_dropout[name]
    w = layer.base_weight().to(x.dtype)  # (d, k): the frozen (or dequantized) weight
    g = layer.lora_magnitude_vector[name] / weight_norm(w, _lora_weight(layer, name)).to(x.dtype)
    if isinstance(drop, nn.Identity) or not layer.training:
        bias = layer.bias
        wx = out.to(x.dtype) - (bias.to(x.dtype) if bias is not None else 0)
    else:
        x = drop(x)
        wx = F.linear(x, w)
    return out + ((g - 1) * wx + g * (B(A(x)) * s)).to(out.dtype)


def merged_weight(layer, name: str, w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``g * (W + s B A)``, the weight of the adapted layer; remembers the norm on the layer
    (outside the state dict) for :func:`unmerged_weight`."""
    norm = weight_norm(w, delta)
    layer.__dict__.setdefault("_dora_norms", {})[name] = norm
    g = layer.lora_magnitude_vector[name].detach().to(norm.dtype) / norm
    return (g[:, None] * (w.to(norm.dtype) + delta.to(norm.dtype))).to(w.dtype)


def unmerged_weight(layer, name: str, w: torch.Tensor) -> torch.Tensor:
    """Undo :func:`merged_weight`: ``W = W' / g - s B A`` with the norm kept at merge time.

    Raises:
        RuntimeError: the layer was not merged by :func:`merged_weight` (no norm kept).
    """
    norm = layer.__dict__.get("_dora_norms", {}).pop(name, None)
    if norm is None:
        raise RuntimeError(f"DoRA adapter {name!r} has no weight norm kept from its merge; "
                           "it was not merged by labkit, so it cannot be unmerged exactly")
    g = layer.lora_magnitude_vector[name].detach().to(norm.dtype) / norm
    delta = layer.delta_weight(name).to(norm.dtype)
    return (w.to(norm.dtype) / g[:, None] - delta).to(w.dtype)
