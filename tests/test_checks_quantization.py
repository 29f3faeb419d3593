"""Lesson 04's checks, check_absmax_block and check_absmax_quantize
(labkit.checks.lesson04_quantization): right answers pass, each classic mistake is named."""

from __future__ import annotations

from labkit._deps import torch

import pytest

from labkit import checks
from labkit.quant import nf4_codebook


def good_block(block, code):
    absmax = block.abs().max()
    return (block.unsqueeze(1) / absmax - code).abs().argmin(dim=1), absmax


def good_quantize(x, code, bs):
    codes, scales = [], []
    for i in range(0, len(x), bs):
        c, s = good_block(x[i : i + bs], code)
        codes.append(c)
        scales.append(s)
    return torch.cat(codes), torch.stack(scales)


def test_absmax_checks_pass_and_agree_with_labkit_quant():
    assert checks.check_absmax_block(good_block).passed
    assert checks.check_absmax_quantize(good_quantize).passed
    # The same recipe gives labkit.quant's NF4 indices (its reference path, independent code).
    from labkit.quant import nearest_code_index

    x = torch.randn(64)
    idx, absmax = good_block(x, nf4_codebook())
    assert torch.equal(idx.to(torch.uint8), nearest_code_index(x / absmax, nf4_codebook()))


def test_absmax_block_accepts_numpy_codes_and_a_float_absmax():
    def numpy_block(block, code):
        idx, absmax = good_block(block, code)
        return idx.numpy().astype("uint8"), float(absmax)

    assert checks.check_absmax_block(numpy_block).passed


def _floor_block(block, code):
    absmax = block.abs().max()
    scaled = block / absmax
    idx = torch.searchsorted(code, scaled, right=True) - 1
    return idx.clamp(0, 15), absmax


BLOCK_MISTAKES = {
    "no division": (lambda b, c: ((b.unsqueeze(1) - c).abs().argmin(1), b.abs().max()),
                    "not divided by their block's absmax"),
    "floor": (_floor_block, "rounding goes down"),
    "max not abs": (lambda b, c: good_block(b / b.abs().max() * b.max(), c)[0:1] + (b.max(),),
                    "max(x), not max(|x|)"),
    "levels not indices": (lambda b, c: (c[good_block(b, c)[0]], b.abs().max()),
                           "return the *index*"),
    "single value": (lambda b, c: good_block(b, c)[0], "return a pair"),
}


@pytest.mark.parametrize("mistake", BLOCK_MISTAKES, ids=list(BLOCK_MISTAKES))
def test_absmax_block_names_each_mistake(mistake):
    fn, expected = BLOCK_MISTAKES[mistake]
    res = checks.check_absmax_block(fn)
    assert not res.passed and expected in res.message, res.message


def _blocks_with(span):
    def fn(x, code, bs):
        codes, scales = [], []
        for i in range(0, len(x), bs):
            a, b = span(i, bs)
            s = x[a:b].abs().max()
            codes.append((x[i : i + bs].unsqueeze(1) / s - code).abs().argmin(1))
            scales.append(s)
        return torch.cat(codes), torch.stack(scales)

    return fn


QUANT_MISTAKES = {
    "overlap": (_blocks_with(lambda i, bs: (i, i + bs + 1)), "reaches one value into the next"),
    "short": (_blocks_with(lambda i, bs: (i, i + bs - 1)), "misses its last value"),
    "no partial block": (
        lambda x, c, bs: good_quantize(x[: len(x) - len(x) % bs], c, bs) if len(x) % bs
        else good_quantize(x, c, bs),
        "blocks of",
    ),
    "global absmax": (
        lambda x, c, bs: ((x.unsqueeze(1) / x.abs().max() - c).abs().argmin(1),
                          x.abs().max().repeat(-(-len(x) // bs))),
        "whole tensor",
    ),
}


@pytest.mark.parametrize("mistake", QUANT_MISTAKES, ids=list(QUANT_MISTAKES))
def test_absmax_quantize_names_each_mistake(mistake):
    fn, expected = QUANT_MISTAKES[mistake]
    res = checks.check_absmax_quantize(fn)
    assert not res.passed and expected in res.message, res.message
