"""labkit.quant.blockwise (and its input checks): the nearest-code rule against a brute-force
argmin, nibble packing, round trips, and the errors bad input gets. No bitsandbytes here:
``test_quant.py`` compares the same functions with it bit for bit.
"""

from __future__ import annotations

import math

from labkit._deps import torch

import pytest

from labkit import quant as Q


def _codes(packed, n):
    return Q.unpack_nibbles(packed.reshape(-1), n)


# ----------------------------------------------------------------------------- nearest code


@pytest.mark.parametrize("quant_type", Q.QUANT_TYPES)
def test_nearest_code_index_matches_bruteforce_argmin(quant_type):
    code = Q.CODEBOOKS[quant_type]
    g = torch.Generator().manual_seed(1)
    v = torch.rand(20_000, generator=g) * 2.2 - 1.1
    got = Q.nearest_code_index(v, code).long()
    best = (v[:, None] - code[None, :]).abs().min(dim=1).values  # brute force over 16 levels
    assert torch.equal((v - code[got]).abs(), best)


# ----------------------------------------------------------------------------- round trips


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


def test_parameters_quantize_and_state_moves():
    w = torch.nn.Parameter(torch.randn(16, 64))
    packed, state = Q.quantize_4bit(w, double_quant=True)
    moved = state.to("cpu")
    assert moved is not state and torch.equal(moved.absmax, state.absmax)
    out = Q.dequantize_4bit(packed, moved)
    assert out.shape == (16, 64) and not out.requires_grad
    assert torch.equal(out, Q.dequantize_4bit(*Q.quantize_4bit(w.detach(), double_quant=True)))


# ----------------------------------------------------------------------------- bad input


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
