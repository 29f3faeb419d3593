"""Exercise checks: a right answer passes; each classic mistake gets its own specific message.

Every wrong answer below is a function a learner could plausibly write; the test asserts the
check names that mistake (not just "incorrect"), prints exactly one protocol line, and never
raises. An unsolved stub (NotImplementedError) passes through so the cell fails there.

This file: the protocol and the harness (labkit.checks.harness), and lesson 01's parameter
count (labkit.checks.lesson01_lora); the other lessons' checks are tested in
test_checks_<lesson module>.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from labkit import checks

# ----------------------------------------------------------------------------- protocol

def test_protocol_line_round_trips(capsys):
    res = checks.check_lora_param_count(lambda d, k, r: r * (d + k))
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out == res.line + "\n"
    assert checks.parse_check_lines("noise\n" + out + "more noise") == [res]
    assert res.passed and bool(res)
    fail = checks.CheckResult("x", False, "what is wrong")
    assert checks.parse_check_lines(fail.line) == [fail]
    assert fail.line == "CHECK x: FAIL - what is wrong"


def test_arithmetic_checks_run_without_importing_torch():
    """A count or a byte total is checked at once: no torch import (seconds on a laptop)."""
    code = (
        "import sys; from labkit import checks\n"
        "checks.check_lora_param_count(lambda d, k, r: r * (d + k))\n"
        "checks.check_memory_term(lambda n: 8 * n)\n"
        "print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "False"


def test_passing_a_value_instead_of_the_function(capsys):
    res = checks.check_lora_param_count(16384)
    assert not res.passed and "pass your function itself" in res.message


def test_not_implemented_stub_propagates():
    def stub(d, k, r):
        raise NotImplementedError("Exercise: see the hint above")

    with pytest.raises(NotImplementedError, match="see the hint"):
        checks.check_lora_param_count(stub)



# ----------------------------------------------------------------------------- param count

COUNT_MISTAKES = {
    "d*k": (lambda d, k, r: d * k, "frozen weight W"),
    "r*d*k": (lambda d, k, r: r * d * k, "the two factors are added"),
    "B only": (lambda d, k, r: r * d, "only B"),
    "A only": (lambda d, k, r: r * k, "only A"),
    "plus frozen": (lambda d, k, r: d * k + r * (d + k), "adds the frozen weight"),
    "square": (lambda d, k, r: 2 * r * d, "square layer"),
    "float": (lambda d, k, r: r * (d + k) / 1, "return an int"),
    "None": (lambda d, k, r: None, "forget `return`"),
    "raises": (lambda d, k, r: d / 0, "raised ZeroDivisionError"),
    "other": (lambda d, k, r: r * (d + k) + 1, "A is r x k and B is d x r"),
}


def test_param_count_passes():
    assert checks.check_lora_param_count(lambda d, k, r: r * d + k * r).passed


@pytest.mark.parametrize("mistake", COUNT_MISTAKES, ids=list(COUNT_MISTAKES))
def test_param_count_names_each_mistake(mistake):
    fn, expected = COUNT_MISTAKES[mistake]
    res = checks.check_lora_param_count(fn)
    assert not res.passed and expected in res.message, res.message
