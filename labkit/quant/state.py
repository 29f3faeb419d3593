"""The quantization state, and double quantization: its absmax values stored in 8 bits.

``quantize_4bit`` returns the packed codes and a :class:`QuantState`: everything else needed
to dequantize (absmax per block, shape, dtype, block size, codebook). Plain, the absmax
values are float32: 32 / 64 = 0.5 bits per weight for blocks of 64.

**Double quantization** (QLoRA section 3) stores them in 8 bits: subtract their mean
(``offset``) and quantize the rest blockwise, in blocks of 256, with bitsandbytes' "dynamic"
8-bit code (``quantize_blockwise_8bit``); the 256 nested absmax values stay float32. That is
8/64 + 32/(64*256) = 0.127 bits per weight. ``QuantState.float_absmax`` undoes it.

The 8-bit quantizer follows bitsandbytes' own rules for finding a code (a 65536-point grid
on the CPU, a binary search in the CUDA kernel); both live in :mod:`labkit.quant.bnb_rules`.

May import: torch (through ``labkit._deps``), :mod:`labkit.quant.inputs`,
:mod:`labkit.quant.codebooks`, :mod:`labkit.quant.bnb_rules`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from labkit._deps import torch  # one clear line when torch is missing

from labkit.quant.bnb_rules import _LUT_SIZE, _cuda_8bit_search, _flush_subnormals, _grid_table
from labkit.quant.codebooks import dynamic_codebook
from labkit.quant.inputs import (
    _as_int,
    _check_codebook,
    _check_float_input,
    _check_kernel,
    _check_sorted_code,
    _check_state,
    _check_tensor,
    _raise_not_finite,
)

# --------------------------------------------------------------------------------------
# Quantization state
# --------------------------------------------------------------------------------------


#: Double quantization quantizes the absmax values in blocks of this many (QLoRA, sec. 3).
DOUBLE_QUANT_BLOCKSIZE = 256


@dataclass(eq=False)  # tensors inside: compare fields explicitly
class QuantState:
    """Everything needed to dequantize a 4-bit tensor (the packed bytes live apart).

    Attributes:
        absmax: float32 (n_blocks,) scales; with double quantization, uint8 (n_blocks,)
            indices into ``nested_code`` instead.
        shape: the original tensor's shape.
        dtype: the original dtype (float32, bfloat16 or float16); dequantize returns it.
        blocksize: values per block.
        quant_type: "nf4", "fp4" or "int4".
        code: the float32 (16,) codebook.
        offset: double quantization only: float32 scalar, the mean of the absmax values.
        nested_absmax: double quantization only: float32 (ceil(n_blocks / 256),) scales of
            the quantized absmax values.
        nested_code: double quantization only: the float32 (256,) dynamic code.
        nested_blocksize: absmax values per nested block (256).

    The double-quantization fields come together: uint8 ``absmax`` with ``nested_absmax``
    and ``offset`` (``nested_code`` None means ``dynamic_codebook()``), or float ``absmax``
    and none of them. :meth:`check` refuses any other mix, and wrong sizes or types.
    """

    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int
    quant_type: str
    code: torch.Tensor
    offset: torch.Tensor | None = None
    nested_absmax: torch.Tensor | None = None
    nested_code: torch.Tensor | None = None
    nested_blocksize: int = DOUBLE_QUANT_BLOCKSIZE

    @property
    def double_quant(self) -> bool:
        """True when the absmax values are themselves quantized."""
        return self.nested_absmax is not None

    @property
    def numel(self) -> int:
        """Number of quantized values."""
        return math.prod(self.shape)

    @property
    def n_blocks(self) -> int:
        """Number of blocks, ceil(numel / blocksize)."""
        return -(-self.numel // self.blocksize)

    def to(self, device: torch.device | str) -> QuantState:
        """A copy of the state with its tensors on ``device``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return QuantState(
            absmax=move(self.absmax), shape=self.shape, dtype=self.dtype,
            blocksize=self.blocksize, quant_type=self.quant_type, code=move(self.code),
            offset=move(self.offset), nested_absmax=move(self.nested_absmax),
            nested_code=move(self.nested_code), nested_blocksize=self.nested_blocksize,
        )

    def check(self, packed: torch.Tensor | None = None) -> None:
        """Refuse a state whose fields do not fit together, or do not fit ``packed``.

        O(1): types, dtypes, sizes and devices, no values (a state from ``quantize_4bit``
        passes). ``dequantize_4bit`` calls it before any arithmetic.

        Raises:
            TypeError: a field of the wrong type, or a ``dtype`` that is not float32,
                bfloat16 or float16.
            ValueError: an unknown ``quant_type`` or block size, sizes that disagree with
                ``shape`` and ``blocksize``, a half-present double quantization (e.g.
                uint8 ``absmax`` without ``nested_absmax``, whose codes would otherwise be
                read as scales), tensors on another device than ``packed``.
        """
        _check_state(self, packed)

    def float_absmax(self) -> torch.Tensor:
        """The float32 absmax per block (dequantizing it first under double quantization)."""
        self.check()
        return self._float_absmax()

    def _float_absmax(self) -> torch.Tensor:
        """``float_absmax`` for a state that passed :meth:`check`."""
        if not self.double_quant:
            return self.absmax
        # bnb detail: bnb dequantizes the 8-bit absmax to float32, then adds the offset.
        scales = dequantize_blockwise_8bit(
            self.absmax, self.nested_absmax, self.nested_code, self.nested_blocksize
        )
        return scales + self.offset


# --------------------------------------------------------------------------------------
# 8-bit blockwise quantization (for the absmax values under double quantization)
# --------------------------------------------------------------------------------------


@cache
def _dynamic_code(device: torch.device) -> torch.Tensor:
    return dynamic_codebook().to(device)


@torch.no_grad()
def quantize_blockwise_8bit(
    x: torch.Tensor,
    code: torch.Tensor | None = None,
    blocksize: int = DOUBLE_QUANT_BLOCKSIZE,
    kernel: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit blockwise quantization, bit for bit like bitsandbytes' ``quantize_blockwise``.

    Per block: ``absmax = max |x|``; each ``x / absmax`` is mapped to a level of ``code``.
    bitsandbytes' CPU path does that through a 65536-point grid (see ``_grid_table``)::

        grid_index = trunc(((clamp(x * (1 / absmax), -1, 1) + 1) * 0.5) * 65535 + 0.5)
        index      = table[grid_index]

    all in float32; its CUDA kernel searches the code instead (see ``_cuda_8bit_search``).
    Used by double quantization for the (mean-centred) absmax values.

    Args:
        x: float tensor, any shape (flattened; float32 arithmetic).
        code: sorted 256-level codebook in [-1, 1]; default ``dynamic_codebook()``.
        blocksize: values per block (256 for double quantization).
        kernel: "cpu", "cuda" or "auto", as in ``quantize_4bit``.

    Returns:
        q: uint8 indices, same shape as ``x``.
        absmax: float32 (ceil(numel / blocksize),).
    """
    _check_float_input(x, "quantize_blockwise_8bit")
    blocksize = _as_int(blocksize, "blocksize")
    kernel = _check_kernel(kernel, x.device)
    if code is None:
        code = _dynamic_code(x.device)
    else:
        _check_sorted_code(code)
        code = code.to(x.device, torch.float32)
    flat = x.reshape(-1).float()
    n = flat.numel()
    n_blocks = -(-n // blocksize)
    blocks = torch.zeros(n_blocks * blocksize, dtype=torch.float32, device=x.device)
    blocks[:n] = _flush_subnormals(flat) if kernel == "cuda" else flat  # as in 4 bits
    blocks = blocks.view(n_blocks, blocksize)  # zero padding leaves every absmax unchanged
    absmax = blocks.abs().amax(dim=1)
    if not torch.isfinite(absmax).all():
        _raise_not_finite(flat, "quantize_blockwise_8bit")

    # bnb detail: multiply by the float32 reciprocal; an all-zero block stores absmax 0
    # and index 0 for every value (which dequantizes to code[0] * 0 = -0.0).
    zero = absmax == 0
    reciprocal = torch.where(zero, torch.zeros_like(absmax), 1.0 / absmax)
    scaled = (blocks * reciprocal.unsqueeze(1)).clamp_(-1.0, 1.0)
    if kernel == "cuda":
        q = _cuda_8bit_search(_flush_subnormals(scaled), code)
    else:
        grid_index = ((scaled + 1.0) * 0.5 * (_LUT_SIZE - 1) + 0.5).to(torch.int32)
        table = _grid_table(tuple(code.tolist()), x.device)
        q = table.index_select(0, grid_index.reshape(-1)).view(n_blocks, blocksize)
    q.masked_fill_(zero.unsqueeze(1), 0)
    return q.reshape(-1)[:n].reshape(x.shape), absmax


def dequantize_blockwise_8bit(
    q: torch.Tensor,
    absmax: torch.Tensor,
    code: torch.Tensor | None = None,
    blocksize: int = DOUBLE_QUANT_BLOCKSIZE,
) -> torch.Tensor:
    """Undo ``quantize_blockwise_8bit``: float32 ``code[q] * absmax[block]``, shape of ``q``."""
    if not isinstance(q, torch.Tensor) or q.dtype != torch.uint8:
        got = q.dtype if isinstance(q, torch.Tensor) else type(q).__name__
        raise TypeError(f"dequantize_blockwise_8bit needs uint8 indices, got {got}")
    _check_tensor(absmax, "absmax")
    if not absmax.is_floating_point():
        raise TypeError(
            f"absmax must hold the float scales quantize_blockwise_8bit returned, got "
            f"{absmax.dtype}; were the arguments swapped?"
        )
    if absmax.device != q.device:
        raise ValueError(f"absmax is on {absmax.device} but q on {q.device}; move one of them")
    blocksize = _as_int(blocksize, "blocksize")
    if code is None:
        code = _dynamic_code(q.device)
    else:
        _check_codebook(code, "code", 256)
        code = code.to(q.device, torch.float32)
    n = q.numel()
    if absmax.numel() != -(-n // blocksize):
        raise ValueError(
            f"absmax has {absmax.numel()} entries but {n} values in blocks of {blocksize} "
            f"need {-(-n // blocksize)}"
        )
    if code.numel() < 256 and n:
        largest = int(q.max())
        if largest >= code.numel():
            raise ValueError(
                f"code index {largest} is outside the codebook, which has {code.numel()} "
                f"levels (indices 0..{code.numel() - 1})"
            )
    values = code[q.reshape(-1).long()]
    scale = absmax.float().repeat_interleave(blocksize)[:n]
    return (values * scale).reshape(q.shape)
