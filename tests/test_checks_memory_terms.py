"""Lessons 05-07's check, check_memory_term (labkit.checks.lesson05_memory_terms): each term's
right answer passes, each classic mistake is named, the references agree with labkit.quant."""

from __future__ import annotations

import math

import pytest

from labkit import checks

MEMORY_CASES = [
    ("adamw_state", lambda n: 2 * 4 * n, None),
    ("adamw_state", lambda n: 4 * n, "keeps two moments"),
    ("adamw_state", lambda n: 2 * n, "one 16-bit moment"),
    ("adamw_state", lambda n: 2 * 32 * n, "counts bits, not bytes"),
    ("adamw_state", lambda n: 8 * n / 1e9, "gigabytes"),
    ("nf4_weights", lambda n, bs: n / 2 + 4 * n / bs, None),
    ("nf4_weights", lambda n, bs: n / 2, "block scales are missing"),
    ("nf4_weights", lambda n, bs: n * 4 + 4 * n / bs, "4 bits as 4 bytes"),
    ("qlora_weights", lambda nb, na: nb * 4.5 / 8 + 2 * na, None),
    ("qlora_weights", lambda nb, na: (nb + na) * 4.5 / 8, "adapters are compressed too"),
    ("qlora_weights", lambda nb, na: nb * 0.5 + na * 2, "block scales are missing"),
    ("qlora_weights", lambda nb, na: nb * 0.75, "expected"),
]


@pytest.mark.parametrize("term, fn, expected", MEMORY_CASES)
def test_memory_terms(term, fn, expected):
    res = checks.check_memory_term(fn, term)
    assert res.name == f"memory_{term}"
    if expected is None:
        assert res.passed, res.message
    else:
        assert not res.passed and expected in res.message, res.message


def test_memory_term_references_agree_with_labkit_quant():
    from labkit.quant import quantized_nbytes

    for n, bs in checks.MEMORY_TERMS["nf4_weights"].cases:
        ref = checks.MEMORY_TERMS["nf4_weights"].reference(n, bs)
        assert ref == quantized_nbytes(n, bs, double_quant=False, count_codebooks=False)
    nb, na = 6_738_415_616, 39_976_960
    want = quantized_nbytes(nb, 64, double_quant=False, count_codebooks=False) + 2 * na
    assert checks.MEMORY_TERMS["qlora_weights"].reference(nb, na) == want
    assert math.isclose(checks.MEMORY_TERMS["adamw_state"].reference(10) / 10, 8)


def test_unknown_memory_term_is_the_authors_error():
    with pytest.raises(ValueError, match="unknown memory term 'adam'; known: adamw_state"):
        checks.check_memory_term(lambda n: n, "adam")
