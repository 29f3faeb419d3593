"""Checking submissions: run each in a sandbox, and compute every verdict in the grader.

:func:`check_notebook` runs one submitted notebook, cell by cell, in a
:class:`~labkit.classroom.sandbox.Sandbox` (its own temporary folder and process group, a
timeout per cell, a limit for the whole notebook, a memory limit; errors do not stop the run).
Then, for each exercise of the instructor lesson it was made from
(:func:`~labkit.classroom.specs.lesson_for`), the grader runs the same checks the lesson
calls, in its OWN process, on a :class:`~labkit.classroom.remote.RemoteFunction` that calls
the learner's function in the kernel with the inputs the check chooses (a fresh random seed
per run, unless one is given). Nothing the notebook prints, defines or patches decides a
verdict: a forged ``CHECK ...: PASS`` line, an int whose ``==`` is always True, or a
monkeypatched ``labkit.checks`` in the kernel changes nothing the grader compares.

One :class:`Row` per exercise: PASS, FAIL with the check's feedback ("not done yet" for an
untouched stub), or ERROR. Where the run stopped (a cell past its timeout, the notebook past
its limit, the kernel dead) exactly one row says so: the exercise it stopped in, or a row
``-`` when it stopped before any; later exercises read "not run". :func:`check_notebooks`
does this for many notebooks (a bad one gets an ERROR row and the others go on);
:func:`table` and :func:`to_csv` format the report.

Imports: ``labkit.classroom`` (student, specs, sandbox, remote, workspace's default lessons
folder), ``labkit.checks`` (the checks; torch when a check on tensors runs), the standard
library.
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import io
import random
from dataclasses import dataclass
from pathlib import Path

from labkit.classroom.remote import RemoteFunction
from labkit.classroom.sandbox import Outcome, Sandbox, SandboxStop, out_of_memory
from labkit.classroom.specs import CheckCall, lesson_for
from labkit.classroom.student import ClassroomError, _read, exercises
from labkit.classroom.workspace import LESSONS_DIR

#: Defaults of ``check``: seconds per cell, seconds per notebook, the kernel's memory in GB.
TIMEOUT, TOTAL_TIMEOUT, MEMORY_GB = 60, 600, 4.0
_NOT_DONE = "not done yet: the exercise still raises NotImplementedError"


@dataclass(frozen=True)
class Row:
    """One line of the check report."""

    notebook: str
    exercise: str
    result: str  # PASS, FAIL or ERROR
    feedback: str


def _describe(out: Outcome, memory_gb: float) -> str:
    if out.ename == "NotImplementedError":
        return "still raises NotImplementedError (not done yet)"
    if out.ename == "MemoryError":
        return out_of_memory(memory_gb)
    first = (out.evalue.strip().splitlines() or [""])[0]
    return f"raised {out.ename}: {first}".rstrip(": ")


def _stop_reason(i: int, out: Outcome, timeout: float, total_timeout: float) -> str:
    if out.status == "timeout":
        return (f"cell {i + 1} ran longer than the {timeout:g} s timeout (stopped there; an "
                "endless loop? a huge input?)")
    if out.status == "total":
        return (f"the notebook ran past the {total_timeout:g} s limit for the whole notebook, "
                f"in cell {i + 1} (stopped there)")
    return (f"the kernel died in cell {i + 1} (os._exit, a crash, or a signal; "
            "nothing after it ran)")


def _run_check(box: Sandbox, call: CheckCall, timeout: float, seed: int) -> tuple[str, str]:
    """(PASS|FAIL|ERROR, feedback) of one check call, run in this process."""
    from labkit import checks
    from labkit.checks.harness import CheckResult

    check = getattr(checks, call.check)
    kwargs = dict(call.kwargs)
    if "seed" in inspect.signature(check).parameters:
        kwargs["seed"] = seed  # inputs the submission cannot know in advance
    remote = RemoteFunction(box, call.function, timeout)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its protocol line is not needed
            result = check(remote, *call.args, **kwargs)
    except NotImplementedError:
        return "FAIL", _NOT_DONE
    except Exception as exc:  # SandboxStop, a BaseException, goes up to the exercise's row
        return "ERROR", (f"the check {call.check} itself failed ({type(exc).__name__}: {exc}); "
                         "a problem of the lesson or of labkit, not of the submission")
    if not isinstance(result, CheckResult):
        return "ERROR", f"{call.check} returned {type(result).__name__}, not a CheckResult"
    return ("PASS" if result.passed is True else "FAIL"), result.message


def _grade(box, calls, context: str, timeout: float, seed: int) -> tuple[str, str]:
    """(result, feedback) of one exercise: every check call of the lesson must pass."""
    found = []
    for call in calls:
        ok, kind = RemoteFunction(box, call.function, timeout).lookup()
        if not ok:
            what = "" if kind == "NoneType" else f" ({call.function} is a {kind})"
            return "FAIL", (f"no function {call.function} after running the notebook{what}"
                            + (f"; {context}" if context else ""))
        found.append(_run_check(box, call, timeout, seed))
    for status in ("ERROR", "FAIL"):
        if bad := [msg for s, msg in found if s == status]:
            return status, " | ".join(bad)
    return "PASS", " | ".join(msg for _, msg in found)


def check_notebook(path: Path, lessons=LESSONS_DIR, timeout: float = TIMEOUT,
                   total_timeout: float = TOTAL_TIMEOUT, memory_gb: float = MEMORY_GB,
                   seed: int = 0, cache: dict | None = None) -> list[Row]:
    """Run one submission in a sandbox and grade each exercise of its instructor lesson.

    Raises:
        ClassroomError: the notebook is missing or malformed, or no instructor lesson in
            ``lessons`` matches it.
        SandboxStop, RuntimeError: the kernel would not start.
    """
    name = str(path)
    nb = _read(path)
    mine = exercises(nb, name)
    if not mine:
        return [Row(name, "-", "ERROR", "no exercises in this notebook (no nbgrader solution "
                                        "cells); is it a lesson with exercises?")]
    lesson = lesson_for(nb, name, lessons, cache)
    ends = [ex.index for ex in mine[1:]] + [len(nb.cells)]
    spans = {ex.grade_id: (ex.index, end) for ex, end in zip(mine, ends, strict=True)}
    rows, errors, stop = [], {}, None
    with Sandbox(path, memory_gb, total_timeout) as box:
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or not cell.source.strip():
                continue
            out = box.run_cell(cell.source, timeout)
            if out.status == "error":
                errors[i] = out
            elif out.status != "ok":
                stop = (i, _stop_reason(i, out, timeout, total_timeout))
                break
        shown = False
        for grade_id, calls in lesson.checks.items():
            start, end = spans.get(grade_id, (None, None))
            if start is None:
                result, why = "FAIL", (f"the notebook has no exercise {grade_id!r} (its cell "
                                       "was deleted, or its metadata changed); start again from "
                                       "its student version")
            elif stop and start <= stop[0] < end:
                result, why, shown = "ERROR", stop[1], True
            elif stop and start > stop[0]:
                result, why = "ERROR", f"not run: the notebook stopped at cell {stop[0] + 1}"
            elif not box.alive:
                result, why = "ERROR", "not graded: the kernel is gone (another row says why)"
            elif box.time_left() <= 0:
                result, why = "ERROR", (f"not graded: the notebook used up its {total_timeout:g}"
                                        " s limit (another row says where)")
            else:
                mine_errors = ([i for i in errors if start <= i < end]
                               or [i for i in sorted(errors) if i < start][:1])
                context = "; ".join(f"cell {i + 1} {_describe(errors[i], memory_gb)}"
                                    for i in mine_errors)
                try:
                    result, why = _grade(box, calls, context, timeout, seed)
                except SandboxStop as exc:
                    result, why = "ERROR", str(exc)
            rows.append(Row(name, grade_id, result, why))
    if stop and not shown:
        rows.insert(0, Row(name, "-", "ERROR", stop[1]))
    return rows


def check_notebooks(paths, lessons=LESSONS_DIR, timeout: float = TIMEOUT,
                    total_timeout: float = TOTAL_TIMEOUT, memory_gb: float = MEMORY_GB,
                    seed: int | None = None, log=None) -> list[Row]:
    """:func:`check_notebook` for each path; a bad notebook gets an ERROR row, the rest go on.

    ``seed`` (default: a fresh random one) seeds the checks' inputs, the same for every
    notebook of the run.

    Raises:
        ClassroomError: a limit that is not a positive number.
    """
    for what, value in (("timeout", timeout), ("total_timeout", total_timeout),
                        ("memory_gb", memory_gb)):
        if not (isinstance(value, (int, float)) and value > 0):
            raise ClassroomError(f"{what} must be a positive number, got {value!r}")
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    rows: list[Row] = []
    cache: dict = {}
    for path in map(Path, paths):
        if log is not None:
            print(f"checking {path} ...", file=log, flush=True)
        name = str(path)
        try:
            rows += check_notebook(path, lessons, timeout, total_timeout, memory_gb, seed,
                                   cache)
        except ClassroomError as exc:
            rows.append(Row(name, "-", "ERROR", str(exc).removeprefix(f"{name}: ")))
        except SandboxStop as exc:  # a kernel that will not start
            rows.append(Row(name, "-", "ERROR", str(exc)))
        except Exception as exc:  # and the like
            rows.append(Row(name, "-", "ERROR", f"{type(exc).__name__}: {exc}"))
    # feedback may quote the submission (an exception's message): no control characters
    return [Row(r.notebook, r.exercise, r.result,
                "".join(c if c.isprintable() else " " for c in r.feedback)) for r in rows]


def table(rows: list[Row]) -> str:
    """The report as an aligned text table with a summary line."""
    head = ("notebook", "exercise", "result", "feedback")
    data = [head] + [(r.notebook, r.exercise, r.result, r.feedback) for r in rows]
    w = [max(len(row[i]) for row in data) for i in range(3)]
    lines = [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:<{w[2]}}  {d}".rstrip() for a, b, c, d in data]
    counts = {k: sum(r.result == k for r in rows) for k in ("PASS", "FAIL", "ERROR")}
    lines.append(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['ERROR']} errors")
    return "\n".join(lines)


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["notebook", "exercise", "result", "feedback"])
    writer.writerows((r.notebook, r.exercise, r.result, r.feedback) for r in rows)
    return buf.getvalue()
