"""labkit.quant.fast_lookup: each look-up table gives exactly what the readable step it
replaces gives.

``quantize_4bit`` finds codes through ``_CodeLookup`` instead of running ``_exact_rule``
(``nearest_code_index``, or bitsandbytes' CUDA rule) on every value; ``dequantize_4bit``
reads both levels of a byte from ``_pair_table`` instead of ``code[unpack_nibbles(...)]``.
The table keys on a float32's top 16 bits, so checking both ends of every one of the 65536
intervals (every bfloat16 value, and it with the low 16 bits set), every float16 value, a
few ulps around every threshold and random float32 values covers what it can get wrong.
"""

from __future__ import annotations

from functools import partial

from labkit._deps import torch

import pytest

from labkit import quant as Q
from labkit.quant import blockwise

CPU = torch.device("cpu")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: (quant_type, kernel) pairs quantize_4bit runs (int4 has one rule, the CPU one).
RULES = [("nf4", "cpu"), ("fp4", "cpu"), ("int4", "cpu"), ("nf4", "cuda"), ("fp4", "cuda")]


def _thresholds(quant_type, kernel):
    """Where the rule changes its answer: the codebook's midpoints, or the CUDA literals."""
    if kernel == "cpu":
        return Q._sorted_bounds(Q.CODEBOOKS[quant_type])[0]
    marks = torch.tensor(Q._CUDA_NF4_THRESHOLDS if quant_type == "nf4" else
                         Q._CUDA_FP4_THRESHOLDS)
    return torch.cat([marks, -marks])


def _every_16_bit_pattern():
    """Every bfloat16 value and the top of its interval, and every float16 value, as float32
    (infinities and NaNs included)."""
    high = torch.arange(-(2**15), 2**15, dtype=torch.int32) << 16
    fp16 = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    return torch.cat([high.view(torch.float32), (high | 0xFFFF).view(torch.float32),
                      fp16.float()])


@pytest.mark.parametrize(("quant_type", "kernel"), RULES)
def test_code_lookup_equals_the_rule_on_every_16_bit_pattern_and_random_float32(quant_type,
                                                                                 kernel):
    near = torch.cat([_thresholds(quant_type, kernel),
                      torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-40, -1e-40])])
    for _ in range(3):  # a few ulps either side of every threshold
        near = torch.cat([near, torch.nextafter(near, torch.tensor(2.0)),
                          torch.nextafter(near, torch.tensor(-2.0))])
    g = torch.Generator().manual_seed(7)
    bits = torch.randint(-(2**31), 2**31, (1_000_000,), generator=g, dtype=torch.int64)
    v = torch.cat([
        _every_16_bit_pattern(), near,
        bits.to(torch.int32).view(torch.float32),          # any float32 at all
        torch.rand(1_000_000, generator=g) * 2 - 1,        # the scaled range [-1, 1]
        torch.randn(1_000_000, generator=g) / 2.5,         # where normal weights land
    ])
    rule = blockwise._exact_rule(quant_type, kernel, CPU)
    fast = Q._code_lookup(blockwise._exact_rule, quant_type, kernel, CPU)  # the one that runs
    assert torch.equal(fast(v), rule(v))


def test_quantize_4bit_gives_what_the_readable_rule_gives(monkeypatch):
    # quantize_4bit with the table, then with the table swapped for the rule it replaces
    g = torch.Generator().manual_seed(8)
    code = Q.CODEBOOKS["nf4"]
    mids = torch.cat([torch.tensor([3.0]), (code[:-1] + code[1:]) / 2 * 3.0])
    xs = [torch.randn(37, 130, generator=g) * 0.02, torch.cat([mids, -mids, torch.zeros(64)])]
    cases = [(x.to(dtype), quant_type, kernel) for x in xs for dtype in DTYPES
             for quant_type, kernel in RULES]
    fast = [Q.quantize_4bit(x, 64, quant_type, kernel=kernel)[0]
            for x, quant_type, kernel in cases]
    monkeypatch.setattr(blockwise, "_code_lookup",
                        lambda rule, quant_type, kernel, device: rule(quant_type, kernel, device))
    for (x, quant_type, kernel), packed in zip(cases, fast, strict=True):
        assert torch.equal(Q.quantize_4bit(x, 64, quant_type, kernel=kernel)[0], packed)


def test_pair_table_holds_both_levels_of_every_byte():
    for quant_type in Q.QUANT_TYPES:
        code = Q.CODEBOOKS[quant_type]
        pairs = Q._pair_table(code).view(torch.float32).view(256, 2)
        readable = code[Q.unpack_nibbles(torch.arange(256, dtype=torch.uint8)).long()]
        assert torch.equal(pairs.view(torch.int32).reshape(-1), readable.view(torch.int32))


@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "dq"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dequantize_4bit_equals_readable_unpack_and_multiply(dtype, double_quant):
    g = torch.Generator().manual_seed(9)
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
    for quant_type in Q.QUANT_TYPES:
        for shape, blocksize in [((1,), 64), ((33, 65), 64), ((300 * 64 - 5,), 64),
                                 ((7, 9), 4096)]:
            x = (torch.randn(shape, generator=g) * 3).to(dtype)
            packed, state = Q.quantize_4bit(x, blocksize, quant_type, double_quant)
            n = x.numel()
            index = Q.unpack_nibbles(packed, n).long()
            scale = state.float_absmax().float().repeat_interleave(blocksize)[:n]
            readable = (state.code[index] * scale).to(dtype).reshape(shape)
            out = Q.dequantize_4bit(packed, state)
            assert torch.equal(out.view(bits[dtype]), readable.view(bits[dtype]))


@pytest.mark.parametrize("quant_type", Q.QUANT_TYPES)
def test_fast_lookup_equals_bucketize_reference(quant_type):
    code = Q.CODEBOOKS[quant_type]
    bounds, _ = Q._sorted_bounds(code)
    high = torch.arange(-(2**15), 2**15, dtype=torch.int32) << 16
    ends = torch.cat([high.view(torch.float32), (high | 0xFFFF).view(torch.float32)])
    ends = ends[torch.isfinite(ends)]
    near = torch.cat([bounds, torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-40, -1e-40])])
    for _ in range(3):  # a few ulps either side of every midpoint
        near = torch.cat([near, torch.nextafter(near, torch.tensor(2.0)),
                          torch.nextafter(near, torch.tensor(-2.0))])
    g = torch.Generator().manual_seed(0)
    v = torch.cat([ends, near, torch.randn(100_000, generator=g) / 2.5])
    fast = Q._CodeLookup(partial(Q.nearest_code_index, code=code))(v)
    assert torch.equal(fast, Q.nearest_code_index(v, code))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_fast_lookup_equals_exact_cuda_rule(quant_type):
    marks = torch.tensor(Q._CUDA_NF4_THRESHOLDS if quant_type == "nf4" else
                         Q._CUDA_FP4_THRESHOLDS)
    marks = torch.cat([marks, -marks, torch.tensor([0.0, -0.0, float("nan")])])
    for _ in range(2):
        marks = torch.cat([marks, torch.nextafter(marks, torch.tensor(2.0)),
                           torch.nextafter(marks, torch.tensor(-2.0))])
    v = torch.cat([marks, torch.randn(50_000, generator=torch.Generator().manual_seed(1)) / 2])
    exact = partial(Q._cuda_code_index, quant_type=quant_type)
    assert torch.equal(Q._CodeLookup(exact)(v), exact(v))
