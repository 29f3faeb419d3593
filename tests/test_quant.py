"""labkit.quant against bitsandbytes' CPU path, bit for bit, plus independent checks; and its
``kernel="cuda"`` rules against a recording of bitsandbytes' CUDA kernel (no GPU needed).

bitsandbytes 0.50 on the CPU quantizes 4-bit in pure PyTorch (its "default" backend) and
dequantizes with a C kernel, falling back to PyTorch for odd last dimensions and block sizes
of 2048 and up; double quantization uses its C 8-bit quantizer. The fallback is wrapped in
``torch.compile``; compiling it for every new shape would take seconds each, so the tests
switch dynamo off and run that same Python code eagerly (a multiply and a cast: compiled or
not, the values are the same).
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
from fractions import Fraction
from functools import partial
from pathlib import Path

from labkit._deps import import_bnb, torch

import pytest

from labkit import quant as Q

bnb = import_bnb()
F = bnb.functional
bnb_cpu_ops = sys.modules.get("bitsandbytes.backends.cpu.ops")
REPO = Path(__file__).resolve().parents[1]
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@pytest.fixture(autouse=True, scope="module")
def _eager_bnb():
    import torch._dynamo

    old = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    yield
    torch._dynamo.config.disable = old


def bnb_quantize(x, blocksize, quant_type, double_quant):
    return F.quantize_4bit(
        x, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant
    )


def bnb_dequantize(packed, state):
    """bitsandbytes' CPU dequantize, in the original shape (it returns (1, n) for 1-D input)."""
    return F.dequantize_4bit(packed, state).reshape(state.shape)


def assert_same_as_bnb(x, blocksize, quant_type, double_quant):
    """Quantize and dequantize with both; every tensor must be identical."""
    packed_b, state_b = bnb_quantize(x, blocksize, quant_type, double_quant)
    packed_l, state_l = Q.quantize_4bit(x, blocksize, quant_type, double_quant)
    assert packed_l.dtype == torch.uint8 and packed_l.shape == packed_b.shape
    assert torch.equal(packed_l, packed_b)
    assert torch.equal(state_l.code, state_b.code)
    assert state_l.absmax.dtype == state_b.absmax.dtype
    assert torch.equal(state_l.absmax, state_b.absmax)
    if double_quant:
        assert torch.equal(state_l.offset, state_b.offset)
        assert torch.equal(state_l.nested_absmax, state_b.state2.absmax)
        assert torch.equal(state_l.nested_code, state_b.state2.code)
        assert state_l.nested_blocksize == state_b.state2.blocksize == 256
    out_b = bnb_dequantize(packed_b, state_b)
    out_l = Q.dequantize_4bit(packed_l, state_l)
    assert out_l.dtype == x.dtype and out_l.shape == x.shape
    assert torch.equal(out_l, out_b)
    # equal also as bits (torch.equal says -0.0 == 0.0; the sign of zero must match too),
    # except FP4's code 8, which bnb's scalar C kernel alone writes as -0.0
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
    same_bits = out_l.view(bits[x.dtype]) == out_b.view(bits[x.dtype])
    if quant_type == "fp4" and bnb_uses_scalar_c_kernel(x.shape, blocksize):
        same_bits |= out_b == 0
    assert same_bits.all()
    return packed_l, state_l


def bnb_uses_scalar_c_kernel(shape, blocksize):
    """bnb 0.50's CPU dequantize: C kernel for an even last dimension and blocksize < 2048;
    its AVX-512 branch takes last dimensions that are multiples of 16, the rest go scalar."""
    last = shape[-1] if len(shape) > 0 else 1
    return last % 2 == 0 and blocksize < 2048 and (not HAS_AVX512 or last % 16 != 0)


HAS_AVX512 = getattr(bnb_cpu_ops, "_has_avx512", False)
needs_avx512 = pytest.mark.skipif(not HAS_AVX512, reason="bnb's AVX-512 kernel is not used here")


@needs_avx512
def test_fp4_zero_sign_differs_only_in_bnb_scalar_c_kernel():
    # documents the exception made above: code 8 from bnb's scalar C kernel is -0.0
    x = torch.tensor([1.0] + [1e-3] * 9)  # last dim 10: scalar C kernel
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type="fp4")
    assert torch.signbit(bnb_dequantize(packed, state)[1])
    assert not torch.signbit(Q.dequantize_4bit(*Q.quantize_4bit(x, 64, "fp4"))[1])
    x = torch.tensor([1.0] + [1e-3] * 15)  # last dim 16: AVX-512 kernel, +0.0
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type="fp4")
    assert not torch.signbit(bnb_dequantize(packed, state)[1])


# ----------------------------------------------------------------------------- codebooks


def test_nf4_codebook_is_bitsandbytes_table_exactly():
    code = Q.nf4_codebook()
    assert code.dtype == torch.float32 and code.shape == (16,)
    assert torch.equal(code, F.get_4bit_type("nf4", device="cpu"))  # every bit
    assert code[0] == -1 and code[7] == 0 and code[15] == 1
    assert torch.all(code[1:] > code[:-1])
    assert (code > 0).sum() == 8 and (code < 0).sum() == 7  # asymmetric, exact zero


def test_nf4_codebook_against_stdlib_quantiles():
    # An independent implementation of the normal quantile (Python's statistics module).
    inv = statistics.NormalDist().inv_cdf
    pos = [inv(0.9677083 - k * (0.9677083 - 0.5) / 8) for k in range(8)]
    neg = [-inv(0.9677083 - k * (0.9677083 - 0.5) / 7) for k in range(7)]
    levels = sorted(neg + [0.0] + pos)
    expected = torch.tensor([v / levels[-1] for v in levels])
    assert torch.allclose(Q.nf4_codebook(), expected, rtol=0, atol=1e-6)


def test_nf4_codebook_with_unrounded_delta_differs_only_in_last_bits():
    exact = Q.nf4_codebook(offset=1 - (1 / 30 + 1 / 32) / 2)
    diff = (exact - Q.nf4_codebook()).abs().max().item()
    assert 0 < diff < 1e-6  # not bit-exact, as the docstring says, but within a few ulps


def test_fp4_and_int4_codebooks_match_bitsandbytes_tables():
    assert torch.equal(Q.fp4_codebook(), F.get_4bit_type("fp4", device="cpu"))
    # FP4 by hand: magnitudes 0, 0.0625, 8, 12, 4, 6, 2, 3 over 12, then the negatives
    by_hand = torch.tensor([0, 0.0625, 8, 12, 4, 6, 2, 3]) / 12
    assert torch.equal(Q.fp4_codebook()[:8], by_hand)
    assert torch.equal(Q.fp4_codebook()[8:], -by_hand)
    assert torch.equal(Q.int4_codebook(), torch.tensor([7, 6, 5, 4, 3, 2, 1, 0, 0, -1, -2,
                                                        -3, -4, -5, -6, -7]) / 7.0)


def test_dynamic_codebook_matches_create_dynamic_map():
    code = Q.dynamic_codebook()
    assert torch.equal(code, F.create_dynamic_map())
    assert code.shape == (256,) and code[-1] == 1 and torch.all(code[1:] >= code[:-1])
    # 10^-6 * midpoint of [0.1, 1] is the smallest positive level
    assert code[code > 0].min().item() == pytest.approx(0.55e-6, rel=1e-6)


def test_codebook_lookup_returns_copies_and_rejects_unknown_names():
    c = Q.codebook("nf4")
    c[0] = 5.0
    assert Q.CODEBOOKS["nf4"][0] == -1
    with pytest.raises(ValueError, match="unknown quant_type 'nf5'; choose one of nf4, fp4, int4"):
        Q.codebook("nf5")


# ----------------------------------------------------------------------------- nearest code


@pytest.mark.parametrize("quant_type", Q.QUANT_TYPES)
def test_nearest_code_index_matches_bruteforce_argmin(quant_type):
    code = Q.CODEBOOKS[quant_type]
    g = torch.Generator().manual_seed(1)
    v = torch.rand(20_000, generator=g) * 2.2 - 1.1
    got = Q.nearest_code_index(v, code).long()
    best = (v[:, None] - code[None, :]).abs().min(dim=1).values  # brute force over 16 levels
    assert torch.equal((v - code[got]).abs(), best)


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


def test_ties_go_to_the_lower_level_like_bitsandbytes():
    code = Q.CODEBOOKS["nf4"]
    mids = (code[:-1] + code[1:]) / 2
    x = torch.cat([torch.tensor([1.0]), mids])  # absmax 1: scaled values are exact midpoints
    packed, _ = assert_same_as_bnb(x, 64, "nf4", False)
    codes = Q.unpack_nibbles(packed, x.numel())
    assert codes[1:].tolist() == list(range(15))  # the lower of each pair


def test_fp4_tiny_positive_values_get_the_negative_zero_code():
    x = torch.tensor([1.0, 0.0, 1e-3, -1e-3, -0.0, 0.0026, -0.0026])
    packed, state = assert_same_as_bnb(x, 64, "fp4", False)
    assert Q.unpack_nibbles(packed, 7).tolist() == [3, 0, 8, 0, 0, 8, 0]
    out = Q.dequantize_4bit(packed, state)
    assert not torch.signbit(out).any()  # both zero codes decode to +0.0


# ----------------------------------------------------------------------------- vs bitsandbytes


def _shapes(blocksize, g):
    """Shapes around the block size: partial blocks, odd counts, 2-D, a single value.

    Left out on purpose: 2-D shapes whose last dimension is a multiple of 16 but not of the
    blocksize, which bnb's AVX-512 kernel dequantizes wrongly (tested separately below).
    """
    n = int(torch.randint(1, 3 * blocksize, (1,), generator=g))
    return [(1,), (blocksize,), (2 * blocksize + 1,), (n,), (3, blocksize // 2 + 3),
            (5, 2 * blocksize), (7, 9), (3, 10), (2, blocksize + 2)]


@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "dq"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_random_tensors_match_bitsandbytes(quant_type, dtype, double_quant):
    seed = 100 * ["nf4", "fp4"].index(quant_type) + 10 * DTYPES.index(dtype) + double_quant
    g = torch.Generator().manual_seed(seed)
    for blocksize in Q.BLOCKSIZES:
        for shape in _shapes(blocksize, g):
            scale = float(torch.empty(1).uniform_(-3, 3, generator=g).exp())
            x = (torch.randn(shape, generator=g) * scale).to(dtype)
            assert_same_as_bnb(x, blocksize, quant_type, double_quant)


@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "dq"])
def test_many_blocks_for_double_quant_nested_blocks(double_quant):
    # 300 blocks of 64: two nested blocks of 256, the second partial
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300 * 64 - 5, generator=g) * torch.rand(300 * 64 - 5, generator=g) ** 4
    for dtype in DTYPES:
        assert_same_as_bnb(x.to(dtype), 64, "nf4", double_quant)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_crafted_edge_values_match_bitsandbytes(dtype):
    code = Q.CODEBOOKS["nf4"]
    mids = (code[:-1] + code[1:]) / 2
    finfo = torch.finfo(dtype)
    parts = [
        torch.zeros(64),                                    # all-zero full block
        torch.tensor([2.5, -2.5] * 32),                     # +-absmax only
        torch.cat([torch.tensor([-3.0]), mids * 3.0, torch.zeros(48)]),  # midpoints * absmax
        torch.full((64,), finfo.tiny) * torch.linspace(-1, 1, 64),       # tiny values
        torch.linspace(-1, 1, 64) * 1e-39,  # absmax below the 1e-38 floor (float32, bf16)
        torch.tensor([finfo.max / 2, -finfo.max / 2] * 32),              # huge values
        torch.tensor([1e-30] * 63 + [1.0]),                 # one large value, rest tiny
        torch.zeros(37),                                    # all-zero partial last block
    ]
    x = torch.cat(parts).to(dtype)
    for quant_type in ("nf4", "fp4"):
        for double_quant in (False, True):
            assert_same_as_bnb(x, 64, quant_type, double_quant)


def test_zero_blocks_store_zero_but_a_zero_tail_stores_the_floor():
    x = torch.zeros(64 + 10)
    packed, state = assert_same_as_bnb(x, 64, "nf4", False)
    assert state.absmax[0].item() == 0.0
    assert state.absmax[1].item() == torch.tensor(1e-38).item()
    assert Q.unpack_nibbles(packed).unique().tolist() == [7]  # every value is NF4's zero
    assert torch.equal(Q.dequantize_4bit(packed, state), x)


def test_odd_count_pads_with_the_code_of_zero():
    x = torch.tensor([1.0, -1.0, 0.5])
    packed, _ = assert_same_as_bnb(x, 64, "nf4", False)
    assert packed.view(-1)[-1].item() & 0x0F == 7  # NF4 level 7 is 0.0


def test_full_blocks_multiply_by_reciprocal_and_the_tail_divides():
    # Search values v whose quantized code differs between v * (1/a) and v / a; bnb (and
    # labkit) use the first in full blocks and the second in the partial last block.
    a = torch.tensor(3.0)
    code = Q.CODEBOOKS["nf4"]
    mids = (code[:-1] + code[1:]) / 2
    cand = (mids.double() * 3.0).float()
    for _ in range(4):
        cand = torch.cat([cand, torch.nextafter(cand, cand * 2), torch.nextafter(cand, cand * 0)])
    by_recip = Q.nearest_code_index(cand * (1.0 / a), code)
    by_div = Q.nearest_code_index(cand / a, code)
    picked = cand[by_recip != by_div][:8]
    assert picked.numel() > 0, "no value found where the two roundings differ"
    full = torch.cat([torch.tensor([3.0]), picked, torch.zeros(63 - picked.numel())])
    tail = torch.cat([torch.tensor([3.0]), picked])
    packed, _ = assert_same_as_bnb(torch.cat([full, tail]), 64, "nf4", False)
    codes = Q.unpack_nibbles(packed, 64 + tail.numel())
    k = picked.numel()
    assert torch.equal(codes[1 : 1 + k], by_recip[by_recip != by_div][:k])
    assert torch.equal(codes[65 : 65 + k], by_div[by_recip != by_div][:k])


def test_double_quant_with_equal_absmax_everywhere():
    # every block has absmax 1: mean 1, centred absmax all zero -> a zero nested block
    x = torch.tensor([1.0, -0.5, 0.25, -1.0] * 16 * 40)
    packed, state = assert_same_as_bnb(x, 64, "nf4", True)
    assert state.nested_absmax.tolist() == [0.0]
    assert torch.equal(state.float_absmax(), torch.ones(40))


def test_8bit_grid_detail_matches_bitsandbytes_not_exact_nearest():
    code = Q.dynamic_codebook()
    mids = 0.5 * (code[:-1] + code[1:])
    # values just above a midpoint whose grid point lies below it: exact nearest says
    # "upper level", the 65536-point grid says "lower level"
    cand = torch.cat([torch.nextafter(mids, torch.tensor(2.0)) + k * 1e-6 for k in range(10)])
    x = torch.cat([torch.tensor([1.0]), cand[:255]])
    q_l, absmax_l = Q.quantize_blockwise_8bit(x)
    q_b, state_b = F.quantize_blockwise(x, blocksize=256)
    assert torch.equal(q_l, q_b) and torch.equal(absmax_l, state_b.absmax)
    exact = Q.nearest_code_index(x, code)
    assert (q_l != exact).any()  # the grid really differs from exact search here
    d_b = F.dequantize_blockwise(q_b, state_b)
    assert torch.equal(Q.dequantize_blockwise_8bit(q_l, absmax_l), d_b)


def test_8bit_blockwise_random_matches_bitsandbytes():
    g = torch.Generator().manual_seed(5)
    for n in (1, 255, 256, 257, 1000, 3000):
        x = torch.randn(n, generator=g) * 10 ** float(torch.empty(1).uniform_(-4, 2, generator=g))
        x[: n // 7] = 0.0
        q_l, absmax_l = Q.quantize_blockwise_8bit(x)
        q_b, state_b = F.quantize_blockwise(x, blocksize=256)
        assert torch.equal(q_l, q_b) and torch.equal(absmax_l, state_b.absmax)
        assert torch.equal(Q.dequantize_blockwise_8bit(q_l, absmax_l),
                           F.dequantize_blockwise(q_b, state_b))


def test_dequantize_uses_flat_blocks_where_bitsandbytes_avx512_kernel_does_not():
    # shape (8, 64) with blocksize 128: a block spans two rows. labkit must agree with an
    # independent flat-block computation and with bitsandbytes' pure-PyTorch dequantize.
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    packed, state = Q.quantize_4bit(x, 128, "nf4")
    out = Q.dequantize_4bit(packed, state)
    codes = Q.unpack_nibbles(packed, x.numel()).long()
    by_hand = (state.code[codes] * state.absmax[torch.arange(x.numel()) // 128]).reshape(8, 64)
    assert torch.equal(out, by_hand)
    reference = getattr(_dequantize_4bit_compute, "__wrapped__", _dequantize_4bit_compute)
    bnb_torch = reference(packed.view(-1), state.absmax, state.code, 128, (8, 64), torch.float32)
    assert torch.equal(out, bnb_torch)


def test_parameters_quantize_and_state_moves():
    w = torch.nn.Parameter(torch.randn(16, 64))
    packed, state = Q.quantize_4bit(w, double_quant=True)
    moved = state.to("cpu")
    assert moved is not state and torch.equal(moved.absmax, state.absmax)
    out = Q.dequantize_4bit(packed, moved)
    assert out.shape == (16, 64) and not out.requires_grad
    assert torch.equal(out, Q.dequantize_4bit(*Q.quantize_4bit(w.detach(), double_quant=True)))


def test_quant_module_does_not_import_bitsandbytes():
    code = "import sys, labkit.quant; print('bitsandbytes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@needs_avx512
def test_bnb_avx512_kernel_indexes_absmax_per_row():
    # Evidence for the bnb bug named in dequantize_4bit's docstring: with 64 columns and
    # blocks of 128, bnb's AVX-512 kernel scales row r, column c by absmax[r * (64 // 128)
    # + c // 128] = absmax[0] for every row, instead of absmax[(64 * r + c) // 128].
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    packed, state = F.quantize_4bit(x, blocksize=128, quant_type="nf4")
    out_bnb = bnb_dequantize(packed, state)
    codes = Q.unpack_nibbles(packed, x.numel()).long().reshape(8, 64)
    assert torch.equal(out_bnb, state.code[codes] * state.absmax[0])
    assert not torch.equal(out_bnb, Q.dequantize_4bit(*Q.quantize_4bit(x, 128, "nf4")))


# ----------------------------------------------------------------------------- CUDA rules

# Made on an H200 by scripts/record_bnb_cuda.py: inputs, and what bitsandbytes' CUDA kernels
# returned for them.
CUDA_RECORD = torch.load(REPO / "tests" / "fixtures" / "bnb_cuda_quant.pt")
CUDA_4BIT = [k for k in CUDA_RECORD if k not in ("meta", "8bit")]


def test_cuda_record_is_what_the_tests_expect():
    assert CUDA_RECORD["meta"]["bitsandbytes"] == bnb.__version__  # re-record on an upgrade
    assert sorted(CUDA_4BIT) == sorted(f"{q}-{d}" for q in ("nf4", "fp4")
                                       for d in ("float32", "bfloat16", "float16"))


def _codes(packed, n):
    return Q.unpack_nibbles(packed.reshape(-1), n)


@pytest.mark.parametrize("key", CUDA_4BIT)
def test_cuda_rules_match_bitsandbytes_cuda_kernel_up_to_its_reciprocal(key):
    r = CUDA_RECORD[key]
    x, quant_type = r["x"], key.split("-")[0]
    bnb_codes = _codes(r["packed"], x.numel())
    packed, state = Q.quantize_4bit(x, 64, quant_type, kernel="cuda")
    assert torch.equal(state.absmax, r["absmax"])  # incl. 0 for all-subnormal and zero blocks
    # The kernel's 1 / absmax is approximate: each block's codes must be what the rules give
    # for the exact reciprocal or one a float32 ulp away; most blocks need the exact one.
    explained = Q._cuda_codes_within_one_ulp(x, 64, quant_type, bnb_codes)
    assert explained.all(), f"blocks {(~explained).nonzero().flatten().tolist()}"
    same_block = (_codes(packed, x.numel()) == bnb_codes)
    same_block = torch.cat([same_block, same_block.new_ones(-x.numel() % 64)]).view(-1, 64)
    assert same_block.all(dim=1).float().mean() > 0.5
    # the CPU rules are not a match: the recording tells the two apart
    cpu_codes = _codes(Q.quantize_4bit(x, 64, quant_type, kernel="cpu")[0], x.numel())
    assert not Q._cuda_codes_within_one_ulp(x, 64, quant_type, cpu_codes).all()


@pytest.mark.parametrize("key", CUDA_4BIT)
def test_cuda_double_quant_state_and_dequantize_match_bitsandbytes_cuda(key):
    r = CUDA_RECORD[key]
    x, quant_type = r["x"], key.split("-")[0]
    # The offset is a float32 mean, whose summation order differs between devices, so the
    # 8-bit step is checked from the recorded one.
    q, nested = Q.quantize_blockwise_8bit(r["absmax"] - r["dq_offset"], kernel="cuda")
    assert torch.equal(q, r["dq_absmax"]) and torch.equal(nested, r["dq_nested_absmax"])
    _, state = Q.quantize_4bit(x, 64, quant_type, double_quant=True, kernel="cuda")
    assert abs(state.offset - r["dq_offset"]) <= 2 * torch.finfo(torch.float32).eps * r["dq_offset"]
    # dequantizing bitsandbytes' own codes and state gives bitsandbytes' CUDA output exactly
    plain = Q.QuantState(absmax=r["absmax"], shape=x.shape, dtype=x.dtype, blocksize=64,
                         quant_type=quant_type, code=Q.codebook(quant_type))
    assert torch.equal(Q.dequantize_4bit(r["packed"], plain), r["dequantized"])
    dq = Q.QuantState(absmax=r["dq_absmax"], shape=x.shape, dtype=x.dtype, blocksize=64,
                      quant_type=quant_type, code=Q.codebook(quant_type), offset=r["dq_offset"],
                      nested_absmax=r["dq_nested_absmax"], nested_code=Q.dynamic_codebook())
    assert torch.equal(Q.dequantize_4bit(r["packed"], dq), r["dq_dequantized"])


def test_cuda_8bit_binary_search_matches_bitsandbytes_cuda_exactly():
    r = CUDA_RECORD["8bit"]  # random values, then every midpoint of the code and its neighbours
    q, absmax = Q.quantize_blockwise_8bit(r["x"], kernel="cuda")
    assert torch.equal(q, r["q"]) and torch.equal(absmax, r["absmax"])
    assert torch.equal(Q.dequantize_blockwise_8bit(q, absmax), r["dequantized"])
    q_cpu, _ = Q.quantize_blockwise_8bit(r["x"], kernel="cpu")
    assert (q_cpu != r["q"]).sum() > 100  # the CPU grid rounds near midpoints differently


def test_c_float_literal_rounds_once_ties_to_even():
    # 1 + 2^-24 lies exactly halfway between 1 and the next float32: ties go to the even one
    assert Q._c_float_literal("1.000000059604644775390625") == 1.0
    assert Q._c_float_literal("1.000000178813934326171875") == 1 + 2**-22  # 1 + 3 * 2^-24
    # just above the halfway point rounds up; float64 rounding first would land on the tie
    text = "1.0000000596046448"
    assert Fraction(text) > Fraction(1) + Fraction(1, 2**24)
    assert Q._c_float_literal(text) == 1 + 2**-23
    assert torch.tensor(float(text), dtype=torch.float32).item() == 1.0  # the double rounding


def test_cuda_nf4_thresholds_are_the_midpoints_except_four_by_one_ulp():
    code = Q.CODEBOOKS["nf4"]
    mids = (code[:-1] + code[1:]) / 2
    cuda = torch.tensor(Q._CUDA_NF4_THRESHOLDS)
    off = (cuda != mids).nonzero().flatten().tolist()
    assert off == [0, 8, 12, 14]
    steps = cuda.view(torch.int32) - mids.view(torch.int32)  # ulps, as signed bit patterns
    assert steps[off].abs().tolist() == [1, 1, 1, 1]
    # So beside each of the four, one float32 gets different codes on the two kernels: the
    # upper of threshold and midpoint (ties go down on the CPU; the CUDA tree asks "x > t").
    x = torch.cat([torch.tensor([1.0]), torch.maximum(cuda, mids)])
    cpu = _codes(Q.quantize_4bit(x, 64, "nf4", kernel="cpu")[0], 16)
    gpu = _codes(Q.quantize_4bit(x, 64, "nf4", kernel="cuda")[0], 16)
    assert (cpu != gpu).nonzero().flatten().tolist() == [i + 1 for i in off]
    assert torch.equal(cpu[1:].long() - gpu[1:].long(), (cuda - mids).sign().long())


def test_cuda_fp4_sign_of_zero_follows_the_input():
    x = torch.tensor([1.0, 0.0, 1e-3, -1e-3, -0.0, 1e-40, -1e-40])
    gpu = _codes(Q.quantize_4bit(x, 64, "fp4", kernel="cuda")[0], 7)
    cpu = _codes(Q.quantize_4bit(x, 64, "fp4", kernel="cpu")[0], 7)
    assert gpu.tolist() == [3, 0, 0, 8, 0, 0, 0]  # subnormal -1e-40 is flushed to -0.0
    assert cpu.tolist() == [3, 0, 8, 0, 0, 8, 0]


def test_cuda_zero_block_keeps_absmax_zero_and_code_zero():
    x = torch.cat([torch.zeros(64), torch.ones(64)])
    packed, state = Q.quantize_4bit(x, 64, "nf4", kernel="cuda")
    assert state.absmax.tolist() == [0.0, 1.0]
    assert _codes(packed, 128)[:64].unique().tolist() == [0]  # 0 * inf is NaN: every test fails
    assert torch.equal(Q.dequantize_4bit(packed, state), x)  # -1.0 * 0 is still zero
    cpu_packed, _ = Q.quantize_4bit(x, 64, "nf4", kernel="cpu")
    assert _codes(cpu_packed, 128)[:64].unique().tolist() == [7]


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


def test_kernel_choice_is_checked_and_auto_follows_the_device():
    assert Q._check_kernel("auto", torch.device("cuda", 0)) == "cuda"
    assert Q._check_kernel("auto", torch.device("cpu")) == "cpu"
    assert Q._check_kernel("cuda", torch.device("cpu")) == "cuda"
    x = torch.randn(64)
    with pytest.raises(ValueError, match="unknown kernel 'gpu'; choose one of auto, cpu, cuda"):
        Q.quantize_4bit(x, kernel="gpu")
    with pytest.raises(ValueError, match="unknown kernel"):
        Q.quantize_blockwise_8bit(x, kernel="GPU")
    # int4 is labkit's own format: one rule on every device, zero blocks included
    x = torch.cat([x, torch.zeros(64)])
    a = _codes(Q.quantize_4bit(x, 64, "int4", kernel="cpu")[0], 128)
    assert torch.equal(a, _codes(Q.quantize_4bit(x, 64, "int4", kernel="cuda")[0], 128))


# ----------------------------------------------------------------------------- packing


def test_pack_nibbles_puts_the_first_value_in_the_high_nibble():
    codes = torch.tensor([1, 2, 3], dtype=torch.uint8)
    assert Q.pack_nibbles(codes).tolist() == [0x12, 0x30]
    assert Q.pack_nibbles(codes, fill=7).tolist() == [0x12, 0x37]
    codes = torch.randint(0, 16, (101,), dtype=torch.uint8)
    assert torch.equal(Q.unpack_nibbles(Q.pack_nibbles(codes), 101), codes)
    with pytest.raises(TypeError, match="pack_nibbles needs uint8 codes"):
        Q.pack_nibbles(codes.long())


def test_int4_round_trip_error_is_at_most_half_a_step():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(4))
    packed, state = Q.quantize_4bit(x, 64, "int4")
    err = (Q.dequantize_4bit(packed, state) - x).abs()
    step = state.absmax.repeat_interleave(64).reshape(4, 64) / 7
    assert torch.all(err <= step / 2 * (1 + 1e-6))


# ----------------------------------------------------------------------------- storage


def test_bits_per_weight_limits_by_hand():
    assert Q.bits_per_weight("nf4", 64, double_quant=False) == 4.5
    assert Q.bits_per_weight("nf4", 64, double_quant=True) == 4 + 8 / 64 + 32 / (64 * 256)
    assert round(Q.bits_per_weight("nf4", 64, double_quant=True), 3) == 4.127
    assert Q.bits_per_weight("fp4", 4096, double_quant=False) == 4 + 32 / 4096


def test_bits_per_weight_exact_small_layer_by_hand():
    # 1000 weights, blocks of 64: 500 bytes of codes, 16 blocks, 1 nested block.
    # double quant: 16 (uint8 absmax) + 4 (nested absmax) + 4 (offset) + 64 + 1024 (codes)
    assert Q.quantized_nbytes(1000, 64, double_quant=True) == 500 + 16 + 4 + 4 + 64 + 1024
    assert Q.bits_per_weight("nf4", 64, True, numel=1000) == 8 * 1612 / 1000
    assert Q.bits_per_weight("nf4", 64, True, numel=1000, count_codebooks=False) == 8 * 524 / 1000
    # plain: 500 + 16 * 4 + 64
    assert Q.quantized_nbytes(1000, 64, double_quant=False) == 628
    # odd count: 1001 values still fit 501 bytes and 16 blocks
    assert Q.quantized_nbytes(1001, 64, double_quant=False, count_codebooks=False) == 501 + 64


def test_exact_figure_is_the_limit_plus_per_layer_constants():
    numel = 4096 * 4096  # a multiple of 64 * 256: no partial blocks
    exact = Q.bits_per_weight("nf4", 64, True, numel=numel)
    per_layer_bytes = 4 + 16 * 4 + 256 * 4  # offset and the two codebooks
    assert exact == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 8 * per_layer_bytes / numel,
                                  rel=1e-12)
    assert exact - Q.bits_per_weight("nf4", 64, True) < 1e-3


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("numel", [1, 63, 1001, 64 * 256 + 64])
def test_state_bytes_plus_codes_equal_quantized_nbytes(numel, double_quant):
    x = torch.randn(numel)
    packed, state = Q.quantize_4bit(x, 64, "nf4", double_quant)
    for count in (True, False):
        total = packed.numel() + Q.quant_state_nbytes(state, count_codebooks=count)
        assert total == Q.quantized_nbytes(numel, 64, double_quant, count_codebooks=count)


def test_quantization_error_ranks_nf4_best_on_normal_weights_over_three_seeds():
    for seed in (0, 1, 2):
        x = torch.randn(256, 256, generator=torch.Generator().manual_seed(seed))
        err = {t: Q.quantization_error(x, t, 64)["mse"] for t in Q.QUANT_TYPES}
        assert err["nf4"] < err["fp4"] and err["nf4"] < err["int4"]
    e = Q.quantization_error(x, "nf4", 64)
    assert 0 < e["mae"] <= e["max_abs"] and 0 < e["rel_rmse"] < 0.2


# ----------------------------------------------------------------------------- bad input


def test_non_floating_input_is_rejected():
    with pytest.raises(TypeError, match=r"floating-point tensor .* got torch.int64; .*x.float\(\)"):
        Q.quantize_4bit(torch.arange(64))
    with pytest.raises(TypeError, match=r"float32, bfloat16 and float16 .* got torch.float64"):
        Q.quantize_4bit(torch.randn(64, dtype=torch.float64))
    with pytest.raises(TypeError, match="needs a torch.Tensor, got list"):
        Q.quantize_4bit([1.0, 2.0])


@pytest.mark.parametrize("blocksize", [16, 100, 8192, True])
def test_unsupported_blocksize_is_rejected(blocksize):
    with pytest.raises(ValueError, match=r"blocksize .* is not supported; choose one of 32, 64"):
        Q.quantize_4bit(torch.randn(128), blocksize=blocksize)


def test_unknown_quant_type_is_rejected():
    with pytest.raises(ValueError, match="unknown quant_type 'af4'"):
        Q.quantize_4bit(torch.randn(64), quant_type="af4")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_is_rejected(bad):
    x = torch.randn(200)
    x[130] = bad
    n_nan, n_inf = (1, 0) if math.isnan(bad) else (0, 1)
    with pytest.raises(ValueError, match=rf"{n_nan} NaN and {n_inf} inf .*index 130.*nan_to_num"):
        Q.quantize_4bit(x)
    x = torch.randn(10)
    x[9] = bad  # in the partial last block
    with pytest.raises(ValueError, match="index 9"):
        Q.quantize_4bit(x, double_quant=True)
    with pytest.raises(ValueError, match="index 9"):
        Q.quantize_blockwise_8bit(x)


def test_empty_tensor_is_rejected():
    with pytest.raises(ValueError, match=r"empty tensor \(shape \(0, 4\)\)"):
        Q.quantize_4bit(torch.zeros(0, 4))


def test_code_index_outside_codebook_is_rejected_on_dequantize():
    x = torch.linspace(-1, 1, 64)
    packed, state = Q.quantize_4bit(x)
    state.code = state.code[:8]  # a codebook that is too short for the stored indices
    with pytest.raises(ValueError, match=r"code index 15 is outside the codebook, .* 8 levels"):
        Q.dequantize_4bit(packed, state)
    q, absmax = Q.quantize_blockwise_8bit(x)
    with pytest.raises(ValueError, match=r"code index \d+ is outside the codebook"):
        Q.dequantize_blockwise_8bit(q, absmax, code=Q.dynamic_codebook()[:100])


def test_mismatched_packed_or_state_is_rejected():
    packed, state = Q.quantize_4bit(torch.randn(10, 64))
    with pytest.raises(TypeError, match="needs the uint8 packed tensor"):
        Q.dequantize_4bit(packed.float(), state)
    with pytest.raises(ValueError, match="packed holds 319 bytes but state.shape"):
        Q.dequantize_4bit(packed[1:], state)
    state.absmax = state.absmax[:-1]
    with pytest.raises(ValueError, match="state.absmax has 9 entries but 640 values"):
        Q.dequantize_4bit(packed, state)


# ----------------------------------------------------------------------------- benchmark


def test_benchmark_quick_mode_runs():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "quant_vs_bnb.py"), "--quick"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "labkit/bnb" in result.stdout and "quantize" in result.stdout
    assert "identical" in result.stdout
