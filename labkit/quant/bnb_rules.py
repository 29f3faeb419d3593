"""bitsandbytes' rounding rules, CPU and CUDA, reproduced on purpose.

labkit's 4-bit code (:mod:`labkit.quant.blockwise`) agrees bit for bit with bitsandbytes
0.50 on the CPU (packed bytes, absmax, double-quantization state and dequantized values).
bitsandbytes has a few backend-specific rounding rules; each is reproduced on purpose and
marked ``bnb detail`` in a comment. The readable ones that bitsandbytes' CPU path shares
(ties go to the lower level, multiply by the reciprocal, a partial block divides) stay in
``blockwise``; the ones a learner can skip live here:

* the CPU 8-bit quantizer matches values through a 65536-point grid, not per value
  (``_grid_table``);
* the CUDA kernel's 4-bit decision tree, whose thresholds are C float literals
  (``_c_float_literal``, ``_CUDA_NF4_THRESHOLDS``, ``_CUDA_FP4_THRESHOLDS``), with FP4's
  sign of zero taken from the input (``_cuda_code_index``);
* CUDA's flush-to-zero of subnormal floats and its blockwise scaling without a floor
  (``_scale_blocks_cuda``);
* the CUDA 8-bit binary search (``_cuda_8bit_search``);
* the check that a block's CUDA codes are explained by a reciprocal one ulp off
  (``_cuda_codes_within_one_ulp``).

bitsandbytes' CUDA kernel picks codes by other rules than its CPU path (a decision tree with
rounded thresholds, the sign of zero taken from the input, a binary search for 8 bits), so
the two disagree on some codes (0.7 % of FP4 codes, measured on an H200). ``kernel="cuda"``
(the default for CUDA tensors) follows the CUDA rules. One difference is left: that kernel
is compiled with ``--use_fast_math``, so its 1 / absmax is the GPU's approximate reciprocal,
up to one unit in the last place off, and a value that close to a threshold can land one
level away. Measured on an H200 over 22.6 million random weights per dtype: NF4 agreed on
every code; FP4 differed on 1 (float32), 4,399 (bfloat16) and 492 (float16) codes, each one
explained by a reciprocal one ulp off (``benchmarks/gpu_check.py``).

This module never imports bitsandbytes; ``tests/test_quant.py`` compares against it (and
against a recording of its CUDA kernel, so no GPU is needed).

May import: torch (through ``labkit._deps``), :mod:`labkit.quant.inputs`.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache

from labkit._deps import torch  # one clear line when torch is missing

from labkit.quant.inputs import _raise_not_finite

# --------------------------------------------------------------------------------------
# CUDA, 4 bits: the decision tree's thresholds and the code it picks
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# CUDA: blockwise scaling with flush-to-zero, and the one-ulp check
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# 8 bits: the CPU's 65536-point grid and the CUDA binary search
# --------------------------------------------------------------------------------------


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
