"""labkit.quant's public functions against bad input: each call, the error it must raise and
a fragment of the message (the problem and the way out); then the inputs that must work
(numpy integers, extreme scales) with the right result. Valid results are compared with
bitsandbytes in ``test_quant.py``; nothing here changes them.
"""

from __future__ import annotations

from dataclasses import replace

from labkit._deps import torch

import numpy as np
import pytest

from labkit import quant as Q

W = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))  # 1024 values, 16 blocks
PACKED, PLAIN = Q.quantize_4bit(W, 64, "nf4")
_, NESTED = Q.quantize_4bit(W, 64, "nf4", double_quant=True)
U8 = torch.zeros(512, dtype=torch.uint8)  # 8-bit codes: two blocks of 256
ONES = torch.ones(2)


def dq(state, packed=PACKED):
    return lambda: Q.dequantize_4bit(packed, state)


# (id, call, error type, message fragment (a regex))
STATE_CASES = [
    ("nested-absmax-missing", dq(replace(NESTED, nested_absmax=None)), ValueError,
     r"state.absmax holds uint8 codes .*state.nested_absmax is None; .* read as scales. Pass"),
    ("plain-absmax-uint8", dq(replace(PLAIN, absmax=PLAIN.absmax.to(torch.uint8))), ValueError,
     r"uint8 codes \(double quantization\) but state.nested_absmax is None"),
    ("offset-missing", dq(replace(NESTED, offset=None)), ValueError,
     r"state.offset is None but the state is double-quantized"),
    ("offset-two-values", dq(replace(NESTED, offset=torch.ones(2))), ValueError,
     r"state.offset must hold one value"),
    ("nested-absmax-wrong-length", dq(replace(NESTED, nested_absmax=torch.ones(3))), ValueError,
     r"state.nested_absmax has 3 entries but 16 absmax values in nested blocks of 256 need 1"),
    ("nested-blocksize-zero", dq(replace(NESTED, nested_blocksize=0)), ValueError,
     r"state.nested_blocksize must be a positive int, got 0"),
    ("nested-absmax-with-float-absmax", dq(replace(NESTED, absmax=PLAIN.absmax)), TypeError,
     r"nested_absmax is set, so state.absmax must hold uint8 codes, got torch.float32"),
    ("offset-without-nesting", dq(replace(PLAIN, offset=torch.tensor(1.0))), ValueError,
     r"state.offset is set but state.nested_absmax is None"),
    ("nested-code-without-nesting", dq(replace(PLAIN, nested_code=Q.dynamic_codebook())),
     ValueError, r"state.nested_code is set but state.nested_absmax is None"),
    ("absmax-int", dq(replace(PLAIN, absmax=PLAIN.absmax.long())), TypeError,
     r"state.absmax is torch.int64; without double quantization it holds the float32 scales"),
    ("dtype-int64", dq(replace(PLAIN, dtype=torch.int64)), TypeError,
     r"state.dtype torch.int64 .* must be torch.float32, torch.bfloat16 or torch.float16"),
    ("dtype-float64", dq(replace(NESTED, dtype=torch.float64)), TypeError,
     r"state.dtype torch.float64 .* Convert the result instead"),
    ("dtype-string", dq(replace(PLAIN, dtype="float32")), TypeError, r"state.dtype 'float32'"),
    ("quant-type-unknown", dq(replace(PLAIN, quant_type="nf5")), ValueError,
     r"unknown quant_type 'nf5'; choose one of nf4, fp4, int4"),
    ("blocksize-float", dq(replace(PLAIN, blocksize=64.0)), ValueError,
     r"blocksize 64.0 \(a float, not an int\) is not supported; choose one of 32, 64"),
    ("blocksize-not-as-recorded", dq(replace(PLAIN, blocksize=128)), ValueError,
     r"state.absmax has 16 entries but 1024 values in blocks of 128 need 8"),
    ("shape-empty", dq(replace(PLAIN, shape=torch.Size((0, 64)))), ValueError,
     r"state.shape \(0, 64\) holds no values"),
    ("code-2d", dq(replace(PLAIN, code=PLAIN.code.view(4, 4))), ValueError,
     r"state.code must be a 1-D floating tensor of levels, got shape \(4, 4\)"),
    ("code-17-levels", dq(replace(PLAIN, code=torch.zeros(17))), ValueError,
     r"state.code has 17 levels; 4-bit codes name at most 16"),
    ("state-not-a-quantstate", dq({"absmax": PLAIN.absmax}), TypeError,
     r"needs the labkit.quant.QuantState that quantize_4bit returned, got builtins.dict"),
    ("packed-on-another-device", dq(PLAIN, PACKED.to("meta")), ValueError,
     r"state.absmax is on cpu but packed is on meta; move the state with state.to"),
    ("float-absmax-checks-too", lambda: replace(NESTED, nested_absmax=None).float_absmax(),
     ValueError, r"nested_absmax is None"),
    ("state-nbytes-checks-too", lambda: Q.quant_state_nbytes(replace(NESTED, offset=None)),
     ValueError, r"state.offset is None"),
    ("state-nbytes-not-a-state", lambda: Q.quant_state_nbytes({}), TypeError,
     r"quant_state_nbytes needs a labkit.quant.QuantState, got dict"),
]

ARGUMENT_CASES = [
    ("q4-blocksize-float", lambda: Q.quantize_4bit(W, 64.0), ValueError,
     r"blocksize 64.0 \(a float, not an int\) is not supported"),
    ("q4-blocksize-bool", lambda: Q.quantize_4bit(W, True), ValueError,
     r"blocksize True \(a bool, not an int\) is not supported"),
    ("q4-double-quant-string", lambda: Q.quantize_4bit(W, 64, "nf4", "no"), TypeError,
     r"double_quant must be True or False, got str 'no'"),
    ("q4-quant-type-case", lambda: Q.quantize_4bit(W, 64, "NF4"), ValueError,
     r"unknown quant_type 'NF4'.*\(lower case: 'nf4'\)"),
    ("q8-blocksize-float", lambda: Q.quantize_blockwise_8bit(W, blocksize=64.0), ValueError,
     r"blocksize must be a positive int, got float 64.0; pass the int 64"),
    ("q8-blocksize-bool", lambda: Q.quantize_blockwise_8bit(W, blocksize=True), ValueError,
     r"blocksize must be a positive int, got bool True"),
    ("q8-code-list", lambda: Q.quantize_blockwise_8bit(W, code=[0.0] * 256), TypeError,
     r"code must be a torch.Tensor, got list"),
    ("q8-code-unsorted", lambda: Q.quantize_blockwise_8bit(W, code=Q.dynamic_codebook().flip(0)),
     ValueError, r"256 finite levels in ascending order.*code.sort\(\)"),
    ("q8-code-nan", lambda: Q.quantize_blockwise_8bit(W, code=torch.full((256,), torch.nan)),
     ValueError, r"256 finite levels in ascending order"),
    ("dq8-q-list", lambda: Q.dequantize_blockwise_8bit([0, 1], ONES), TypeError,
     r"dequantize_blockwise_8bit needs uint8 indices, got list"),
    ("dq8-absmax-list", lambda: Q.dequantize_blockwise_8bit(U8, [1.0, 1.0]), TypeError,
     r"absmax must be a torch.Tensor, got list"),
    ("dq8-absmax-uint8", lambda: Q.dequantize_blockwise_8bit(U8, U8[:2]), TypeError,
     r"absmax must hold the float scales .* got torch.uint8; were the arguments swapped"),
    ("dq8-absmax-other-device", lambda: Q.dequantize_blockwise_8bit(U8, ONES.to("meta")),
     ValueError, r"absmax is on meta but q on cpu"),
    ("dq8-blocksize-zero", lambda: Q.dequantize_blockwise_8bit(U8, ONES, blocksize=0),
     ValueError, r"blocksize must be a positive int, got 0"),
    ("dq8-blocksize-float", lambda: Q.dequantize_blockwise_8bit(U8, ONES, blocksize=256.0),
     ValueError, r"blocksize must be a positive int, got float 256.0"),
    ("dq8-code-2d", lambda: Q.dequantize_blockwise_8bit(U8, ONES, torch.zeros(16, 16)),
     ValueError, r"code must be a 1-D floating tensor"),
    ("dq8-code-empty", lambda: Q.dequantize_blockwise_8bit(U8, ONES, torch.zeros(0)),
     ValueError, r"code is empty"),
    ("nbytes-numel-bool", lambda: Q.quantized_nbytes(True), ValueError,
     r"numel must be a positive int, got bool True"),
    ("nbytes-numel-float", lambda: Q.quantized_nbytes(1000.0), ValueError,
     r"numel must be a positive int, got float 1000.0; pass the int 1000"),
    ("nbytes-blocksize-float", lambda: Q.quantized_nbytes(1000, 64.0), ValueError,
     r"blocksize 64.0 \(a float, not an int\)"),
    ("nbytes-nested-blocksize-zero", lambda: Q.quantized_nbytes(1000, nested_blocksize=0),
     ValueError, r"nested_blocksize must be a positive int, got 0"),
    ("nbytes-double-quant-string", lambda: Q.quantized_nbytes(1000, 64, "no"), TypeError,
     r"double_quant must be True or False"),
    ("nbytes-count-codebooks-string",
     lambda: Q.quantized_nbytes(1000, count_codebooks="no"), TypeError,
     r"count_codebooks must be True or False"),
    ("bpw-nested-blocksize-zero", lambda: Q.bits_per_weight(nested_blocksize=0), ValueError,
     r"nested_blocksize must be a positive int, got 0"),
    ("bpw-blocksize-float", lambda: Q.bits_per_weight("nf4", 64.0), ValueError,
     r"blocksize 64.0 \(a float, not an int\)"),
    ("bpw-double-quant-none", lambda: Q.bits_per_weight("nf4", 64, None), TypeError,
     r"double_quant must be True or False, got NoneType"),
    ("codebook-case", lambda: Q.codebook("FP4"), ValueError, r"\(lower case: 'fp4'\)"),
    ("nf4-offset-one", lambda: Q.nf4_codebook(1.0), ValueError,
     r"offset must be a probability strictly between 0.5 and 1, got 1.0"),
    ("pack-list", lambda: Q.pack_nibbles([1, 2]), TypeError,
     r"pack_nibbles needs uint8 codes, got list"),
    ("pack-code-16", lambda: Q.pack_nibbles(torch.tensor([16, 1], dtype=torch.uint8)),
     ValueError, r"pack_nibbles got code 16; 4-bit codes are 0..15"),
    ("pack-fill-16", lambda: Q.pack_nibbles(torch.tensor([1], dtype=torch.uint8), fill=16),
     ValueError, r"fill must be a 4-bit code 0..15, got 16"),
    ("unpack-list", lambda: Q.unpack_nibbles([18]), TypeError,
     r"unpack_nibbles needs uint8 bytes, got list"),
    ("unpack-n-too-large", lambda: Q.unpack_nibbles(PACKED, 2000), ValueError,
     r"512 bytes hold 1023 or 1024 codes, not n=2000"),
    ("unpack-n-negative", lambda: Q.unpack_nibbles(PACKED, -1), ValueError,
     r"n must be an int >= 0, got -1"),
    ("unpack-n-float", lambda: Q.unpack_nibbles(PACKED, 1024.0), ValueError,
     r"n must be an int >= 0, got float 1024.0"),
    ("nearest-code-2d", lambda: Q.nearest_code_index(W, PLAIN.code.view(4, 4)), ValueError,
     r"code must be a 1-D floating tensor"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in STATE_CASES],
                         ids=[c[0] for c in STATE_CASES])
def test_inconsistent_quant_state_is_refused(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("call, error, message", [c[1:] for c in ARGUMENT_CASES],
                         ids=[c[0] for c in ARGUMENT_CASES])
def test_bad_argument_is_refused(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ----------------------------------------------------------------------------- what works


def test_every_state_quantize_4bit_returns_passes_its_check():
    for quant_type in Q.QUANT_TYPES:
        for double_quant in (False, True):
            packed, state = Q.quantize_4bit(W.half(), 64, quant_type, double_quant)
            state.check(packed)
            assert Q.quant_state_nbytes(state) > 0
    # nested_code None means the dynamic code: the same values
    assert torch.equal(Q.dequantize_4bit(PACKED, replace(NESTED, nested_code=None)),
                       Q.dequantize_4bit(PACKED, NESTED))


def test_integer_like_counts_are_accepted_and_stored_as_int():
    for blocksize in (np.int64(64), torch.tensor(64)):
        packed, state = Q.quantize_4bit(W, blocksize)
        assert type(state.blocksize) is int and torch.equal(packed, PACKED)
        assert Q.quantized_nbytes(1000, blocksize) == Q.quantized_nbytes(1000, 64)
    assert Q.quantized_nbytes(np.int64(1000)) == Q.quantized_nbytes(1000)
    assert Q.bits_per_weight(numel=np.int32(1000)) == Q.bits_per_weight(numel=1000)
    q, absmax = Q.quantize_blockwise_8bit(W, blocksize=np.int64(256))
    assert torch.equal(Q.dequantize_blockwise_8bit(q, absmax, blocksize=np.int64(256)),
                       Q.dequantize_blockwise_8bit(q, absmax))


@pytest.mark.parametrize("power", [70, -90])
def test_quantization_error_is_right_at_extreme_scales(power):
    # Scaling by a power of two changes no code, so the errors scale exactly; in float32
    # the squares of 2^70-sized errors overflowed (mse inf, rel_rmse NaN) and those of
    # 2^-90-sized ones underflowed (mse 0, rel_rmse 0).
    base = Q.quantization_error(W)
    scaled = Q.quantization_error(W * 2.0**power)
    assert scaled["rel_rmse"] == pytest.approx(base["rel_rmse"], rel=1e-12)
    assert scaled["mse"] == pytest.approx(base["mse"] * 4.0**power, rel=1e-12)
    assert scaled["mae"] == pytest.approx(base["mae"] * 2.0**power, rel=1e-12)
    assert scaled["max_abs"] == base["max_abs"] * 2.0**power


def test_odd_count_round_trips_through_pack_and_unpack():
    codes = torch.tensor([1, 15, 0, 7, 9], dtype=torch.uint8)
    packed = Q.pack_nibbles(codes, fill=3)
    assert packed.tolist() == [0x1F, 0x07, 0x93]
    assert torch.equal(Q.unpack_nibbles(packed, 5), codes)
    assert Q.unpack_nibbles(packed).tolist() == codes.tolist() + [3]
