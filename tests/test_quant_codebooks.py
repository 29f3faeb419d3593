"""labkit.quant.codebooks: NF4, FP4, Int4 and the dynamic 8-bit code, computed, against
bitsandbytes' stored tables (every bit) and an independent normal quantile.
"""

from __future__ import annotations

import statistics

from labkit._deps import import_bnb, torch

import pytest

from labkit import quant as Q

F = import_bnb().functional


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
