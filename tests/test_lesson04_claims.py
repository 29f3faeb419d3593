"""The claims lesson 04 makes about the 4-bit formats, each checked beyond the one run it shows.

The lesson prints one run; these tests back its comparisons on three seeds (normal data),
on every linear layer of the pretrained model, and on three evaluation samples.
"""

from __future__ import annotations

import copy

from labkit._deps import torch

import pytest

from labkit import models, quant, train

FORMATS = ("nf4", "fp4", "int4")


def rel_error(x, fmt, double_quant=False):
    return quant.quantization_error(x, fmt, 64, double_quant)["rel_rmse"]


@pytest.fixture(scope="module")
def pretrained():
    return models.load_pretrained().model


def block_linears(model):
    return {name: mod.weight.detach() for name, mod in model.layers.named_modules()
            if isinstance(mod, torch.nn.Linear)}


def quantized_copy(model, fmt, double_quant=False):
    q = copy.deepcopy(model)
    for mod in q.layers.modules():
        if isinstance(mod, torch.nn.Linear):
            packed, state = quant.quantize_4bit(mod.weight.data, 64, fmt, double_quant)
            mod.weight.data = quant.dequantize_4bit(packed, state)
    return q


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_error_order_nf4_int4_fp4_on_normal_data(seed):
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(seed))
    err = {f: rel_error(x, f) for f in FORMATS}
    assert err["nf4"] < err["int4"] < err["fp4"], err


def test_error_order_nf4_int4_fp4_in_every_pretrained_layer(pretrained):
    layers = block_linears(pretrained)
    assert len(layers) == 14
    for name, w in layers.items():
        err = {f: rel_error(w, f) for f in FORMATS}
        assert err["nf4"] < err["int4"] < err["fp4"], (name, err)


def _rel_error_with(x, code):
    # blockwise absmax round trip (blocks of 64) with any codebook, as lesson 04 writes it
    blocks = x.reshape(-1, 64)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    idx = (blocks[..., None] / absmax[..., None] - code).abs().argmin(dim=-1)
    return ((code[idx] * absmax - blocks).norm() / blocks.norm()).item()


def _e2m1():
    # the standard 4-bit float (OCP E2M1): magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6, over 6
    mags = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6]) / 6
    return torch.cat([mags, -mags])


def test_bnb_fp4_is_e2m1_except_its_smallest_level():
    bnb = sorted(set(quant.fp4_codebook().abs().tolist()))
    std = sorted(set(_e2m1().abs().tolist()))
    assert bnb[0] == std[0] == 0.0 and bnb[2:] == std[2:]  # same top steps
    assert bnb[1] == pytest.approx(1 / 192) and std[1] == pytest.approx(1 / 12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_e2m1_beats_int4_which_beats_bnb_fp4_on_normal_data(seed):
    # Lesson 04: FP4 loses to Int4 because of its 1/192 level, not its top steps.
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(seed))
    fp4 = _rel_error_with(x, quant.fp4_codebook())
    assert fp4 == pytest.approx(rel_error(x, "fp4"), rel=1e-4)  # the hand round trip is labkit's
    assert _rel_error_with(x, _e2m1()) < rel_error(x, "int4") < fp4


def test_e2m1_beats_int4_on_the_pretrained_weights(pretrained):
    flat = torch.cat([w.reshape(-1) for w in block_linears(pretrained).values()])
    assert _rel_error_with(flat, _e2m1()) < rel_error(flat, "int4") < rel_error(flat, "fp4")


def test_double_quant_barely_moves_the_weight_error(pretrained):
    flat = torch.cat([w.reshape(-1) for w in block_linears(pretrained).values()])
    plain, dq = rel_error(flat, "nf4"), rel_error(flat, "nf4", double_quant=True)
    # the 8-bit absmax rounds each scale by well under 1 %: the error moves in the 3rd digit
    assert plain <= dq < plain * 1.01


def test_every_format_keeps_full_accuracy_on_three_eval_samples(pretrained):
    # The lesson's "accuracy cannot tell the formats apart", on three samples of 100 words.
    variants = {f: quantized_copy(pretrained, f) for f in FORMATS}
    variants["nf4+dq"] = quantized_copy(pretrained, "nf4", double_quant=True)
    for seed in (train.EVAL_SEED, 1, 2):
        for name, m in variants.items():
            assert train.evaluate(m, "reverse", n=100, seed=seed) == 1.0, (name, seed)


def test_absmax_by_hand_agrees_with_quantize_4bit_on_every_block(pretrained):
    # The lesson's hand-made absmax quantization of one block, applied to all blocks of a layer.
    w = pretrained.layers[0].self_attn.q_proj.weight.detach()
    code = quant.nf4_codebook()
    blocks = w.reshape(-1, 64)
    absmax = blocks.abs().amax(dim=1)
    by_hand = ((blocks / absmax[:, None])[..., None] - code).abs().argmin(dim=-1).reshape(-1)
    packed, state = quant.quantize_4bit(w, 64, "nf4")
    assert torch.equal(state.absmax, absmax)
    assert torch.equal(quant.unpack_nibbles(packed, w.numel()).long(), by_hand)
