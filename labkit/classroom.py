"""The classroom kit: student versions of the lessons, checking submissions, the workspace.

Exercises in the (instructor) lessons are code cells whose solution sits between two marker
lines, as in nbgrader, and which carry nbgrader's cell metadata (``solution: true`` and a
``grade_id`` that names the exercise)::

    def lora_forward(x, W, A, B, alpha, r):
        ### BEGIN SOLUTION
        return x @ W.T + (alpha / r) * (x @ A.T) @ B.T
        ### END SOLUTION

The cell after it calls a check from ``labkit.checks``, which prints
``CHECK <name>: PASS|FAIL - <feedback>``. Three things are built on that:

* ``student``: the learner's version of a notebook. Each marked region becomes
  ``raise NotImplementedError("Exercise <id>: ...")`` (markdown: ``YOUR ANSWER HERE``);
  outputs and execution counts are cleared; every other cell, and all metadata, stay.
* ``check``: execute submitted notebooks (a timeout per cell; errors do not stop the run)
  and report, per exercise, PASS or FAIL with the checks' feedback, as a text table and CSV.
  A missing, unreadable or hanging notebook gets an ERROR row and the others go on.
* ``workspace``: the learner's own copy of the course, made from the student versions on
  first run (``make lab`` does it), never overwritten afterwards except by ``--reset``;
  ``--solution LESSON EXERCISE`` prints one exercise's solution.

Command line::

    python -m labkit.classroom student lessons/ OUT/
    python -m labkit.classroom check SUBMISSION.ipynb ... [--timeout 60] [--csv results.csv]
    python -m labkit.classroom workspace [--reset [LESSON]] [--solution LESSON EXERCISE]

This module imports neither torch nor labkit's ML modules (the notebooks it runs do).
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
#: The instructor lessons (with solutions) and the default workspace, both in the repository.
LESSONS_DIR = ROOT / "lessons"
WORKSPACE_DIR = ROOT / "workspace"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
#: The file that marks a folder as a labkit workspace (reset refuses to touch other folders).
MARKER = ".labkit-workspace"
BACKUPS = ".backups"
_CHECK_LINE = re.compile(r"^CHECK (?P<name>\S+): (?P<status>PASS|FAIL)(?: - (?P<message>.*))?$")


class ClassroomError(ValueError):
    """A notebook, lesson or folder is not what the command needs; the message says which."""


# ------------------------------------------------------------------------- exercises


def exercise_metadata(grade_id: str) -> dict:
    """nbgrader's metadata for an exercise (solution) cell; lesson builders attach it."""
    return {
        "nbgrader": {
            "grade": False,
            "grade_id": grade_id,
            "locked": False,
            "schema_version": 3,
            "solution": True,
            "task": False,
        }
    }


def _is_solution(cell) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution"))


def _cell_label(index: int, cell) -> str:
    grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
    label = f"cell {index + 1}"
    if cell.get("id"):
        label += f" (id {cell['id']})"
    return label + (f", exercise {grade_id!r}" if grade_id else "")


def _regions(source: str, where: str) -> list[tuple[int, int, str]]:
    """``(begin_line, end_line, indent)`` of each marked region; unbalanced markers raise."""
    out, begin, indent = [], None, ""
    for i, line in enumerate(source.splitlines()):
        text = line.strip()
        if text == BEGIN:
            if begin is not None:
                raise ClassroomError(
                    f"{where}: {BEGIN!r} at line {i + 1} opens a second solution before the "
                    f"one from line {begin + 1} is closed; add {END!r} before it"
                )
            begin, indent = i, line[: len(line) - len(line.lstrip())]
        elif text == END:
            if begin is None:
                raise ClassroomError(
                    f"{where}: {END!r} at line {i + 1} has no {BEGIN!r} before it; add the "
                    "BEGIN line above the solution, or remove this line"
                )
            out.append((begin, i, indent))
            begin = None
    if begin is not None:
        raise ClassroomError(
            f"{where}: {BEGIN!r} at line {begin + 1} is never closed; add {END!r} after the "
            "solution"
        )
    return out


def _replace_regions(source: str, regions, stub_lines) -> str:
    lines = source.splitlines()
    for begin, end, indent in reversed(regions):
        lines[begin : end + 1] = [indent + s for s in stub_lines]
    return "\n".join(lines)


def _code_stub(grade_id: str) -> list[str]:
    return [
        "# YOUR CODE HERE",
        f'raise NotImplementedError("Exercise {grade_id}: replace this line with your code '
        '(see the hint above)")',
    ]


@dataclass(frozen=True)
class Exercise:
    """One exercise of a notebook: its id, cell position and (instructor) source."""

    grade_id: str
    index: int
    source: str


def exercises(nb, name: str = "notebook") -> list[Exercise]:
    """The exercises of a notebook: cells with nbgrader ``solution`` metadata, in order.

    Raises:
        ClassroomError: unbalanced markers; markers in a cell without the metadata;
            a duplicated or missing ``grade_id``.
    """
    out, seen = [], {}
    for i, cell in enumerate(nb.cells):
        where = f"{name}: {_cell_label(i, cell)}"
        regions = _regions(cell.source, where)
        if not _is_solution(cell):
            if regions:
                raise ClassroomError(
                    f"{where}: has solution markers but no nbgrader metadata; give the cell "
                    "labkit.classroom.exercise_metadata('<exercise-id>') as its metadata"
                )
            continue
        grade_id = cell.metadata["nbgrader"].get("grade_id")
        if not grade_id:
            raise ClassroomError(f"{where}: an exercise cell needs nbgrader.grade_id (its name)")
        if grade_id in seen:
            raise ClassroomError(
                f"{where}: exercise id {grade_id!r} is used twice (also cell {seen[grade_id] + 1})"
            )
        seen[grade_id] = i
        out.append(Exercise(grade_id, i, cell.source))
    return out


def student_notebook(nb, name: str = "notebook"):
    """A student copy of ``nb``: solutions replaced by stubs, outputs and counts cleared.

    Raises:
        ClassroomError: see :func:`exercises`; also a solution cell without markers.
    """
    exercises(nb, name)  # validates every cell first: all or nothing
    out = copy.deepcopy(nb)
    out.metadata.pop("widgets", None)
    for i, cell in enumerate(out.cells):
        regions = _regions(cell.source, name)
        if _is_solution(cell) and not regions:
            raise ClassroomError(
                f"{name}: {_cell_label(i, cell)}: is an exercise (nbgrader solution) but has no "
                f"{BEGIN!r} / {END!r} lines around its solution"
            )
        if regions:
            grade_id = cell.metadata["nbgrader"]["grade_id"]
            stub = _code_stub(grade_id) if cell.cell_type == "code" else ["YOUR ANSWER HERE"]
            cell.source = _replace_regions(cell.source, regions, stub)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return out


def _read(path: Path):
    if not path.is_file():
        raise ClassroomError(f"{path}: no such notebook")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as exc:  # NotJSONError, ValidationError, UnicodeDecodeError...
        raise ClassroomError(
            f"{path}: not a readable notebook ({type(exc).__name__}: {exc})"
        ) from None


def _notebooks(src: Path) -> list[Path]:
    if src.is_dir():
        paths = sorted(p for p in src.glob("*.ipynb"))
        if not paths:
            raise ClassroomError(f"{src}: no notebooks (*.ipynb) in this folder")
        return paths
    if src.suffix != ".ipynb" or not src.is_file():
        raise ClassroomError(f"{src}: no such notebook or folder")
    return [src]


def make_student(src: str | os.PathLike, out: str | os.PathLike) -> list[Path]:
    """Write the student version of every notebook of ``src`` (a folder or a file) to ``out``.

    All notebooks are converted before any is written, so one bad notebook writes nothing.

    Raises:
        ClassroomError: ``out`` is the source folder; a notebook is missing or malformed.
    """
    src, out = Path(src), Path(out)
    paths = _notebooks(src)
    if out.resolve() in {p.parent.resolve() for p in paths}:
        raise ClassroomError(
            f"{out}: is the folder of the instructor notebooks; writing there would replace "
            "the solutions. Choose another output folder"
        )
    converted = [(p.name, student_notebook(_read(p), str(p))) for p in paths]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, nb in converted:
        nbformat.write(nb, out / name)
        written.append(out / name)
    return written


# ------------------------------------------------------------------------- checking


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
                    m = _CHECK_LINE.match(line.strip())
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


# ------------------------------------------------------------------------- workspace


def _lesson_paths(lessons: Path) -> list[Path]:
    if not lessons.is_dir():
        raise ClassroomError(
            f"{lessons}: the lessons folder is missing; run from the course repository or "
            "pass --lessons"
        )
    return _notebooks(lessons)


def resolve_lesson(spec: str, lessons: str | os.PathLike = LESSONS_DIR) -> Path:
    """The lesson named by ``spec``: ``"2"``, ``"02"``, ``"02_lora_layers"`` or the file name."""
    paths = _lesson_paths(Path(lessons))
    spec = str(spec).removesuffix(".ipynb")
    if spec.isdigit():
        spec = spec.zfill(2)
    found = [p for p in paths if p.stem == spec or p.stem.split("_", 1)[0] == spec]
    if len(found) != 1:
        raise ClassroomError(
            f"no lesson {spec!r}; lessons: {', '.join(p.stem for p in paths)}"
        )
    return found[0]


def solution(lesson: str, exercise: str, lessons: str | os.PathLike = LESSONS_DIR) -> str:
    """The instructor's code of one exercise (the cell with its solution), as text."""
    path = resolve_lesson(lesson, lessons)
    exs = exercises(_read(path), str(path))
    by_id = {e.grade_id: e for e in exs}
    if exercise not in by_id:
        have = ", ".join(by_id) or "none"
        raise ClassroomError(f"{path.name} has no exercise {exercise!r}; its exercises: {have}")
    lines = [ln for ln in by_id[exercise].source.splitlines() if ln.strip() not in (BEGIN, END)]
    return "\n".join(lines)


def show_solution(lesson: str, exercise: str, lessons: str | os.PathLike = LESSONS_DIR) -> None:
    """Print one exercise's solution (for a learner who is stuck; try the hint first)."""
    text = solution(lesson, exercise, lessons)
    print(f"# Solution of exercise {exercise!r}, lesson {lesson}\n{text}")


def _check_workspace(directory: Path, create: bool) -> None:
    if (directory / MARKER).is_file():
        return
    if directory.exists() and any(directory.iterdir()):
        raise ClassroomError(
            f"{directory}: exists and is not a labkit workspace (no {MARKER} file); "
            "choose another --dir, or move its files away"
        )
    if not create:
        raise ClassroomError(f"{directory}: no workspace here yet; create it first (make lab)")


def make_workspace(
    directory: str | os.PathLike = WORKSPACE_DIR, lessons: str | os.PathLike = LESSONS_DIR
) -> tuple[list[Path], list[Path]]:
    """Create the learner's workspace, or add lessons that are new since it was made.

    Lessons already there are never overwritten (they hold the learner's work).

    Returns:
        (notebooks created now, notebooks kept as they were).
    """
    directory, lessons = Path(directory), Path(lessons)
    if directory.resolve() == lessons.resolve():
        raise ClassroomError(f"{directory}: is the lessons folder itself; pick another folder")
    _check_workspace(directory, create=True)
    paths = _lesson_paths(lessons)
    todo = [p for p in paths if not (directory / p.name).exists()]
    converted = [(p.name, student_notebook(_read(p), str(p))) for p in todo]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text(
        json.dumps({"lessons": str(lessons.resolve())}, indent=1) + "\n", encoding="utf-8"
    )
    for name, nb in converted:
        nbformat.write(nb, directory / name)
    created = [directory / name for name, _ in converted]
    kept = [directory / p.name for p in paths if p not in todo]
    return created, kept


def reset_workspace(
    lesson: str | None = None,
    directory: str | os.PathLike = WORKSPACE_DIR,
    lessons: str | os.PathLike = LESSONS_DIR,
) -> list[tuple[Path, Path | None]]:
    """Replace one lesson (or all, ``lesson=None``) with a fresh student version.

    The learner's old file is moved to ``<workspace>/.backups/`` first, never deleted.

    Returns:
        (reset notebook, its backup or None) pairs.
    """
    directory, lessons = Path(directory), Path(lessons)
    _check_workspace(directory, create=False)
    paths = [resolve_lesson(lesson, lessons)] if lesson is not None else _lesson_paths(lessons)
    converted = [(p.name, student_notebook(_read(p), str(p))) for p in paths]
    done = []
    for name, nb in converted:
        target, backup = directory / name, None
        if target.exists():
            backups = directory / BACKUPS
            backups.mkdir(exist_ok=True)
            n = 1
            while (backup := backups / f"{target.stem}.{n}.ipynb").exists():
                n += 1
            shutil.move(target, backup)
        nbformat.write(nb, target)
        done.append((target, backup))
    return done


# ------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m labkit.classroom",
        description="Student versions of the lessons, checking submissions, the workspace.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("student", help="write student versions (solutions replaced by stubs)")
    p.add_argument("src", help="the instructor lessons: a folder or one notebook")
    p.add_argument("out", help="the folder to write the student versions to")
    p = sub.add_parser("check", help="run submitted notebooks and report each exercise")
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--timeout", type=int, default=60, help="seconds per cell (default 60)")
    p.add_argument("--csv", default=None, help="also write the report as CSV here ('-': stdout)")
    p = sub.add_parser("workspace", help="create the learner's workspace; reset; solutions")
    p.add_argument("--dir", default=str(WORKSPACE_DIR), help="the workspace folder")
    p.add_argument("--lessons", default=str(LESSONS_DIR), help="the instructor lessons")
    p.add_argument("--reset", nargs="?", const="__all__", default=None, metavar="LESSON",
                   help="replace LESSON (or every lesson) with a fresh student version")
    p.add_argument("--solution", nargs=2, metavar=("LESSON", "EXERCISE"),
                   help="print one exercise's solution")
    args = parser.parse_args(argv)
    try:
        if args.command == "student":
            for path in make_student(args.src, args.out):
                print(f"wrote {path}")
            return 0
        if args.command == "check":
            rows = check_notebooks(args.notebooks, args.timeout, log=sys.stderr)
            print(table(rows))
            if args.csv == "-":
                print(to_csv(rows), end="")
            elif args.csv:
                Path(args.csv).write_text(to_csv(rows), encoding="utf-8")
                print(f"CSV written to {args.csv}")
            return 0 if rows and all(r.result == "PASS" for r in rows) else 1
        if args.solution:
            show_solution(*args.solution, lessons=args.lessons)
            return 0
        if args.reset is not None:
            lesson = None if args.reset == "__all__" else args.reset
            for target, backup in reset_workspace(lesson, args.dir, args.lessons):
                kept = f" (your version moved to {backup})" if backup else ""
                print(f"reset {target}{kept}")
            return 0
        created, kept = make_workspace(args.dir, args.lessons)
        for path in created:
            print(f"created {path}")
        if kept:
            print(f"kept {len(kept)} lessons with your work in {args.dir} "
                  "(start one afresh with: python -m labkit.classroom workspace --reset LESSON)")
        return 0
    except ClassroomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
