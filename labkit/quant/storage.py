"""What a 4-bit format costs: its bytes and bits per weight, and the error it brings.

* ``quantized_nbytes``: the exact bytes of a 4-bit tensor (packed codes plus state);
* ``bits_per_weight``: the same per weight, or its limit for a large layer (NF4 with blocks
  of 64: 4.5 plain, 4.127 with double quantization);
* ``quant_state_nbytes``: the bytes a :class:`~labkit.quant.state.QuantState` holds;
* ``quantization_error``: how far a round trip moves the weights, the other side of the
  trade-off (fewer bits, more error), to compare formats on the same weights.

May import: :mod:`labkit.quant.inputs`, :mod:`labkit.quant.state`,
:mod:`labkit.quant.blockwise` (and torch, through them and ``labkit._deps``).
"""

from __future__ import annotations

import math

from labkit._deps import torch  # one clear line when torch is missing

from labkit.quant.blockwise import dequantize_4bit, quantize_4bit
from labkit.quant.inputs import _as_int, _check_blocksize, _check_flag, _check_quant_type
from labkit.quant.state import DOUBLE_QUANT_BLOCKSIZE, QuantState


def quantized_nbytes(
    numel: int,
    blocksize: int = 64,
    double_quant: bool = True,
    quant_type: str = "nf4",
    nested_blocksize: int = DOUBLE_QUANT_BLOCKSIZE,
    count_codebooks: bool = True,
) -> int:
    """Exact bytes of a 4-bit tensor of ``numel`` values: packed codes plus quantization state.

    ================================  =============================================
    packed codes                      ceil(numel / 2) bytes
    absmax, plain                     4 bytes per block (float32)
    absmax, double quantization       1 byte per block + 4 per nested block + 4 (offset)
    codebooks (``count_codebooks``)   16 * 4 bytes; + 256 * 4 with double quantization
    ================================  =============================================

    with blocks = ceil(numel / blocksize) and nested blocks = ceil(blocks / 256). The
    codebooks are per-layer constants in bitsandbytes' saved state ("quant_map",
    "nested_quant_map"); in memory they could be shared, hence the switch.

    Counts (``numel``, ``blocksize``, ``nested_blocksize``) are ints (numpy integers pass;
    floats and bools raise ``ValueError``); the switches are True or False (``TypeError``).
    """
    _check_quant_type(quant_type)
    blocksize = _check_blocksize(blocksize)
    numel = _as_int(numel, "numel")
    _check_flag(double_quant, "double_quant")
    _check_flag(count_codebooks, "count_codebooks")
    nested_blocksize = _as_int(nested_blocksize, "nested_blocksize")
    blocks = -(-numel // blocksize)
    nbytes = -(-numel // 2)
    if double_quant:
        nbytes += blocks + 4 * -(-blocks // nested_blocksize) + 4
    else:
        nbytes += 4 * blocks
    if count_codebooks:
        nbytes += 16 * 4 + (256 * 4 if double_quant else 0)
    return nbytes


def bits_per_weight(
    quant_type: str = "nf4",
    blocksize: int = 64,
    double_quant: bool = True,
    numel: int | None = None,
    nested_blocksize: int = DOUBLE_QUANT_BLOCKSIZE,
    count_codebooks: bool = True,
) -> float:
    """Storage cost in bits per weight of a 4-bit format.

    With ``numel=None``, the limit for a large layer (per-layer constants vanish)::

        plain:                 4 + 32 / blocksize                       (NF4, 64: 4.5)
        double quantization:   4 + 8 / blocksize + 32 / (blocksize * 256)  (NF4, 64: 4.127)

    With ``numel``, the exact figure for that layer, ``8 * quantized_nbytes(...) / numel``,
    including partial blocks, the odd byte, the offset and (by default) the codebooks.
    """
    if numel is not None:  # the exact figure; quantized_nbytes checks every argument
        nbytes = quantized_nbytes(
            numel, blocksize, double_quant, quant_type, nested_blocksize, count_codebooks
        )
        return 8 * nbytes / _as_int(numel, "numel")
    _check_quant_type(quant_type)
    blocksize = _check_blocksize(blocksize)
    _check_flag(double_quant, "double_quant")
    _check_flag(count_codebooks, "count_codebooks")
    nested_blocksize = _as_int(nested_blocksize, "nested_blocksize")
    if double_quant:
        return 4 + 8 / blocksize + 32 / (blocksize * nested_blocksize)
    return 4 + 32 / blocksize


def quant_state_nbytes(state: QuantState, count_codebooks: bool = True) -> int:
    """Bytes held by the tensors of ``state`` (absmax, offset, nested absmax, codebooks).

    Add ``packed.numel()`` for the codes themselves; the sum equals ``quantized_nbytes``.
    A state whose fields do not fit together is refused (``QuantState.check``).
    """
    if not isinstance(state, QuantState):
        raise TypeError(
            f"quant_state_nbytes needs a labkit.quant.QuantState, got {type(state).__name__}"
        )
    state.check()
    _check_flag(count_codebooks, "count_codebooks")

    def size(t: torch.Tensor | None) -> int:
        return 0 if t is None else t.numel() * t.element_size()

    nbytes = size(state.absmax) + size(state.offset) + size(state.nested_absmax)
    if count_codebooks:
        nbytes += size(state.code) + size(state.nested_code)
    return nbytes


def quantization_error(
    x: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = False
) -> dict[str, float]:
    """How far a 4-bit round trip moves ``x``: mean squared, mean absolute and largest error.

    Useful to compare formats on the same weights, e.g. NF4 against FP4 and Int4 on normal
    data (NF4 has the smallest error there, the QLoRA paper's point).

    Returns:
        {"mse": ..., "mae": ..., "max_abs": ..., "rel_rmse": rms(error) / rms(x)}.

    The squares are taken in float32. When ``x``'s largest magnitude lies outside
    [2^-40, 2^40] they would overflow to inf or underflow to 0 (``mse`` inf, ``rel_rmse``
    NaN or 0), so the error and ``x`` are first multiplied by a power of two (exact), and
    the figures divided by it again in float64; within that range nothing is rescaled.
    """
    packed, state = quantize_4bit(x, blocksize, quant_type, double_quant)  # checks x
    error = (dequantize_4bit(packed, state).float() - x.float()).reshape(-1)
    values = x.float()
    largest = values.abs().max().item()  # finite: quantize_4bit refuses NaN and inf
    scale = 1.0
    if largest > 0 and not 2.0**-40 <= largest <= 2.0**40:
        scale = 2.0 ** -math.frexp(largest)[1]  # brings the largest magnitude into [0.5, 1)
        error, values = error * scale, values * scale
    rms_x = values.pow(2).mean().sqrt().item() / scale
    mse = error.pow(2).mean().item() / scale**2
    return {
        "mse": mse,
        "mae": error.abs().mean().item() / scale,
        "max_abs": error.abs().max().item() / scale,
        "rel_rmse": math.sqrt(mse) / rms_x if rms_x > 0 else 0.0,
    }
