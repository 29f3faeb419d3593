"""Two look-up tables that replace readable steps of 4-bit (de)quantization, for speed only.

They are optimizations, not rules: each gives exactly what the readable step it replaces
gives, and a test shows it (``tests/test_quant_fast_lookup.py``). Read
:mod:`labkit.quant.blockwise` for the algorithm; come here only to see why it runs fast.

* ``_CodeLookup`` / ``_code_lookup`` replace the per-value code search of
  ``quantize_4bit`` (``blockwise._exact_rule``: ``nearest_code_index`` with bitsandbytes'
  CPU rules, ``bnb_rules._cuda_code_index`` with its CUDA rules). That search is a binary
  search per value (``torch.bucketize``) and was the slowest step of quantizing; the table
  answers most values with one read. Checked equal to the rule on every bfloat16 and
  float16 value, both ends of every interval the table keys on, a few ulps around every
  threshold and random float32 values, for each format and kernel.
* ``_pair_table`` replaces ``code[unpack_nibbles(packed)]`` in ``dequantize_4bit``: one
  read per byte fetches both of its levels, with no separate unpacking pass. Checked equal
  to the readable ``code[index] * absmax[block]`` on random tensors of every dtype.

Neither changes a single bit of the output. ``benchmarks/quant_vs_bnb.py`` times the
result against bitsandbytes' CPU path.

May import: torch (through ``labkit._deps``); nothing from labkit. The exact rule is passed
in, so this module does not depend on the one it speeds up.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from labkit._deps import torch  # one clear line when torch is missing


class _CodeLookup:
    """Code search with a 65536-entry table instead of a binary search per value.

    ``torch.bucketize`` does a branchy binary search for each of millions of values and is
    the slowest step of quantization. Here is a shortcut that gives exactly the same index
    as the exact rule ``exact`` (``nearest_code_index`` or ``_cuda_code_index``):

    A float32's top 16 bits (sign, exponent, 7 mantissa bits, i.e. its bfloat16 truncation)
    name an interval of floats. Most such intervals contain no threshold between levels, so
    every value in them gets the same code: store it in ``table[top16]``. The few intervals
    that do contain one (15 of the 65536 for NF4; the NaN/inf patterns are also marked) are
    marked ``AMBIGUOUS``, and the values that fall in them (about 1 % of normally distributed
    weights) go through ``exact``. (Both rules step only at thresholds, so an interval whose
    two ends get the same code holds no other.)
    """

    AMBIGUOUS = 255

    def __init__(self, exact):
        self.exact = exact
        high = torch.arange(-(2**15), 2**15, dtype=torch.int32) << 16  # every top-16 pattern
        lowest = high.view(torch.float32)  # the interval's ends (swapped when negative)
        highest = (high | 0xFFFF).view(torch.float32)
        at_low, at_high = exact(lowest), exact(highest)
        same = (at_low == at_high) & torch.isfinite(lowest) & torch.isfinite(highest)
        entries = torch.where(same, at_low, torch.full_like(at_low, self.AMBIGUOUS))
        self.table = torch.empty(2**16, dtype=torch.uint8)
        self.table[(high >> 16) & 0xFFFF] = entries.to(torch.uint8)  # same key as __call__

    def __call__(self, scaled: torch.Tensor) -> torch.Tensor:
        """uint8 code index of each value of the float32 tensor ``scaled`` (flattened)."""
        flat = scaled.reshape(-1)
        top16 = flat.view(torch.int32).bitwise_right_shift(16).bitwise_and_(0xFFFF)
        index = self.table.index_select(0, top16)
        unsure = (index == self.AMBIGUOUS).nonzero().squeeze(1)
        index[unsure] = self.exact(flat[unsure])
        return index


@cache
def _code_lookup(
    rule: Callable[[str, str, torch.device], Callable[[torch.Tensor], torch.Tensor]],
    quant_type: str,
    kernel: str,
    device: torch.device,
) -> _CodeLookup:
    """The table look-up for ``rule(quant_type, kernel, device)``, made once per device.

    ``rule`` is ``blockwise._exact_rule``, which gives the exact per-value code rule for
    ``quant_type`` under ``kernel``'s rules ("cpu" or "cuda"). The table is built on the CPU
    and moved to ``device``; the values it leaves ``AMBIGUOUS`` go through the rule there.
    """
    lookup = _CodeLookup(rule(quant_type, kernel, torch.device("cpu")))
    lookup.table, lookup.exact = lookup.table.to(device), rule(quant_type, kernel, device)
    return lookup


def _pair_table(code: torch.Tensor) -> torch.Tensor:
    """(256,) table: byte -> its two float32 levels (high nibble's first) as one 8-byte item.

    Row b of the (256, 2) float32 table is (code[b >> 4], code[b & 15]); viewing each row's
    8 bytes as one int64 lets a single 1-D ``index_select`` fetch both levels at once, and
    viewing the result back as float32 restores the pairs in order.
    """
    byte = torch.arange(256, device=code.device)
    pairs = torch.stack([code[byte >> 4], code[byte & 0x0F]], dim=1).contiguous()
    return pairs.view(torch.int64).reshape(256)
