"""Checking submissions: run a notebook, read its checks' lines, one row per exercise.

:func:`execute` runs a submitted notebook in a fresh kernel (a timeout per cell, errors
allowed); :func:`grade` reads the executed notebook's outputs, where each exercise's check
printed ``CHECK <name>: PASS|FAIL - <feedback>`` (``labkit.checks``' protocol line), and
makes one :class:`Row` per exercise: PASS, FAIL with the feedback, or ERROR where the run
stopped. :func:`check_notebooks` does both for many notebooks (a bad one gets an ERROR row
and the others go on); :func:`table` and :func:`to_csv` format the report.

Imports: ``labkit.classroom.student`` (exercises, reading notebooks), ``labkit.checks``
(the protocol line; torch-free), the standard library; ``nbclient`` when a notebook runs.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from labkit.checks import CHECK_LINE
from labkit.classroom.student import ClassroomError, _read, exercises


@dataclass(frozen=True)
class Row:
    """One line of the check report."""

    notebook: str
    exercise: str
    result: str  # PASS, FAIL or ERROR
    feedback: str


def _text_of(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    return output.get("data", {}).get("text/plain", "")


def _error_of(cell) -> str | None:
    for o in cell.get("outputs", []):
        if o.get("output_type") == "error":
            if o.get("ename") == "NotImplementedError":
                return "not done yet: the exercise still raises NotImplementedError"
            first = (o.get("evalue") or "").strip().splitlines()
            return f"{o.get('ename')}: {first[0] if first else ''}".rstrip(": ")
    return None


def grade(nb, name: str, stopped_at: int | None = None) -> list[Row]:
    """Per-exercise results from an executed notebook's outputs.

    An exercise owns the cells from its own up to the next exercise. Its result is FAIL if a
    check there printed FAIL, PASS if checks printed only PASS and nothing failed, otherwise
    FAIL with the first error of those cells; ERROR if the run stopped (``stopped_at``, a
    cell index) before or inside it.
    """
    exs = exercises(nb, name)
    if not exs:
        return [Row(name, "-", "ERROR", "no exercises in this notebook (no nbgrader solution "
                                        "cells); is it a lesson with exercises?")]
    rows = []
    for j, ex in enumerate(exs):
        stop = exs[j + 1].index if j + 1 < len(exs) else len(nb.cells)
        cells = nb.cells[ex.index : stop]
        checks, errors = [], []
        for cell in cells:
            if cell.cell_type != "code":
                continue
            for o in cell.get("outputs", []):
                for line in _text_of(o).splitlines():
                    m = CHECK_LINE.match(line.strip())
                    if m:
                        checks.append((m["status"], m["message"] or ""))
            if (err := _error_of(cell)) is not None:
                errors.append(err)
        failed = [msg for status, msg in checks if status == "FAIL"]
        hung_here = stopped_at is not None and ex.index <= stopped_at < stop
        if stopped_at is not None and stopped_at < ex.index:
            result, why = "ERROR", f"not run: the notebook stopped at cell {stopped_at + 1}"
        elif failed:
            result, why = "FAIL", " | ".join(failed)
        elif hung_here:
            result, why = "ERROR", (f"cell {stopped_at + 1}, in this exercise, ran past the "
                                    "timeout (an endless loop? a huge input?)")
        elif checks and not errors:
            result, why = "PASS", " | ".join(m for _, m in checks)
        elif errors:
            result, why = "FAIL", errors[0]
        else:
            result, why = "FAIL", "no check ran (was the check cell deleted?)"
        rows.append(Row(name, ex.grade_id, result, why))
    return rows


def execute(path: Path, timeout: int = 60) -> tuple[object, int | None, str | None]:
    """Run a notebook in a fresh kernel, errors allowed; its folder is the working directory.

    Returns:
        (the executed notebook, the index of the cell the run stopped at or None,
        a one-line reason when it stopped).
    """
    # nbclient (and the kernel machinery it loads) is needed only when a notebook runs
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = _read(path)
    started = {"index": None}
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_start=lambda cell, cell_index: started.update(index=cell_index),
    )
    saved = {k: os.environ.get(k) for k in ("LABKIT_PROGRESS", "HF_HUB_OFFLINE",
                                             "TRANSFORMERS_OFFLINE")}
    with tempfile.TemporaryDirectory(prefix="labkit-check-") as tmp:
        # a submission's quiz answers go to a throwaway file, not the grader's progress
        os.environ["LABKIT_PROGRESS"] = str(Path(tmp) / "progress.json")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            # The kernel's own log (transport warnings, a traceback when a hung kernel is
            # killed) is noise here; what the cells print reaches the notebook regardless.
            client.execute(stderr=subprocess.DEVNULL)
        except CellTimeoutError:
            i = started["index"]
            return nb, i, f"cell {i + 1} ran longer than the {timeout} s timeout (stopped there)"
        except DeadKernelError as exc:
            i = started["index"]
            return nb, i, f"the kernel died in cell {(i or 0) + 1}: {exc}"
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return nb, None, None


def check_notebooks(paths, timeout: int = 60, log=None) -> list[Row]:
    """Execute each notebook and grade it; a bad notebook gets an ERROR row, the rest go on."""
    rows: list[Row] = []
    for path in map(Path, paths):
        if log is not None:
            print(f"checking {path} ...", file=log, flush=True)
        name = str(path)
        try:
            exercises(_read(path), name)  # fail fast on a malformed notebook
            nb, stopped, why = execute(path, timeout)
            if why is not None:
                rows.append(Row(name, "-", "ERROR", why))
            rows += grade(nb, name, stopped)
        except ClassroomError as exc:
            rows.append(Row(name, "-", "ERROR", str(exc).removeprefix(f"{name}: ")))
        except Exception as exc:  # a kernel that will not start, and the like
            rows.append(Row(name, "-", "ERROR", f"{type(exc).__name__}: {exc}"))
    return rows


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
