"""labkit.quant.storage: bytes and bits per weight by hand, the state's bytes, and the
round-trip error that ranks the formats.
"""

from __future__ import annotations

from labkit._deps import torch

import pytest

from labkit import quant as Q

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


# ----------------------------------------------------------------------------- round-trip error


def test_quantization_error_ranks_nf4_best_on_normal_weights_over_three_seeds():
    for seed in (0, 1, 2):
        x = torch.randn(256, 256, generator=torch.Generator().manual_seed(seed))
        err = {t: Q.quantization_error(x, t, 64)["mse"] for t in Q.QUANT_TYPES}
        assert err["nf4"] < err["fp4"] and err["nf4"] < err["int4"]
    e = Q.quantization_error(x, "nf4", 64)
    assert 0 < e["mae"] <= e["max_abs"] and 0 < e["rel_rmse"] < 0.2
