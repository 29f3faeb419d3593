"""LoftQ: a 4-bit base and an adapter that start out closer to the float weight (Li et al.,
2023, arXiv:2310.08659, section 3, Algorithm 1).

QLoRA stores ``Q = quant(W)`` and starts the adapter at zero, so the model it fine-tunes is
off by the quantization error ``W - Q`` from the first step. LoftQ chooses ``Q`` and the
adapter together, alternating T times between quantizing and a rank-``r`` SVD::

    Q_t        = quant(W - s B_{t-1} A_{t-1})          (B_0 A_0 = 0: the first Q is QLoRA's)
    W - Q_t    = U S V^T                               (SVD of what Q_t misses)
    B_t = U_r sqrt(S_r / s),   A_t = sqrt(S_r / s) V_r^T        B: (d, r), A: (r, k)

so that ``Q_T + s B_T A_T`` is the best rank-``r`` correction of ``Q_T`` (Eckart-Young), and
``||W - (Q_T + s B_T A_T)||`` is below ``||W - quant(W)||``: the error QLoRA starts with.
Nothing here is random: the SVD is a full ``torch.linalg.svd`` (no random projections) and
the quantizer is deterministic, so the same ``W`` gives the same ``Q``, ``A``, ``B``.

Scaling: PEFT's ``loftq_init`` returns ``B A = (W - Q)_r``, ignoring the LoRA scaling ``s``
(peft issue #1982), so its model starts at ``Q + s (W - Q)_r``, the LoftQ approximation
only when ``s = 1`` (``alpha = r``). labkit divides by ``s`` (as PEFT's PiSSA does), so the
approximation holds for any ``alpha``; at ``s = 1`` the two are the same numbers
(``tests/test_lora_variants_loftq.py``).

The quantizer is the base's own: :func:`layer_roundtrip` quantizes with the back end, format,
block size and double-quantization setting that :func:`labkit.qlora.prepare_qlora` then
stores the base with, so the 4-bit base holds exactly ``Q_T``. (PEFT quantizes NF4 with
blocks of 64 and *without* double quantization; pass ``double_quant=False`` for the same Q.)

:func:`float_inits` runs LoftQ, or PiSSA (QPiSSA, arXiv:2404.02948, section 3.4: initialise
in float, then quantize the residual), on the float target layers of a model before
:func:`labkit.qlora.prepare_qlora` quantizes them.

Imports: torch, :mod:`labkit.quant` (the NF4 round trip), :mod:`labkit.qlora.linear4bit`,
:mod:`labkit.lora.init` (PiSSA's factors).
"""

from __future__ import annotations

from collections.abc import Callable

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch
from torch import nn

from labkit import quant as Q
from labkit.lora.init import pissa_factors
from labkit.qlora.linear4bit import _quantized, dequantize_weight

Quantizer = Callable[[torch.Tensor], torch.Tensor]  # w -> dequant(quant(w)), same shape


def nf4_roundtrip(blocksize: int = 64, quant_type: str = "nf4",
                  double_quant: bool = False) -> Quantizer:
    """``w -> dequantize(quantize(w))`` with :mod:`labkit.quant` (bitsandbytes' CPU codes bit
    for bit); the defaults are PEFT's LoftQ settings (NF4, blocks of 64, no double quant)."""

    def roundtrip(w: torch.Tensor) -> torch.Tensor:
        packed, state = Q.quantize_4bit(w, blocksize, quant_type, double_quant)
        return Q.dequantize_4bit(packed, state)

    return roundtrip


def layer_roundtrip(backend: str, quant_type: str, double_quant: bool, blocksize: int,
                    compute_dtype: torch.dtype, dtype: torch.dtype) -> Quantizer:
    """The round trip through the 4-bit layer itself (either back end): what the base will
    hold when a weight ``w`` (cast to ``dtype``, the layer's) is quantized."""

    def roundtrip(w: torch.Tensor) -> torch.Tensor:
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        lin.weight = nn.Parameter(w.detach().to(dtype), requires_grad=False)
        layer = _quantized(lin, backend, quant_type, double_quant, blocksize, compute_dtype)
        return dequantize_weight(layer)

    return roundtrip


@torch.no_grad()
def loftq_factors(w: torch.Tensor, r: int, scaling: float = 1.0, num_iter: int = 1,
                  quantize: Quantizer | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LoftQ for one weight ``w`` of shape ``(d, k)`` (module docstring).

    Args:
        w: the float weight.
        r: adapter rank; scaling: the adapter's ``s`` (``alpha / r``).
        num_iter: T, alternating steps (>= 1; T = 1 is one quantization and one SVD).
        quantize: the round trip; default :func:`nf4_roundtrip` (PEFT's settings).

    Returns:
        ``(source, Q, A, B)``: ``source`` is the float weight whose quantization is ``Q``
        (``W - s B_{T-1} A_{T-1}``; store ``quant(source)`` as the base), ``Q`` the dequantized
        base, ``A: (r, k)`` and ``B: (d, r)`` float32, with ``Q + s B A`` close to ``w``.

    Raises:
        ValueError: ``num_iter`` < 1, ``r`` not in 1..min(d, k), ``w`` not 2-D.
    """
    if w.dim() != 2:
        raise ValueError(f"LoftQ works on a 2-D weight (out, in), got shape {tuple(w.shape)}")
    if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 1:
        raise ValueError(f"LoftQ needs num_iter >= 1 alternating steps, got {num_iter!r}")
    if not 1 <= r <= min(w.shape):
        raise ValueError(f"LoftQ rank r={r} must be in 1..{min(w.shape)} for a "
                         f"{tuple(w.shape)} weight")
    quantize = quantize or nf4_roundtrip()
    w = w.float()
    source = w
    for t in range(num_iter):
        q = quantize(source).float()  # Q_t, dequantized: (d, k)
        U, S, Vh = torch.linalg.svd(w - q, full_matrices=False)  # what Q_t misses
        root = torch.sqrt(S[:r] / scaling)
        B, A = U[:, :r] * root, root[:, None] * Vh[:r]  # (d, r), (r, k)
        if t + 1 == num_iter:
            break
        source = w - scaling * (B @ A)  # quantize next what the adapter does not carry
    return source, q, A, B


@torch.no_grad()
def init_error(w: torch.Tensor, q: torch.Tensor, delta: torch.Tensor | None = None) -> float:
    """Frobenius norm of what the model starts off by: ``||W - (Q + delta)||`` (QLoRA:
    ``delta = 0``; LoftQ and QPiSSA: ``s B A``)."""
    err = w.float() - q.float() - (0 if delta is None else delta.float())
    return float(torch.linalg.matrix_norm(err))


@torch.no_grad()
def float_inits(hits: list[tuple[str, nn.Linear]], init: str, r: int, scaling: float,
                quantize: Quantizer, num_iter: int = 1
                ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Initialise adapters from the float weights of ``hits`` (``(name, nn.Linear)``) and
    rewrite each weight to what its 4-bit base must hold; returns ``{name: (A, B)}``.

    ``"pissa"``: the weight becomes the residual ``W - s B A`` (quantized afterwards:
    QPiSSA). ``"loftq"``: the weight becomes LoftQ's ``source``, whose quantization by
    ``quantize`` (the base's own round trip) is ``Q_T``.
    """
    out = {}
    for name, lin in hits:
        w = lin.weight
        if init == "pissa":
            A, B, source = pissa_factors(w, r, scaling)
        else:
            source, _, A, B = loftq_factors(w, r, scaling, num_iter, quantize)
        w.data.copy_(source.to(w.dtype))
        out[name] = (A, B)
    return out
