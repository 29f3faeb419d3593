"""4-bit quantization from scratch: NF4, FP4 and Int4, blockwise absmax, double quantization.

This is the storage format QLoRA (Dettmers et al. 2023, arXiv:2305.14314) uses for the frozen
base model, written in plain PyTorch so that a learner can read every step:

1. **Blocks and absmax.** The flattened weight is cut into blocks of ``blocksize`` values
   (64 by default). Each block is divided by its largest magnitude, its *absmax*, so every
   value lands in [-1, 1]; the absmax is kept (float32) to undo the scaling.
2. **Codebook.** A 4-bit code can name 16 values. Each scaled value is replaced by the index
   of the nearest of 16 levels in a *codebook*: NF4 (levels at quantiles of a normal
   distribution, because weights are roughly normal), FP4 (a tiny float) or Int4 (evenly
   spaced, for comparison).
3. **Packing.** Two 4-bit indices share one byte: the first value in the high nibble.
4. **Double quantization** (QLoRA section 3). The float32 absmax values themselves cost
   32 / 64 = 0.5 bits per weight. Subtract their mean and quantize them to 8 bits in blocks
   of 256 with bitsandbytes' "dynamic" 8-bit code: 8/64 + 32/(64*256) = 0.127 bits per weight.

Dequantizing is a table look-up and a multiply: ``w ~ code[index] * absmax[block]``.

Everything here agrees bit for bit with bitsandbytes 0.50 on the CPU (packed bytes, absmax,
double-quantization state and dequantized values). bitsandbytes has a few backend-specific
rounding rules; each is reproduced on purpose and marked ``bnb detail`` in a comment. The
tests in ``tests/test_quant.py`` compare against bitsandbytes on many tensors. This module
never imports bitsandbytes.

bitsandbytes' CUDA kernel picks codes by other rules than its CPU path (a decision tree with
rounded thresholds, the sign of zero taken from the input, a binary search for 8 bits), so
the two disagree on some codes (0.7 % of FP4 codes, measured on an H200). ``kernel="cuda"``
(the default for CUDA tensors) follows the CUDA rules. One difference is left: that kernel
is compiled with ``--use_fast_math``, so its 1 / absmax is the GPU's approximate reciprocal,
up to one unit in the last place off, and a value that close to a threshold can land one
level away. Measured on an H200 over 22.6 million random weights per dtype: NF4 agreed on
every code; FP4 differed on 1 (float32), 4,399 (bfloat16) and 492 (float16) codes, each one
explained by a reciprocal one ulp off (``benchmarks/gpu_check.py``).

Example:
    >>> w = torch.randn(256, 128)
    >>> packed, state = quantize_4bit(w, blocksize=64, quant_type="nf4", double_quant=True)
    >>> packed.shape, packed.dtype            # two codes per byte
    (torch.Size([16384, 1]), torch.uint8)
    >>> w_hat = dequantize_4bit(packed, state)  # same shape and dtype as w
    >>> round(bits_per_weight("nf4", 64, double_quant=True), 3)
    4.127
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cache, partial

from labkit._deps import torch  # one clear line when torch is missing

__all__ = [
    "BLOCKSIZES",
    "CODEBOOKS",
    "DOUBLE_QUANT_BLOCKSIZE",
    "NF4_OFFSET",
    "QUANT_TYPES",
    "QuantState",
    "bits_per_weight",
    "codebook",
    "dequantize_4bit",
    "dequantize_blockwise_8bit",
    "dynamic_codebook",
    "fp4_codebook",
    "int4_codebook",
    "nearest_code_index",
    "nf4_codebook",
    "pack_nibbles",
    "quant_state_nbytes",
    "quantization_error",
    "quantize_4bit",
    "quantize_blockwise_8bit",
    "quantized_nbytes",
    "unpack_nibbles",
]

#: Block sizes bitsandbytes accepts for 4-bit quantization.
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
#: The 4-bit formats: the first two are bitsandbytes'; ``int4`` is for comparison only.
QUANT_TYPES = ("nf4", "fp4", "int4")
#: Double quantization quantizes the absmax values in blocks of this many (QLoRA, sec. 3).
DOUBLE_QUANT_BLOCKSIZE = 256
#: NF4's outermost quantile. QLoRA's delta = (1/30 + 1/32) / 2 puts the end levels halfway
#: between the quantiles a 15- and a 16-level code would use; bitsandbytes rounds 1 - delta
#: to 7 digits, 0.9677083, and its stored table is built from that rounded number.
NF4_OFFSET = 0.9677083

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# bnb detail: bnb clamps the absmax to at least 1e-38 before taking its reciprocal, so an
# all-zero block scales by 1e38 instead of dividing by zero (and blocks whose absmax is a
# subnormal float below 1e-38 are scaled by 1e38 too, so they quantize towards zero).
_ABSMAX_FLOOR = 1e-38


# --------------------------------------------------------------------------------------
# Codebooks
# --------------------------------------------------------------------------------------


def nf4_codebook(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NormalFloat4 levels, computed from normal quantiles (QLoRA section 3).

    NF4 spends its levels where normally distributed weights are dense. Take 8 evenly spaced
    probabilities from ``offset`` down to 0.5 for the positive side and 7 for the negative
    side, map them through the normal quantile function Phi^-1, add an exact zero, and scale
    so the largest level is 1::

        positive: Phi^-1(p) for p in linspace(offset, 0.5, 9)[:-1]    (8 levels)
        negative: -Phi^-1(p) for p in linspace(offset, 0.5, 8)[:-1]   (7 levels)
        levels = sort(negative + [0] + positive) / max

    The code is asymmetric (8 positive levels, 7 negative, one exact zero) so that zero is
    represented exactly with an even number (16) of levels; both ends are exactly -1 and 1.

    With the default ``offset`` this reproduces bitsandbytes' hard-coded NF4 table exactly
    (every float32 bit; ``tests/test_quant.py`` checks it), because it follows the same
    recipe: probabilities spaced in float32, quantiles in float64, rounded to float32, then
    the float32 division by the maximum. Using the unrounded delta, or float64 throughout,
    moves some levels by up to 8 float32 ulps (< 3e-7): harmless, but not bit-exact.

    Args:
        offset: the outermost probability (default ``NF4_OFFSET``).

    Returns:
        float32 tensor of shape (16,), sorted ascending, ``[0] == -1``, ``[7] == 0``,
        ``[15] == 1``. Index i is the 4-bit code i.
    """
    p_pos = torch.linspace(offset, 0.5, 9, dtype=torch.float32)[:-1].double()
    p_neg = torch.linspace(offset, 0.5, 8, dtype=torch.float32)[:-1].double()
    positive = torch.special.ndtri(p_pos)  # Phi^-1, the normal quantile function
    negative = -torch.special.ndtri(p_neg)
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive])
    levels = levels.float().sort().values
    return levels / levels.max()


def fp4_codebook() -> torch.Tensor:
    """bitsandbytes' FP4 levels, decoded from the 4-bit patterns (1 sign, 2 exponent, 1 mantissa).

    The 1-2-1 bit split is that of E2M1, but bitsandbytes' variant decodes it its own way:
    exponent field e = 1, 2, 3 means 2^(4 - e) (the field counts downwards), the mantissa bit
    m adds half, and e = 0 is a subnormal 0.0625 * m. Before normalising by the maximum (12)
    the magnitudes for patterns 0b000 .. 0b111 are::

        0, 0.0625, 8, 12, 4, 6, 2, 3

    (The OCP E2M1 format would give 0, 0.5, 1, 1.5, 2, 3, 4, 6.) Bit 3 is the sign, so
    codes 0 and 8 both mean zero.

    bnb detail: both zeros are +0.0. bitsandbytes writes its table as Python literals, and
    its "-0" is the integer 0; its PyTorch path and its AVX-512 kernel dequantize code 8 to
    +0.0 (only its scalar C kernel, used when the last dimension is not a multiple of 16,
    writes -0.0). labkit follows the stored table.

    Returns:
        float32 tensor of shape (16,), indexed by bit pattern (not sorted).
    """
    values = []
    for pattern in range(16):
        sign = -1.0 if pattern & 0b1000 else 1.0
        exponent, mantissa = (pattern >> 1) & 0b11, pattern & 0b1
        if exponent == 0:
            magnitude = 0.0625 * mantissa  # subnormal
        else:
            magnitude = 2.0 ** (4 - exponent) * (1 + 0.5 * mantissa)
        values.append(sign * magnitude if magnitude else 0.0)  # +0.0 for code 8 too
    code = torch.tensor(values, dtype=torch.float32)
    return code / code.abs().max()


def int4_codebook() -> torch.Tensor:
    """Symmetric Int4: the integers -7 .. 7 divided by 7, in sign-magnitude order.

    Evenly spaced levels, for comparison with NF4 and FP4. bitsandbytes lists the same table
    as "int4" in ``get_4bit_type`` (which fails on it: it divides an integer tensor in place)
    and does not quantize with it. Code i < 8 is (7 - i) / 7 and code 8 + i is -i / 7, so
    codes 7 and 8 are both zero (+0.0, as in the FP4 table); 15 distinct levels.

    Returns:
        float32 tensor of shape (16,).
    """
    values = [float(7 - i) for i in range(8)] + [float(-i) for i in range(8)]
    return torch.tensor(values, dtype=torch.float32) / 7.0


def dynamic_codebook() -> torch.Tensor:
    """bitsandbytes' signed 8-bit "dynamic" code, used for double quantization.

    Dettmers (2015, arXiv:1511.04561) dynamic tree quantization: after the sign bit, the
    number of leading zero bits sets a decimal exponent 10^-6 .. 10^0 and the remaining bits
    a linear fraction. For exponent step i = 0 .. 6 there are 2^i fractions, the midpoints of
    ``linspace(0.1, 1, 2^i + 1)``, scaled by 10^(i - 6), on each side of zero; plus 0 and 1.
    That is 2 * 127 + 2 = 256 levels, fine near zero and coarse near +-1, computed here with
    the same float32 operations as bitsandbytes' ``create_dynamic_map`` (a test checks every
    bit).

    Returns:
        float32 tensor of shape (256,), sorted ascending, from about -0.993 to 1.
    """
    levels: list[float] = []
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        fractions = (edges[:-1] + edges[1:]) / 2.0
        scale = 10.0 ** (i - 6)
        levels += (scale * fractions).tolist()
        levels += (-scale * fractions).tolist()
    levels += [0.0, 1.0]
    return torch.tensor(sorted(levels), dtype=torch.float32)


#: The three 4-bit codebooks, by name. Treat them as read-only (``codebook`` returns copies).
CODEBOOKS: dict[str, torch.Tensor] = {
    "nf4": nf4_codebook(),
    "fp4": fp4_codebook(),
    "int4": int4_codebook(),
}

#: Whose rounding rules to follow: bitsandbytes' CPU path, its CUDA kernel, or the one that
#: bitsandbytes itself would run for the tensor's device ("auto").
KERNELS = ("auto", "cpu", "cuda")


def _c_float_literal(text: str) -> float:
    """The float32 a C compiler makes of the literal ``text`` with an ``f`` suffix.

    The decimal is rounded once, to the nearest float32 (ties to even). Going through a
    Python float rounds twice (decimal to float64, then to float32), and where the float64
    lands exactly halfway between two float32s the second rounding can go the other way:
    4 of the 15 NF4 thresholds below come out one ulp off that way.
    """
    exact = Fraction(text)
    near = torch.tensor(float(exact), dtype=torch.float32)
    candidates = [torch.nextafter(near, torch.tensor(-2.0)), near,
                  torch.nextafter(near, torch.tensor(2.0))]
    best = min(candidates, key=lambda c: (abs(Fraction(c.item()) - exact),
                                          int(c.view(torch.int32)) & 1))
    return best.item()


# bnb detail: bitsandbytes' CUDA kernel walks a decision tree with these float literals as
# thresholds (a value above a threshold goes up). For NF4, 11 of them are the float32
# midpoints of the codebook that labkit's own search uses and 4 are one ulp away, so exactly
# 4 float32 values (one beside each) get different NF4 codes on the CPU and on CUDA. FP4's
# are rounded decimals of the midpoints (0.583333 for 7/12, say) and, as magnitudes, ignore
# the sign (see ``_cuda_code_index``).
_CUDA_NF4_THRESHOLDS = tuple(map(_c_float_literal, (
    "-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906",
    "-0.33967943489551544", "-0.23460740596055984", "-0.13791173323988914",
    "-0.045525018125772476", "0.03979014977812767", "0.1202552504837513",
    "0.2035212516784668", "0.2920137718319893", "0.3893125355243683", "0.5016634166240692",
    "0.6427869200706482", "0.8614784181118011",
)))
_CUDA_FP4_THRESHOLDS = tuple(map(_c_float_literal, (
    "0.00260417", "0.0859375", "0.20833333", "0.29166667", "0.4166667", "0.583333",
    "0.8333333",
)))
#: FP4 bit patterns of the magnitudes 0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1 (ascending).
_FP4_BY_MAGNITUDE = (0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011)


def codebook(name: str) -> torch.Tensor:
    """A copy of the 4-bit codebook called ``name`` ("nf4", "fp4" or "int4"), shape (16,)."""
    _check_quant_type(name)
    return CODEBOOKS[name].clone()


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

    ``quantize_4bit`` uses a faster look-up that gives the same answer (see
    ``_CodeLookup``); a test compares the two.

    Args:
        scaled: float32 values, normally in [-1, 1], any shape.
        code: the codebook, shape (K,).

    Returns:
        uint8 tensor of ``scaled``'s shape (or int64 when the code has more than 256 levels).
    """
    bounds, order = _sorted_bounds(code.to(scaled.device))
    position = torch.bucketize(scaled, bounds)
    index = order[position]
    return index.to(torch.uint8) if code.numel() <= 256 else index


def _cuda_code_index(scaled: torch.Tensor, quant_type: str) -> torch.Tensor:
    """bitsandbytes' CUDA rule for the 4-bit code of each scaled value (nf4 or fp4).

    NF4: the index is the number of thresholds below the value, i.e. the nearest level with
    ties going down, as on the CPU. FP4: the sign bit is set when the value is negative (a
    tiny positive value gets code 0, where the CPU path gives 8) and the magnitude goes
    through ``_CUDA_FP4_THRESHOLDS``. A NaN (0 * inf: an all-zero block, whose absmax the
    kernel does not floor) compares false everywhere and gets code 0.
    """
    thresholds, codes = _cuda_tree(quant_type, scaled.device)
    if quant_type == "nf4":
        index = torch.bucketize(scaled, thresholds)
    else:
        index = codes[torch.bucketize(scaled.abs(), thresholds)] | (scaled < 0) * 0b1000
    return index.masked_fill_(torch.isnan(scaled), 0).to(torch.uint8)


@cache
def _cuda_tree(quant_type: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CUDA thresholds of ``quant_type`` and, for FP4, the codes of its magnitudes, on
    ``device`` (made once per device, not on every call)."""
    if quant_type == "nf4":
        return torch.tensor(_CUDA_NF4_THRESHOLDS, device=device), None
    return (torch.tensor(_CUDA_FP4_THRESHOLDS, device=device),
            torch.tensor(_FP4_BY_MAGNITUDE, device=device))


class _CodeLookup:
    """Code search with a 65536-entry table instead of a binary search per value.

    ``torch.bucketize`` does a branchy binary search for each of millions of values and is
    the slowest step of quantization. Here is a shortcut that gives exactly the same index
    as the exact rule ``exact`` (``nearest_code_index`` or ``_cuda_code_index``):

    A float32's top 16 bits (sign, exponent, 7 mantissa bits, i.e. its bfloat16 truncation)
    name an interval of floats. Most such intervals contain no threshold between levels, so
    every value in them gets the same code: store it in ``table[top16]``. The few intervals
    that do contain one (15 of the 65536 for NF4; the NaN/inf patterns are also marked) are
    marked ``AMBIGUOUS``, and the values that fall in them (about 1 % of normally distributed
    weights) go through ``exact``. (Both rules step only at thresholds, so an interval whose
    two ends get the same code holds no other.)
    """

    AMBIGUOUS = 255

    def __init__(self, exact):
        self.exact = exact
        high = torch.arange(-(2**15), 2**15, dtype=torch.int32) << 16  # every top-16 pattern
        lowest = high.view(torch.float32)  # the interval's ends (swapped when negative)
        highest = (high | 0xFFFF).view(torch.float32)
        at_low, at_high = exact(lowest), exact(highest)
        same = (at_low == at_high) & torch.isfinite(lowest) & torch.isfinite(highest)
        entries = torch.where(same, at_low, torch.full_like(at_low, self.AMBIGUOUS))
        self.table = torch.empty(2**16, dtype=torch.uint8)
        self.table[(high >> 16) & 0xFFFF] = entries.to(torch.uint8)  # same key as __call__

    def __call__(self, scaled: torch.Tensor) -> torch.Tensor:
        """uint8 code index of each value of the float32 tensor ``scaled`` (flattened)."""
        flat = scaled.reshape(-1)
        top16 = flat.view(torch.int32).bitwise_right_shift(16).bitwise_and_(0xFFFF)
        index = self.table.index_select(0, top16)
        unsure = (index == self.AMBIGUOUS).nonzero().squeeze(1)
        index[unsure] = self.exact(flat[unsure])
        return index


def _exact_rule(quant_type: str, kernel: str, device: torch.device):
    """The exact per-value code rule for ``quant_type`` under ``kernel``'s rules."""
    if kernel == "cuda":
        return partial(_cuda_code_index, quant_type=quant_type)
    return partial(nearest_code_index, code=CODEBOOKS[quant_type].to(device))


@cache
def _code_lookup(quant_type: str, kernel: str, device: torch.device) -> _CodeLookup:
    """The table look-up for ``quant_type`` under ``kernel``'s rules ("cpu" or "cuda")."""
    lookup = _CodeLookup(_exact_rule(quant_type, kernel, torch.device("cpu")))
    lookup.table, lookup.exact = lookup.table.to(device), _exact_rule(quant_type, kernel, device)
    return lookup


# --------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------


def pack_nibbles(codes: torch.Tensor, fill: int = 0) -> torch.Tensor:
    """Pack 4-bit codes two per byte: element 2i in the high nibble, 2i + 1 in the low one.

    Args:
        codes: uint8 tensor of values 0..15, any shape (flattened).
        fill: the nibble that pads an odd count (``quantize_4bit`` pads with the code of 0.0
            instead, before this step, as bitsandbytes does).

    Returns:
        uint8 tensor of shape (ceil(n / 2),).
    """
    if codes.dtype != torch.uint8:
        raise TypeError(
            f"pack_nibbles needs uint8 codes, got {codes.dtype}; use codes.to(torch.uint8)"
        )
    flat = codes.reshape(-1)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_full((1,), fill)])
    pairs = flat.view(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack_nibbles(packed: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Inverse of ``pack_nibbles``: uint8 codes 0..15, shape (n,) (default: 2 per byte)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_nibbles needs uint8 bytes, got {packed.dtype}")
    flat = packed.reshape(-1)
    codes = torch.stack([flat >> 4, flat & 0x0F], dim=1).reshape(-1)
    return codes if n is None else codes[:n]


# --------------------------------------------------------------------------------------
# Quantization state
# --------------------------------------------------------------------------------------


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

    def float_absmax(self) -> torch.Tensor:
        """The float32 absmax per block (dequantizing it first under double quantization)."""
        if not self.double_quant:
            return self.absmax
        # bnb detail: bnb dequantizes the 8-bit absmax to float32, then adds the offset.
        scales = dequantize_blockwise_8bit(
            self.absmax, self.nested_absmax, self.nested_code, self.nested_blocksize
        )
        return scales + self.offset


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def _check_quant_type(quant_type: str) -> None:
    if quant_type not in QUANT_TYPES:
        raise ValueError(
            f"unknown quant_type {quant_type!r}; choose one of {', '.join(QUANT_TYPES)}"
        )


def _check_blocksize(blocksize: int) -> None:
    if isinstance(blocksize, bool) or blocksize not in BLOCKSIZES:
        sizes = ", ".join(map(str, BLOCKSIZES))
        raise ValueError(
            f"blocksize {blocksize!r} is not supported; choose one of {sizes} "
            "(the sizes bitsandbytes accepts)"
        )


def _check_float_input(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} needs a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{what} needs a floating-point tensor (float32, bfloat16 or float16), got "
            f"{x.dtype}; convert it first, e.g. x.float()"
        )
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{what} supports float32, bfloat16 and float16 (like bitsandbytes), got "
            f"{x.dtype}; convert it first, e.g. x.float()"
        )
    if x.numel() == 0:
        raise ValueError(
            f"{what} got an empty tensor (shape {tuple(x.shape)}); nothing to quantize"
        )


def _raise_not_finite(x: torch.Tensor, what: str) -> None:
    """Called only once a non-finite absmax showed the input holds NaN or inf."""
    flat = x.reshape(-1)
    n_nan = int(torch.isnan(flat).sum())
    n_inf = int(torch.isinf(flat).sum())
    first = int((~torch.isfinite(flat)).nonzero()[0, 0])
    raise ValueError(
        f"{what} got {n_nan} NaN and {n_inf} inf values (first at flat index {first}); "
        "a block's absmax would be NaN or inf and the whole block would be lost. "
        "Find where they come from, or replace them, e.g. torch.nan_to_num(x)"
    )


# --------------------------------------------------------------------------------------
# 4-bit quantize / dequantize
# --------------------------------------------------------------------------------------


def _check_kernel(kernel: str, device: torch.device) -> str:
    """Resolve "auto" to the kernel bitsandbytes runs for ``device``; reject other names."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if kernel == "auto":
        return "cuda" if device.type == "cuda" else "cpu"
    return kernel


def _scale_blocks_cuda(
    flat: torch.Tensor, blocksize: int, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax and the scaled values, as bitsandbytes' CUDA kernel does it.

    Every block, the last partial one too, is multiplied by the float32 reciprocal of its
    absmax; the kernel loads zeros past the end, so an odd count is padded with a scaled 0.0.
    No floor: an all-zero block keeps absmax 0 and scales to NaN (0 * inf). The kernel is
    built with ``--use_fast_math``, which flushes subnormal floats (below 2^-126 in size) to
    zero, keeping the sign, wherever they go in or come out of arithmetic.
    """
    n = flat.numel()
    blocks, absmax = _cuda_blocks(flat, blocksize, what)
    scaled = _cuda_scale(blocks, 1.0 / absmax)
    return absmax, scaled.reshape(-1)[: n + n % 2]


def _cuda_scale(blocks: torch.Tensor, reciprocal: torch.Tensor) -> torch.Tensor:
    """(n_blocks, blocksize) ``blocks * reciprocal`` per block, with CUDA's flush-to-zero."""
    return _flush_subnormals(blocks * _flush_subnormals(reciprocal).unsqueeze(1))


def _cuda_blocks(
    flat: torch.Tensor, blocksize: int, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (n_blocks, blocksize) zero-padded blocks, subnormals flushed, and their absmax."""
    n = flat.numel()
    n_blocks = -(-n // blocksize)
    blocks = torch.zeros(n_blocks * blocksize, dtype=torch.float32, device=flat.device)
    blocks[:n] = _flush_subnormals(flat.float())
    blocks = blocks.view(n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)
    if not torch.isfinite(absmax).all():
        _raise_not_finite(flat, what)
    return blocks, absmax


def _flush_subnormals(x: torch.Tensor) -> torch.Tensor:
    """float32 ``x`` with subnormal values replaced by a zero of the same sign (CUDA's FTZ)."""
    return torch.where(x.abs() < torch.finfo(torch.float32).tiny, x * 0.0, x)


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
            path, "cuda" for its CUDA kernel (up to its approximate reciprocal; see the
            module docstring), "auto" for the one bitsandbytes runs on ``x.device``.
            Int4 has one rule everywhere (it is labkit's format, not bitsandbytes').

    Returns:
        packed: uint8 tensor of shape (ceil(numel / 2), 1), as bitsandbytes returns it.
        state: the ``QuantState`` to dequantize with.

    Raises:
        TypeError: ``x`` is not a float32/bfloat16/float16 tensor.
        ValueError: empty ``x``, NaN or inf in ``x``, unsupported blocksize, quant_type or
            kernel.
    """
    _check_float_input(x, "quantize_4bit")
    _check_blocksize(blocksize)
    _check_quant_type(quant_type)
    kernel = _check_kernel(kernel, x.device)
    if quant_type == "int4":  # labkit's own format, not bitsandbytes': one rule everywhere
        kernel = "cpu"

    scale_blocks = _scale_blocks_cuda if kernel == "cuda" else _scale_blocks
    absmax, scaled = scale_blocks(x.reshape(-1), blocksize, "quantize_4bit")
    codes = _code_lookup(quant_type, kernel, x.device)(scaled)
    packed = pack_nibbles(codes).unsqueeze(1)

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


def _cuda_codes_within_one_ulp(
    x: torch.Tensor, blocksize: int, quant_type: str, codes: torch.Tensor
) -> torch.Tensor:
    """Which blocks' ``codes`` (from bitsandbytes' CUDA kernel) labkit's CUDA rule gives for
    some reciprocal within one float32 ulp of 1 / absmax, the kernel's approximate one.

    For checking what ``kernel="cuda"`` leaves to chance (``tests/test_quant.py``,
    ``benchmarks/gpu_check.py``); ``codes``: uint8 (numel,) unpacked. Returns bool (n_blocks,).
    """
    blocks, absmax = _cuda_blocks(x.reshape(-1), blocksize, "_cuda_codes_within_one_ulp")
    n = x.numel()
    padding = torch.arange(blocks.numel(), device=x.device).view_as(blocks) >= n
    want = torch.zeros_like(blocks, dtype=torch.uint8)
    want.view(-1)[:n] = codes.to(x.device)
    exact = 1.0 / absmax  # inf for an all-zero block: exact on the GPU too
    below, above = (torch.where(exact.isinf(), exact, torch.nextafter(exact, exact * k))
                    for k in (-1.0, 2.0))
    explained = torch.zeros_like(absmax, dtype=torch.bool)
    for reciprocal in (below, exact, above):
        codes = _cuda_code_index(_cuda_scale(blocks, reciprocal), quant_type)
        explained |= ((codes == want) | padding).all(dim=1)
    return explained


def _pair_table(code: torch.Tensor) -> torch.Tensor:
    """(256,) table: byte -> its two float32 levels (high nibble's first) as one 8-byte item.

    Row b of the (256, 2) float32 table is (code[b >> 4], code[b & 15]); viewing each row's
    8 bytes as one int64 lets a single 1-D ``index_select`` fetch both levels at once, and
    viewing the result back as float32 restores the pairs in order.
    """
    byte = torch.arange(256, device=code.device)
    pairs = torch.stack([code[byte >> 4], code[byte & 0x0F]], dim=1).contiguous()
    return pairs.view(torch.int64).reshape(256)


def dequantize_4bit(packed: torch.Tensor, state: QuantState) -> torch.Tensor:
    """Undo ``quantize_4bit``: ``code[index] * absmax[block]``, in the original shape and dtype.

    Each byte is looked up once in a (256, 2) table that holds the levels of both its
    nibbles, so no separate unpacking pass is needed. The product is formed in float32 and
    then rounded to ``state.dtype`` (round to nearest even), as bitsandbytes does.

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
        TypeError: ``packed`` is not uint8.
        ValueError: ``packed`` or the state's tensors do not fit ``state.shape``, or a code
            index points outside the codebook.
    """
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise TypeError(
            f"dequantize_4bit needs the uint8 packed tensor from quantize_4bit, got {got}"
        )
    n, blocksize = state.numel, state.blocksize
    _check_blocksize(blocksize)
    if packed.numel() != (n + 1) // 2:
        raise ValueError(
            f"packed holds {packed.numel()} bytes but state.shape {tuple(state.shape)} needs "
            f"{(n + 1) // 2} (two 4-bit codes per byte); packed and state do not belong together"
        )
    if state.absmax.numel() != state.n_blocks:
        raise ValueError(
            f"state.absmax has {state.absmax.numel()} entries but {n} values in blocks of "
            f"{blocksize} need {state.n_blocks}"
        )
    code = state.code.to(torch.float32)
    if code.numel() > 16:
        raise ValueError(f"a 4-bit codebook has at most 16 levels, state.code has {code.numel()}")
    flat_bytes = packed.reshape(-1)
    if code.numel() < 16:
        largest = int(torch.maximum(flat_bytes >> 4, flat_bytes & 0x0F).max())
        if largest >= code.numel():
            raise ValueError(
                f"code index {largest} is outside the codebook, which has {code.numel()} levels "
                f"(indices 0..{code.numel() - 1}); was the tensor quantized with another codebook?"
            )
        code = torch.cat([code, code.new_zeros(16 - code.numel())])

    absmax = state.float_absmax().to(torch.float32)
    pairs = _pair_table(code).index_select(0, flat_bytes.to(torch.int32))
    values = pairs.view(torch.float32)[:n]
    full = n - n % blocksize
    values[:full].view(-1, blocksize).mul_(absmax[: full // blocksize].unsqueeze(1))
    if full < n:
        values[full:].mul_(absmax[-1])
    # the float32 product is rounded once to the output dtype (round to nearest even)
    return values.to(state.dtype).reshape(state.shape)


# --------------------------------------------------------------------------------------
# 8-bit blockwise quantization (for the absmax values under double quantization)
# --------------------------------------------------------------------------------------


@cache
def _dynamic_code(device: torch.device) -> torch.Tensor:
    return dynamic_codebook().to(device)


_LUT_SIZE = 2**16


@cache
def _grid_table(code_key: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """bnb detail: bitsandbytes' CPU 8-bit quantizer does not search the code per value.

    It splits [-1, 1] into a grid of 65536 points g_j = -1 + 2j / 65535 (float32), stores
    for each point the index of the first code level whose upper midpoint is not below it
    (``midpoint < g`` advances, so a point on a midpoint goes to the lower level), and then
    rounds each value to its nearest grid point. So a value is matched through its grid
    point, which may differ from its own nearest level when it lies within half a grid step
    (1.5e-5) of a midpoint. We build the same table.
    """
    code = torch.tensor(code_key, dtype=torch.float32)
    midpoints = 0.5 * (code[:-1] + code[1:])
    grid = -1.0 + (2.0 * torch.arange(_LUT_SIZE, dtype=torch.float32)) / (_LUT_SIZE - 1)
    return torch.searchsorted(midpoints, grid, side="left").to(torch.uint8).to(device)


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
    if not isinstance(blocksize, int) or blocksize <= 0:
        raise ValueError(f"blocksize must be a positive int, got {blocksize!r}")
    kernel = _check_kernel(kernel, x.device)
    code = _dynamic_code(x.device) if code is None else code.to(x.device, torch.float32)
    if code.numel() != 256:
        raise ValueError(f"an 8-bit codebook has 256 levels, got {code.numel()}")
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


def _cuda_8bit_search(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """bnb detail: the 8-bit code index as bitsandbytes' CUDA kernel finds it.

    A binary search over the sorted 256-level ``code``: seven halving steps from index 127
    leave a final ``pivot`` between the last levels passed below (``lower``) and above
    (``upper``); the value then goes to whichever of ``pivot`` and its neighbour on its side
    is nearer, compared through their float32 midpoint. A value exactly on that midpoint
    stays at ``pivot``, so ties go up or down depending on where the search ended.

    Args:
        scaled: float32 values in [-1, 1], any shape.
        code: float32 (256,) sorted codebook.

    Returns:
        uint8 indices, shape of ``scaled``.
    """
    pivot = torch.full_like(scaled, 127, dtype=torch.long)
    lower_i, upper_i = torch.zeros_like(pivot), torch.full_like(pivot, 255)
    lower, upper = torch.full_like(scaled, -1.0), torch.full_like(scaled, 1.0)
    for step in (64, 32, 16, 8, 4, 2, 1):
        level = code[pivot]
        above = scaled > level
        lower_i, lower = torch.where(above, pivot, lower_i), torch.where(above, level, lower)
        upper_i, upper = torch.where(above, upper_i, pivot), torch.where(above, upper, level)
        pivot = torch.where(above, pivot + step, pivot - step)
    level = code[pivot]
    # the ends: an untouched bound starts as +-1.0, the kernel then reads the code's own end
    upper = torch.where(upper_i == 255, code[255], upper)
    lower = torch.where(lower_i == 0, code[0], lower)
    above = scaled > level
    up = torch.where(scaled > (upper + level) * 0.5, upper_i, pivot)
    down = torch.where(scaled < (lower + level) * 0.5, lower_i, pivot)
    return torch.where(above, up, down).to(torch.uint8)


def dequantize_blockwise_8bit(
    q: torch.Tensor,
    absmax: torch.Tensor,
    code: torch.Tensor | None = None,
    blocksize: int = DOUBLE_QUANT_BLOCKSIZE,
) -> torch.Tensor:
    """Undo ``quantize_blockwise_8bit``: float32 ``code[q] * absmax[block]``, shape of ``q``."""
    if q.dtype != torch.uint8:
        raise TypeError(f"dequantize_blockwise_8bit needs uint8 indices, got {q.dtype}")
    code = _dynamic_code(q.device) if code is None else code.to(q.device, torch.float32)
    if code.numel() > 256:
        raise ValueError(f"an 8-bit codebook has at most 256 levels, got {code.numel()}")
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


# --------------------------------------------------------------------------------------
# Storage accounting
# --------------------------------------------------------------------------------------


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
    """
    _check_quant_type(quant_type)
    _check_blocksize(blocksize)
    if not isinstance(numel, int) or numel < 1:
        raise ValueError(f"numel must be a positive int, got {numel!r}")
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
    _check_quant_type(quant_type)
    _check_blocksize(blocksize)
    if numel is None:
        if double_quant:
            return 4 + 8 / blocksize + 32 / (blocksize * nested_blocksize)
        return 4 + 32 / blocksize
    nbytes = quantized_nbytes(
        numel, blocksize, double_quant, quant_type, nested_blocksize, count_codebooks
    )
    return 8 * nbytes / numel


def quant_state_nbytes(state: QuantState, count_codebooks: bool = True) -> int:
    """Bytes held by the tensors of ``state`` (absmax, offset, nested absmax, codebooks).

    Add ``packed.numel()`` for the codes themselves; the sum equals ``quantized_nbytes``.
    """

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
    """
    packed, state = quantize_4bit(x, blocksize, quant_type, double_quant)
    error = (dequantize_4bit(packed, state).float() - x.float()).reshape(-1)
    rms_x = x.float().pow(2).mean().sqrt().item()
    mse = error.pow(2).mean().item()
    return {
        "mse": mse,
        "mae": error.abs().mean().item(),
        "max_abs": error.abs().max().item(),
        "rel_rmse": math.sqrt(mse) / rms_x if rms_x > 0 else 0.0,
    }
