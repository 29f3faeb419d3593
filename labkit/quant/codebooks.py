"""The codebooks: the 16 levels a 4-bit code can name, and the 256 of the 8-bit one.

A codebook is a sorted (or, for FP4, bit-pattern ordered) list of levels in [-1, 1]; a
4-bit code i stands for ``code[i]`` times its block's absmax. Here are:

* ``nf4_codebook``: NormalFloat4, computed from normal quantiles (QLoRA section 3);
* ``fp4_codebook``: bitsandbytes' 4-bit float (1 sign, 2 exponent, 1 mantissa bit);
* ``int4_codebook``: evenly spaced levels, for comparison;
* ``dynamic_codebook``: bitsandbytes' signed 8-bit "dynamic" code, which double
  quantization uses for the absmax values;
* ``CODEBOOKS`` (the three 4-bit ones by name) and ``codebook(name)``, a copy.

Each is computed, not typed in, and equals bitsandbytes' table bit for bit
(``tests/test_quant_codebooks.py``).

May import: torch (through ``labkit._deps``), :mod:`labkit.quant.inputs`.
"""

from __future__ import annotations

import numbers

from labkit._deps import torch  # one clear line when torch is missing

from labkit.quant.inputs import _check_quant_type

#: NF4's outermost quantile. QLoRA's delta = (1/30 + 1/32) / 2 puts the end levels halfway
#: between the quantiles a 15- and a 16-level code would use; bitsandbytes rounds 1 - delta
#: to 7 digits, 0.9677083, and its stored table is built from that rounded number.
NF4_OFFSET = 0.9677083


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
    (every float32 bit; ``tests/test_quant_codebooks.py`` checks it), because it follows the
    same recipe: probabilities spaced in float32, quantiles in float64, rounded to float32, then
    the float32 division by the maximum. Using the unrounded delta, or float64 throughout,
    moves some levels by up to 8 float32 ulps (< 3e-7): harmless, but not bit-exact.

    Args:
        offset: the outermost probability (default ``NF4_OFFSET``).

    Returns:
        float32 tensor of shape (16,), sorted ascending, ``[0] == -1``, ``[7] == 0``,
        ``[15] == 1``. Index i is the 4-bit code i.

    Raises:
        ValueError: ``offset`` is not a number strictly between 0.5 and 1 (at 1 the end
            quantile is infinite, at 0.5 or below the levels collapse or change sides).
    """
    if isinstance(offset, bool) or not isinstance(offset, numbers.Real) or not 0.5 < offset < 1:
        raise ValueError(
            f"offset must be a probability strictly between 0.5 and 1, got {offset!r}; "
            f"the default NF4_OFFSET is {NF4_OFFSET}"
        )
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


def codebook(name: str) -> torch.Tensor:
    """A copy of the 4-bit codebook called ``name`` ("nf4", "fp4" or "int4"), shape (16,)."""
    _check_quant_type(name)
    return CODEBOOKS[name].clone()
