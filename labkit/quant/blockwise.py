"""Blockwise 4-bit quantization, step by step: absmax, nearest code, packing, and back.

This is the storage format QLoRA (Dettmers et al. 2023, arXiv:2305.14314) uses for the frozen
base model, written in plain PyTorch so that a learner can read every step, in this order:

1. **Blocks and absmax** (``_scale_blocks``). The flattened weight is cut into blocks of
   ``blocksize`` values (64 by default). Each block is divided by its largest magnitude, its
   *absmax*, so every value lands in [-1, 1]; the absmax is kept (float32) to undo the
   scaling.
2. **Nearest code** (``nearest_code_index``). Each scaled value is replaced by the index of
   the nearest of the 16 levels of a codebook (:mod:`labkit.quant.codebooks`).
3. **Packing** (``pack_nibbles``). Two 4-bit indices share one byte: the first value in the
   high nibble.
4. ``quantize_4bit`` runs the three steps (and, with ``double_quant``, stores the absmax
   values in 8 bits: :mod:`labkit.quant.state`); ``dequantize_4bit`` undoes them with a
   table look-up and a multiply: ``w ~ code[index] * absmax[block]``.

What runs is this algorithm. Two steps are sped up by look-up tables that give exactly the
same bits (:mod:`labkit.quant.fast_lookup`, each shown equal by a test); the rounding details
that make the result bit-identical to bitsandbytes are marked ``bnb detail``, and the ones
that only its CUDA kernel has live in :mod:`labkit.quant.bnb_rules`.

May import: torch (through ``labkit._deps``) and the modules of :mod:`labkit.quant` that
come before it: ``inputs``, ``codebooks``, ``bnb_rules``, ``fast_lookup``, ``state``.
"""

from __future__ import annotations

from functools import partial

from labkit._deps import torch  # one clear line when torch is missing

from labkit.quant.bnb_rules import _cuda_code_index, _scale_blocks_cuda
from labkit.quant.codebooks import CODEBOOKS
from labkit.quant.fast_lookup import _code_lookup, _pair_table
from labkit.quant.inputs import (
    _as_int,
    _check_blocksize,
    _check_codebook,
    _check_flag,
    _check_float_input,
    _check_kernel,
    _check_quant_type,
    _check_tensor,
    _raise_not_finite,
)
from labkit.quant.state import (
    DOUBLE_QUANT_BLOCKSIZE,
    QuantState,
    _dynamic_code,
    quantize_blockwise_8bit,
)

# --------------------------------------------------------------------------------------
# Blocks and absmax
# --------------------------------------------------------------------------------------


# bnb detail: bnb clamps the absmax to at least 1e-38 before taking its reciprocal, so an
# all-zero block scales by 1e38 instead of dividing by zero (and blocks whose absmax is a
# subnormal float below 1e-38 are scaled by 1e38 too, so they quantize towards zero).
_ABSMAX_FLOOR = 1e-38


def _scale_blocks(
    flat: torch.Tensor, blocksize: int, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax and the scaled values x / absmax, as bitsandbytes' CPU path does it.

    Returns:
        absmax: float32 (n_blocks,).
        scaled: float32 (n + n % 2,): the scaled values, plus one 0.0 when n is odd.
    """
    n = flat.numel()
    full = n - n % blocksize
    blocks = flat[:full].view(-1, blocksize)
    # max |x| = max(-min, max); aminmax reads the block once (abs() would write a copy).
    # abs_() only turns a -0.0 (from an all-zero block) into +0.0, as abs().max() gives.
    low, high = torch.aminmax(blocks, dim=1)
    absmax = torch.maximum(-low, high).float().abs_()

    scaled = torch.empty(n + n % 2, dtype=torch.float32, device=flat.device)
    # bnb detail: full blocks are *multiplied by the float32 reciprocal* of the (floored)
    # absmax, not divided by it; the two can differ in the last bit.
    # (bnb then clamps to [-1, 1]; that never changes the nearest level, so we skip it.)
    reciprocal = 1.0 / absmax.clamp(min=_ABSMAX_FLOOR)
    torch.mul(blocks, reciprocal.unsqueeze(1), out=scaled[:full].view(-1, blocksize))
    if full < n:
        # bnb detail: the last, partial block is *divided* by its absmax, and the absmax it
        # stores is the floored one (1e-38 for an all-zero tail; 0 for an all-zero full block).
        tail = flat[full:].float()
        tail_absmax = tail.abs().max().clamp(min=_ABSMAX_FLOOR)
        scaled[full:n] = tail / tail_absmax
        absmax = torch.cat([absmax, tail_absmax.reshape(1)])
    if n % 2:
        # bnb detail: an odd count is padded with a scaled 0.0, so the last byte's low
        # nibble is the code of zero (7 for NF4), not 0.
        scaled[n] = 0.0
    if not torch.isfinite(absmax).all():
        _raise_not_finite(flat, what)
    return absmax, scaled


# --------------------------------------------------------------------------------------
# Nearest code
# --------------------------------------------------------------------------------------


def _sorted_bounds(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort a codebook; return the midpoints between neighbours and the sort order.

    bnb detail: bitsandbytes' CPU path sorts the code with ``argsort`` and keeps equal
    levels (FP4's +0 and -0) in table order, which a stable sort reproduces. Midpoints are
    computed in float32 as ``(a + b) / 2``.
    """
    order = torch.argsort(code, stable=True)
    levels = code[order]
    return (levels[:-1] + levels[1:]) / 2, order


def nearest_code_index(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook level for each scaled value (the readable reference).

    A value between two neighbouring levels goes to the one on its side of their midpoint;
    ``torch.bucketize`` counts the midpoints strictly below the value, which is the position
    of the nearest level in sorted order. ``order`` maps that position back to the code.

    bnb detail: a value exactly on a midpoint goes to the *lower* level (bucketize's
    ``right=False``), as in bitsandbytes. For FP4 the two zero codes sit side by side in
    sorted order with a midpoint of 0 between them: 0 and tiny negative values get code 0,
    tiny positive values code 8 (the "negative zero" pattern; both decode to 0.0).

    ``quantize_4bit`` runs this rule (``_exact_rule``) through a look-up table that gives
    the same answer faster (``fast_lookup._CodeLookup``); a test compares the two.

    Args:
        scaled: float32 values, normally in [-1, 1], any shape.
        code: the codebook, shape (K,).

    Returns:
        uint8 tensor of ``scaled``'s shape (or int64 when the code has more than 256 levels).
    """
    _check_tensor(scaled, "scaled")
    _check_codebook(code, "code")
    bounds, order = _sorted_bounds(code.to(scaled.device))
    position = torch.bucketize(scaled, bounds)
    index = order[position]
    return index.to(torch.uint8) if code.numel() <= 256 else index


def _exact_rule(quant_type: str, kernel: str, device: torch.device):
    """The exact per-value code rule for ``quant_type`` under ``kernel``'s rules.

    "cpu": ``nearest_code_index`` with the format's codebook. "cuda": bitsandbytes' CUDA
    decision tree (``bnb_rules._cuda_code_index``), which differs from it on a few values.
    """
    if kernel == "cuda":
        return partial(_cuda_code_index, quant_type=quant_type)
    return partial(nearest_code_index, code=CODEBOOKS[quant_type].to(device))


# --------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------


def pack_nibbles(codes: torch.Tensor, fill: int = 0) -> torch.Tensor:
    """Pack 4-bit codes two per byte: element 2i in the high nibble, 2i + 1 in the low one.

    Args:
        codes: uint8 tensor of values 0..15, any shape (flattened).
        fill: the nibble (0..15) that pads an odd count (``quantize_4bit`` pads with the code
            of 0.0 instead, before this step, as bitsandbytes does).

    Returns:
        uint8 tensor of shape (ceil(n / 2),).

    Raises:
        TypeError: ``codes`` is not a uint8 tensor.
        ValueError: a code above 15 (it would spill into its neighbour's nibble), or a
            ``fill`` outside 0..15.
    """
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise TypeError(f"pack_nibbles needs uint8 codes, got {got}; use codes.to(torch.uint8)")
    fill = _as_int(fill, "fill", low=0)
    if fill > 15:
        raise ValueError(f"fill must be a 4-bit code 0..15, got {fill}")
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError(
            f"pack_nibbles got code {int(codes.max())}; 4-bit codes are 0..15 (a larger one "
            "would spill into its neighbour's nibble). Are these 8-bit codes?"
        )
    return _pack_nibbles(codes, fill)


def _pack_nibbles(codes: torch.Tensor, fill: int = 0) -> torch.Tensor:
    """``pack_nibbles`` without its checks, for codes known to be 0..15 (``quantize_4bit``)."""
    flat = codes.reshape(-1)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_full((1,), fill)])
    pairs = flat.view(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack_nibbles(packed: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Inverse of ``pack_nibbles``: uint8 codes 0..15, shape (n,) (default: 2 per byte).

    ``n`` is the count that was packed: 2 * bytes, or 2 * bytes - 1 when it was odd; any
    other count means ``packed`` holds another tensor's codes (ValueError).
    """
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise TypeError(f"unpack_nibbles needs uint8 bytes, got {got}")
    flat = packed.reshape(-1)
    if n is not None:
        n = _as_int(n, "n", low=0)
        if (n + 1) // 2 != flat.numel():
            raise ValueError(
                f"unpack_nibbles: {flat.numel()} bytes hold {2 * flat.numel() - 1} or "
                f"{2 * flat.numel()} codes, not n={n}; pass the count that was packed (or "
                "slice the result)"
            )
    codes = torch.stack([flat >> 4, flat & 0x0F], dim=1).reshape(-1)
    return codes if n is None else codes[:n]


# --------------------------------------------------------------------------------------
# 4-bit quantize / dequantize
# --------------------------------------------------------------------------------------


@torch.no_grad()  # quantizing is not differentiable; also accepts nn.Parameter weights
def quantize_4bit(
    x: torch.Tensor,
    blocksize: int = 64,
    quant_type: str = "nf4",
    double_quant: bool = False,
    kernel: str = "auto",
) -> tuple[torch.Tensor, QuantState]:
    """Blockwise 4-bit quantization, bit for bit like ``bitsandbytes.functional.quantize_4bit``.

    For each block b of ``blocksize`` consecutive values (of ``x`` flattened)::

        absmax[b] = max |x_i|                     over the block, float32
        index_i   = argmin_k |x_i / absmax[b] - code[k]|     (ties: the lower level)
        packed    = two indices per byte, first one in the high nibble

    With ``double_quant`` the absmax values are stored in 8 bits (see
    ``quantize_blockwise_8bit``): ``offset = mean(absmax)`` and ``absmax - offset`` is
    quantized with the dynamic code in blocks of 256.

    Args:
        x: float32, bfloat16 or float16 tensor, any shape, finite values.
        blocksize: one of ``BLOCKSIZES``; the last block may be partial.
        quant_type: "nf4", "fp4" or "int4" ("int4" is labkit's, for comparison).
        double_quant: also quantize the absmax values (bitsandbytes' ``compress_statistics``).
        kernel: whose rounding rules to follow (``KERNELS``): "cpu" for bitsandbytes' CPU
            path, "cuda" for its CUDA kernel (up to its approximate reciprocal; see
            :mod:`labkit.quant.bnb_rules`), "auto" for the one bitsandbytes runs on
            ``x.device``.
            Int4 has one rule everywhere (it is labkit's format, not bitsandbytes').

    Returns:
        packed: uint8 tensor of shape (ceil(numel / 2), 1), as bitsandbytes returns it.
        state: the ``QuantState`` to dequantize with.

    Raises:
        TypeError: ``x`` is not a float32/bfloat16/float16 tensor; ``double_quant`` is not
            True or False.
        ValueError: empty ``x``, NaN or inf in ``x``, unsupported blocksize (an int from
            ``BLOCKSIZES``; numpy integers pass, floats and bools do not), quant_type or
            kernel.
    """
    _check_float_input(x, "quantize_4bit")
    blocksize = _check_blocksize(blocksize)
    _check_quant_type(quant_type)
    _check_flag(double_quant, "double_quant")
    kernel = _check_kernel(kernel, x.device)
    if quant_type == "int4":  # labkit's own format, not bitsandbytes': one rule everywhere
        kernel = "cpu"

    scale_blocks = _scale_blocks_cuda if kernel == "cuda" else _scale_blocks
    absmax, scaled = scale_blocks(x.reshape(-1), blocksize, "quantize_4bit")
    # The rule is ``_exact_rule`` (``nearest_code_index`` on the CPU). It runs through a
    # look-up table, an optimization that gives the same codes (``fast_lookup``).
    codes = _code_lookup(_exact_rule, quant_type, kernel, x.device)(scaled)
    packed = _pack_nibbles(codes).unsqueeze(1)  # codes are 0..15: no need to check them

    state = QuantState(
        absmax=absmax,
        shape=x.shape,
        dtype=x.dtype,
        blocksize=blocksize,
        quant_type=quant_type,
        code=CODEBOOKS[quant_type].to(x.device, copy=True),
    )
    if double_quant:
        # bnb detail: the offset is torch's float32 mean, the same reduction bnb calls.
        offset = absmax.mean()
        state.absmax, state.nested_absmax = quantize_blockwise_8bit(
            absmax - offset, blocksize=DOUBLE_QUANT_BLOCKSIZE, kernel=kernel
        )
        state.offset = offset
        state.nested_code = _dynamic_code(x.device).clone()
    return packed, state


def dequantize_4bit(packed: torch.Tensor, state: QuantState) -> torch.Tensor:
    """Undo ``quantize_4bit``: ``code[index] * absmax[block]``, in the original shape and dtype.

    Readable: ``code[unpack_nibbles(packed)]`` times each value's block absmax. What runs
    looks each byte up once in a (256, 2) table that holds the levels of both its nibbles, so
    no separate unpacking pass is needed (``fast_lookup._pair_table``; a test shows the two
    equal). The product is formed in float32 and then rounded to ``state.dtype`` (round to
    nearest even), as bitsandbytes does.

    bnb detail: on CPUs with AVX-512, bitsandbytes 0.50's C kernel picks the wrong absmax
    when a tensor with more than one row has a last dimension that is a multiple of 16 but
    not of the blocksize (and blocksize < 2048), e.g. shape (64, 128) with blocksize 256
    (``tests/test_quant.py`` shows it on (8, 64) with blocksize 128): it indexes absmax per row
    (row * (cols // blocksize) + col // blocksize) while quantization counts blocks over the
    flattened tensor. labkit does not copy that bug; it agrees with bitsandbytes' own
    pure-PyTorch dequantization, which is correct for every shape.

    Args:
        packed: uint8 tensor from ``quantize_4bit`` (any shape with ceil(numel / 2) bytes).
        state: its ``QuantState``.

    Returns:
        Tensor of ``state.shape`` and ``state.dtype``.

    Raises:
        TypeError: ``packed`` is not uint8, ``state`` is not a ``QuantState``, a field of the
            state has the wrong type, or ``state.dtype`` is not float32/bfloat16/float16.
        ValueError: the state's fields do not fit together (``QuantState.check``: e.g. uint8
            absmax without ``nested_absmax``), ``packed`` does not fit ``state.shape`` or
            lies on another device, or a code index points outside the codebook.
    """
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise TypeError(
            f"dequantize_4bit needs the uint8 packed tensor from quantize_4bit, got {got}"
        )
    if not isinstance(state, QuantState):
        raise TypeError(
            f"dequantize_4bit needs the labkit.quant.QuantState that quantize_4bit returned, "
            f"got {type(state).__module__}.{type(state).__name__} (a bitsandbytes state goes "
            "to bitsandbytes.functional.dequantize_4bit)"
        )
    state.check(packed)  # O(1): fields that fit together and fit packed, before any work
    n, blocksize = state.numel, state.blocksize
    code = state.code.to(torch.float32)
    flat_bytes = packed.reshape(-1)
    if code.numel() < 16:
        largest = int(torch.maximum(flat_bytes >> 4, flat_bytes & 0x0F).max())
        if largest >= code.numel():
            raise ValueError(
                f"code index {largest} is outside the codebook, which has {code.numel()} levels "
                f"(indices 0..{code.numel() - 1}); was the tensor quantized with another codebook?"
            )
        code = torch.cat([code, code.new_zeros(16 - code.numel())])

    absmax = state._float_absmax().to(torch.float32)
    pairs = _pair_table(code).index_select(0, flat_bytes.to(torch.int32))
    values = pairs.view(torch.float32)[:n]
    full = n - n % blocksize
    values[:full].view(-1, blocksize).mul_(absmax[: full // blocksize].unsqueeze(1))
    if full < n:
        values[full:].mul_(absmax[-1])
    # the float32 product is rounded once to the output dtype (round to nearest even)
    return values.to(state.dtype).reshape(state.shape)
