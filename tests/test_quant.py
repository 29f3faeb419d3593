"""labkit.quant against bitsandbytes' CPU path, bit for bit, plus independent checks; and its
``kernel="cuda"`` rules against a recording of bitsandbytes' CUDA kernel (no GPU needed).

bitsandbytes 0.50 on the CPU quantizes 4-bit in pure PyTorch (its "default" backend) and
dequantizes with a C kernel, falling back to PyTorch for odd last dimensions and block sizes
of 2048 and up; double quantization uses its C 8-bit quantizer. The fallback is wrapped in
``torch.compile``; compiling it for every new shape would take seconds each, so the tests
switch dynamo off and run that same Python code eagerly (a multiply and a cast: compiled or
not, the values are the same).

The tests that need no bitsandbytes output follow the package's modules:
``test_quant_codebooks.py``, ``test_quant_blockwise.py``, ``test_quant_fast_lookup.py`` and
``test_quant_storage.py``.
"""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
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


# ----------------------------------------------------------------------------- ties and zeros


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


# ----------------------------------------------------------------------------- benchmark


def test_benchmark_quick_mode_runs():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "quant_vs_bnb.py"), "--quick"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "labkit/bnb" in result.stdout and "quantize" in result.stdout
    assert "identical" in result.stdout
