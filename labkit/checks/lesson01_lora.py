"""Lesson 01's exercise (used again in lesson 03): the trainable parameters of one adapter.

The learner writes ``f(d, k, r) -> int``, the number of parameters a rank-``r`` adapter adds
to a ``d x k`` weight: ``r * (d + k)`` (``B`` is ``d x r``, ``A`` is ``r x k``).
:func:`check_lora_param_count` tries rectangular and square layers and names the classic
miscount (the frozen weight, one factor only, ``r`` squared, a float...). Plain arithmetic:
it imports no torch.

Imports: ``labkit.checks.harness`` (the shared harness) and the standard library.
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Callable

from labkit.checks import harness as H  # the shared harness: CheckResult, _call, ...

_COUNT_MISTAKES = [
    ("that is d * k, the frozen weight W; only A (r x k) and B (d x r) train",
     lambda d, k, r: d * k),
    ("that is r * (d * k): the two factors are added, r * d + r * k = r * (d + k)",
     lambda d, k, r: r * d * k),
    ("that is only B (d x r); A (r x k) trains too", lambda d, k, r: d * r),
    ("that is only A (r x k); B (d x r) trains too", lambda d, k, r: r * k),
    ("that adds the frozen weight d * k; only A and B train",
     lambda d, k, r: d * k + r * (d + k)),
    ("that is 2 * r * d, right only for a square layer; A has r * k entries, B has d * r",
     lambda d, k, r: 2 * r * d),
    ("that is 2 * r * k, right only for a square layer; A has r * k entries, B has d * r",
     lambda d, k, r: 2 * r * k),
    ("that is r + d + k: each factor is a matrix, so multiply: r * d + r * k",
     lambda d, k, r: r + d + k),
    ("that is (r + d) * k or similar; the count is r * d + r * k",
     lambda d, k, r: (r + d) * k),
    ("that is r * r * (d + k); the rank appears once: r * (d + k)",
     lambda d, k, r: r * r * (d + k)),
]


def check_lora_param_count(fn: Callable, seed: int = 0) -> H.CheckResult:
    """Check ``fn(d, k, r) -> int``: trainable parameters of a rank-r adapter on a d x k weight.

    The reference is ``r * d + r * k`` (B is d x r, A is r x k), written out independently of
    ``labkit.lora.adapter_params``. Several rectangular layers are tried (d != k, so mixing
    them up shows), then a square one.

    Named mistakes: d * k; r * d * k; only A or only B; adding the frozen weight;
    2 r d or 2 r k (square-layer shortcuts); r + d + k; r squared; a float instead of an int.
    """
    name = "lora_param_count"
    if (bad := H._not_callable(name, fn)) is not None:
        return bad
    rng = random.Random(seed)
    cases = [(rng.choice([64, 96, 128, 320]), rng.choice([48, 80, 200]), rng.choice([2, 4, 8]))
             for _ in range(4)] + [(4096, 11008, 16), (1024, 1024, 8)]
    for d, k, r in cases:
        want = r * d + r * k
        try:
            got = H._call(fn, d, k, r)
        except H._LearnerError as exc:
            return H._report(name, False, f"your function raised {exc} for d={d}, k={k}, r={r}")
        if (bad := H._not_a_number(name, got, "a number (an int)")) is not None:
            return bad
        if not isinstance(got, numbers.Integral):
            if got == want:
                return H._report(
                    name,
                    False,
                    f"the value is right ({want:,}) but a count is a whole number: return an "
                    f"int, not {type(got).__name__} (use *, not / , or int(...))",
                )
        elif got == want:
            continue
        for why, mistake in _COUNT_MISTAKES:
            if got == mistake(d, k, r) != want:
                return H._report(
                    name, False, f"for d={d}, k={k}, r={r} you return {got:,}: {why} = {want:,}"
                )
        return H._report(
            name,
            False,
            f"for d={d}, k={k}, r={r} you return {got:,}, expected {want:,}: A is r x k and B "
            "is d x r, so r * k + d * r",
        )
    return H._report(name, True, f"r * (d + k) on {len(cases)} layers, e.g. 4096 x 11008 at r=16")
