"""The checks' shared harness: the protocol line, calling the learner's code, reporting.

Every ``check_*`` (one module per lesson, in this package) uses these pieces: it refuses a
value passed instead of a function (:func:`_not_callable`), calls the learner's function
through :func:`_call` (an unsolved stub's ``NotImplementedError`` passes through; any other
exception becomes a :class:`_LearnerError` that the check reports), and ends with
:func:`_report`, which prints the one protocol line for the learner (read back from stored
outputs with :data:`CHECK_LINE` / :func:`parse_check_lines`) and returns the
:class:`CheckResult` that ``python -m labkit.classroom check`` takes its verdict from (it
runs the check in its own process, never reading the line)::

    CHECK <name>: PASS - <message>
    CHECK <name>: FAIL - <message>

torch is not imported here: a check on tensors calls :func:`_need_torch` with its module's
``globals()`` first, so a check of plain arithmetic (a count, a number of bytes) runs at
once, also where torch is missing.

Imports: the standard library only (``labkit._deps`` for torch, on first use).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass

#: One protocol line, as printed by every check and parsed by ``labkit.classroom``.
CHECK_LINE = re.compile(r"^CHECK (?P<name>\S+): (?P<status>PASS|FAIL)(?: - (?P<message>.*))?$")


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check.

    Attributes:
        name: the check's name (no spaces), e.g. ``"lora_forward"``.
        passed: True when the learner's answer agreed with the reference on every input.
        message: what was checked, or exactly what is wrong and how to fix it (one line).
    """

    name: str
    passed: bool
    message: str

    @property
    def line(self) -> str:
        """The protocol line: ``CHECK <name>: PASS|FAIL - <message>``."""
        return f"CHECK {self.name}: {'PASS' if self.passed else 'FAIL'} - {self.message}"

    def __bool__(self) -> bool:
        return self.passed

    def _ipython_display_(self) -> None:
        # The check printed its line already; showing the object again would repeat it.
        return None


def parse_check_lines(text: str) -> list[CheckResult]:
    """Every protocol line in ``text`` (e.g. a cell's stdout), in order."""
    out = []
    for line in text.splitlines():
        m = CHECK_LINE.match(line.strip())
        if m:
            out.append(CheckResult(m["name"], m["status"] == "PASS", m["message"] or ""))
    return out


def _need_torch(namespace: dict) -> None:
    """Import torch on first use and bind it as ``torch`` in ``namespace``.

    ``namespace`` is the calling check module's ``globals()``: its module-level ``torch = None``
    becomes the torch module, so that its tensor helpers use ``torch`` as if imported at the
    top, while importing the module (and a check of plain arithmetic) stays torch-free.
    """
    if namespace.get("torch") is None:
        from labkit._deps import torch  # one clear line when torch is missing

        namespace["torch"] = torch



def _report(name: str, passed: bool, message: str) -> CheckResult:
    result = CheckResult(name, passed, " ".join(message.split()))
    print(result.line)
    return result


class _LearnerError(Exception):
    """The learner's function raised; carries a one-line description."""


def _call(fn: Callable, *args):
    """Call the learner's function; NotImplementedError (an unsolved stub) passes through."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as exc:  # the learner's bug, reported, never raised
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        msg = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise _LearnerError(msg) from exc


def _shape(t) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _not_callable(name: str, fn) -> CheckResult | None:
    if callable(fn):
        return None
    return _report(
        name,
        False,
        f"pass your function itself, e.g. check_{name}(my_function), not its result "
        f"(got {type(fn).__name__})",
    )


#: What a check says when the learner's function returned None.
_RETURNED_NONE = "your function returned None; did you forget `return`?"


def _not_a_number(name: str, got, what: str) -> CheckResult | None:
    """A FAIL report when ``got`` is None or not a real number (``what``: e.g. "an int")."""
    if got is None:
        return _report(name, False, _RETURNED_NONE)
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        return _report(name, False, f"return {what}; got {type(got).__name__}")
    return None
