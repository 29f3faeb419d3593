"""Lessons 05-07's exercises: the bytes of one memory term, from a parameter count.

The learner writes a function that returns bytes: ``"nf4_weights"`` ``f(n_params,
blocksize)`` (lesson 05, QLoRA), ``"adamw_state"`` ``f(n_params)`` (lesson 06, memory) and
``"qlora_weights"`` ``f(n_base, n_adapter)`` (lesson 07, practice).
:data:`MEMORY_TERMS` holds each term's formula, reference, cases and classic mistakes;
:func:`check_memory_term` runs one. Plain arithmetic: it imports no torch.

Imports: ``labkit.checks.harness`` (the shared harness) and the standard library.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from labkit.checks import harness as H  # the shared harness: CheckResult, _call, ...


@dataclass(frozen=True)
class _Term:
    signature: str
    formula: str
    reference: Callable
    mistakes: tuple
    cases: tuple
    #: One more case from a random.Random (multiples of 64: whole blocks and bytes).
    random_case: Callable


def _whole_blocks(rng: random.Random, blocksize: int) -> tuple[int, int]:
    return blocksize * rng.randrange(1, 10**7), blocksize


#: The memory terms ``check_memory_term`` knows: name -> what the learner's function computes.
MEMORY_TERMS: dict[str, _Term] = {
    "adamw_state": _Term(
        signature="f(n_params) -> bytes",
        formula="AdamW keeps two moments (m and v) per trainable parameter, each fp32 "
                "(4 bytes): 8 * n_params bytes",
        reference=lambda n: 8 * n,
        mistakes=(
            ("4 bytes per parameter: that is one fp32 moment (or two 16-bit ones); AdamW "
             "keeps two moments, m and v, each in fp32", lambda n: 4 * n),
            ("2 bytes per parameter: that is one 16-bit moment; AdamW keeps two fp32 moments",
             lambda n: 2 * n),
            ("64 per parameter: that counts bits, not bytes (2 moments x 32 bits); divide by 8",
             lambda n: 64 * n),
            ("32 per parameter: bits of one moment; AdamW keeps two, and memory is in bytes",
             lambda n: 32 * n),
            ("12 bytes per parameter adds an fp32 copy of the weights; the term asked for is "
             "the optimizer state only", lambda n: 12 * n),
            ("16 bytes per parameter adds weights and gradients; the term asked for is the "
             "optimizer state only", lambda n: 16 * n),
            ("that looks like gigabytes; return bytes (no division by 1e9 or 2**30)",
             lambda n: 8 * n / 1e9),
        ),
        cases=((1_000,), (4_194_304,), (7_000_000_000,), (12_345,)),
        random_case=lambda rng: (64 * rng.randrange(1, 10**8),),
    ),
    "nf4_weights": _Term(
        signature="f(n_params, blocksize) -> bytes",
        formula="4-bit codes take n / 2 bytes, plus one fp32 absmax (4 bytes) per block of "
                "`blocksize` weights: n / 2 + 4 * n / blocksize",
        reference=lambda n, bs: n // 2 + 4 * (n // bs),
        mistakes=(
            ("the block scales are missing: every block of `blocksize` weights also stores "
             "its fp32 absmax, 4 bytes", lambda n, bs: n // 2),
            ("4 bytes per weight: that counts 4 bits as 4 bytes; 4 bits are half a byte",
             lambda n, bs: 4 * n + 4 * (n // bs)),
            ("the scales are counted in bits: 32 bits per absmax are 4 bytes",
             lambda n, bs: n // 2 + 32 * (n // bs)),
            ("one absmax per weight instead of per block: there are n / blocksize blocks",
             lambda n, bs: n // 2 + 4 * n),
            ("the absmax is counted as 2 bytes; bitsandbytes stores it as fp32, 4 bytes",
             lambda n, bs: n // 2 + 2 * (n // bs)),
            ("that is the whole thing in bits; divide by 8 for bytes",
             lambda n, bs: 4 * n + 32 * (n // bs)),
        ),
        cases=((4096, 64), (1_048_576, 64), (7_000_000_000, 64), (65_536, 128)),
        random_case=lambda rng: _whole_blocks(rng, rng.choice((64, 128, 256))),
    ),
    "qlora_weights": _Term(
        signature="f(n_base, n_adapter) -> bytes",
        formula="QLoRA stores the frozen base in NF4 (4 bits + an fp32 absmax per 64 "
                "weights = 4.5 bits) and keeps the adapters in bf16 (2 bytes): "
                "n_base * 4.5 / 8 + 2 * n_adapter",
        reference=lambda nb, na: nb * 9 // 16 + 2 * na,
        mistakes=(
            ("the adapters are compressed too: in QLoRA only the frozen base is 4-bit; the "
             "adapters train in bf16, 2 bytes each", lambda nb, na: (nb + na) * 4.5 / 8),
            ("the block scales are missing: NF4 with blocks of 64 costs 4 + 32 / 64 = 4.5 bits "
             "per weight, not 4", lambda nb, na: nb / 2 + 2 * na),
            ("the block scales are missing and the adapters are compressed too",
             lambda nb, na: (nb + na) / 2),
            ("the base is counted at 16 bits: QLoRA quantizes the frozen base to 4 bits",
             lambda nb, na: 2 * nb + 2 * na),
            ("the base is 4-bit but the adapters are counted at 4 bytes (fp32); they are bf16 "
             "here, 2 bytes", lambda nb, na: nb * 4.5 / 8 + 4 * na),
            ("the compression factor is applied to the adapters instead of the base",
             lambda nb, na: 2 * nb + na * 4.5 / 8),
        ),
        cases=((6_738_415_616, 39_976_960), (1_048_576, 16_384), (64_000, 1_000)),
        random_case=lambda rng: (64 * rng.randrange(1, 10**8), 64 * rng.randrange(1, 10**6)),
    ),
}


def check_memory_term(fn: Callable, term: str = "adamw_state",
                      seed: int | None = None) -> H.CheckResult:
    """Check a function that returns the bytes of one memory term.

    Terms (see ``MEMORY_TERMS``): ``"adamw_state"`` ``f(n_params)``, 8 bytes per parameter;
    ``"nf4_weights"`` ``f(n_params, blocksize)``, codes plus fp32 block scales;
    ``"qlora_weights"`` ``f(n_base, n_adapter)``, a 4.5-bit base plus bf16 adapters. The
    inputs are multiples of 64 (whole blocks and bytes), so the exact answer is an integer;
    a float equal to it is accepted.

    With a ``seed`` (``python -m labkit.classroom check`` passes a fresh one), one more case
    drawn from it follows the fixed ones, so the inputs cannot be known in advance.

    Named mistakes per term: one moment instead of two, bf16 instead of fp32, bits instead of
    bytes, gigabytes instead of bytes, missing block scales, compressing the adapters...

    Raises:
        ValueError: an unknown ``term`` (the message lists the known ones). This is the
            lesson author's error, not the learner's.
    """
    if term not in MEMORY_TERMS:
        raise ValueError(f"unknown memory term {term!r}; known: {', '.join(MEMORY_TERMS)}")
    spec = MEMORY_TERMS[term]
    name = f"memory_{term}"
    if (bad := H._not_callable(name, fn)) is not None:
        return bad
    cases = spec.cases
    if seed is not None:
        cases = (*cases, spec.random_case(random.Random(seed)))
    for args in cases:
        want = spec.reference(*args)
        shown = ", ".join(f"{a:,}" for a in args)
        try:
            got = H._call(fn, *args)
        except H._LearnerError as exc:
            return H._report(name, False, f"your function raised {exc} for ({shown})")
        if (bad := H._not_a_number(name, got, "a number of bytes")) is not None:
            return bad
        if math.isclose(got, want, rel_tol=1e-9):
            continue
        for why, mistake in spec.mistakes:
            alt = mistake(*args)
            if math.isclose(got, alt, rel_tol=1e-9) and not math.isclose(alt, want):
                return H._report(name, False, f"for ({shown}) you return {got:,.6g}: {why}")
        return H._report(
            name, False, f"for ({shown}) you return {got:,.6g}, expected {want:,}: {spec.formula}"
        )
    done = spec.formula.split(":")[-1].strip()
    return H._report(name, True, f"{done} on {len(cases)} inputs")
