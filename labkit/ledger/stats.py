"""The ledger's statistics: paired differences, Student's t, the 95 % interval, the verdict.

Every ledger row compares two arms on the same units (seeds, or layers): ``d_i = a_i - b_i``.
With ``n`` pairs, mean ``m``, sample standard deviation ``sd`` (``n - 1`` in the
denominator) and standard error ``se = sd / sqrt(n)``, the 95 % confidence interval of the
mean difference is::

    m ± t_{0.975, n-1} * se          (the paired t interval)

``t_{0.975, n-1}`` is Student's t quantile, computed here (no scipy): the CDF of t comes
from the regularized incomplete beta function (a continued fraction, Lentz's method)::

    P(T <= x) = 1 - I_{df / (df + x^2)}(df / 2, 1 / 2) / 2        (x >= 0)

and the quantile by bisection on that CDF. Table values: 12.706 (df 1), 4.303 (2),
2.776 (4), 2.262 (9); ``tests/test_ledger.py`` checks them.

The verdict (fixed before any ledger run, issue #21):

* "reproduced": the interval excludes 0 and the mean has the paper's sign;
* "contradicted": the interval excludes 0 and the mean has the opposite sign;
* "inconclusive" otherwise, with the reason: the interval contains 0, fewer than 2 pairs,
  a value that is not finite, or zero spread (every difference the same: a t interval of
  zero width, which says nothing about the next seed, so no verdict is drawn from it).

Printed precision: :func:`fmt` (4 significant digits) is how the ledger prints every number,
and the precision at which ``--check`` compares a rerun with the committed rows.

Imports: the standard library only.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

#: Significant digits of every number the ledger prints (and ``--check`` compares).
DIGITS = 4
VERDICTS = ("reproduced", "contradicted", "inconclusive")


def fmt(x: float | int | None) -> str:
    """A number as the ledger prints it: ``DIGITS`` significant digits; ints whole."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{DIGITS}g}"


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))  # even step
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))  # odd step
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)``, ``0 <= x <= 1``."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    # front factor x^a (1-x)^b / (a B(a, b)), through lgamma to stay finite
    ln = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
          + a * math.log(x) + b * math.log1p(-x))
    front = math.exp(ln)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here ...
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b  # ... else use the symmetry


def t_cdf(x: float, df: float) -> float:
    """``P(T <= x)`` for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + x * x))  # P(T > |x|)
    return 1.0 - tail if x >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (``t_quantile(0.975, 4)`` = 2.776...), by bisection
    on :func:`t_cdf` to about 1e-12."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # bracket the root
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Paired:
    """The paired comparison of two arms: ``d_i = a_i - b_i`` over ``n`` pairs.

    ``sd``, ``se``, ``t``, ``lo`` and ``hi`` are ``None`` where they do not exist (fewer than
    2 pairs, or a value that is not finite).
    """

    n: int
    mean: float | None
    sd: float | None
    se: float | None
    t: float | None
    lo: float | None
    hi: float | None
    level: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


def paired(a: list[float], b: list[float], level: float = 0.95) -> Paired:
    """Mean of ``a_i - b_i``, its standard error and the two-sided ``level`` t interval.

    Raises:
        ValueError: ``a`` and ``b`` differ in length, or are empty.
    """
    if len(a) != len(b):
        raise ValueError(f"paired arms need the same units: {len(a)} values against {len(b)}")
    if not a:
        raise ValueError("no pairs to compare")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(d)
    if not all(math.isfinite(x) for x in d):
        return Paired(n, None, None, None, None, None, None, level)
    m = math.fsum(d) / n
    if n < 2:
        return Paired(n, m, None, None, None, None, None, level)
    sd = statistics.stdev(d)
    se = sd / math.sqrt(n)
    t = t_quantile(0.5 + level / 2.0, n - 1)
    return Paired(n, m, sd, se, t, m - t * se, m + t * se, level)


def verdict(p: Paired, expected_sign: int) -> tuple[str, str]:
    """``(verdict, reason)`` by the ledger's rules (module docstring).

    Args:
        p: the paired comparison, ``variant - baseline``.
        expected_sign: +1 or -1, the sign of ``variant - baseline`` the paper predicts
            (e.g. -1 for a loss the variant should lower).
    """
    if expected_sign not in (1, -1):
        raise ValueError(f"expected_sign must be +1 or -1, got {expected_sign!r}")
    pct = f"{p.level:.0%}".replace("%", " %")
    if p.mean is None:
        return "inconclusive", "a value is not finite (a run diverged?): no mean to test"
    if p.n < 2:
        return "inconclusive", f"fewer than 2 pairs (n = {p.n}): no spread, so no interval"
    if p.sd == 0:
        if p.mean == 0:
            return "inconclusive", (f"zero spread: all {p.n} differences are 0, the arms "
                                    "agree exactly")
        return "inconclusive", (f"zero spread: all {p.n} differences equal {fmt(p.mean)}; a "
                                "t interval of zero width says nothing about other units")
    ci = f"the {pct} CI [{fmt(p.lo)}, {fmt(p.hi)}]"
    if p.lo > 0 or p.hi < 0:
        if (p.mean > 0) == (expected_sign > 0):
            return "reproduced", f"{ci} excludes 0, with the paper's sign"
        return "contradicted", f"{ci} excludes 0, with the sign opposite to the paper's"
    return "inconclusive", f"{ci} contains 0"
