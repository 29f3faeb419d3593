"""Exercises in a lesson notebook, and the learner's (student) version of it.

An exercise is a code cell with nbgrader's ``solution`` metadata whose solution sits between
the :data:`BEGIN` and :data:`END` marker lines. :func:`exercises` finds and validates them;
:func:`student_notebook` replaces each marked region with a ``raise NotImplementedError``
stub (markdown: ``YOUR ANSWER HERE``) and clears outputs; :func:`make_student` writes the
student version of a folder of lessons, all or nothing. Reading a notebook
(:func:`_read`) and listing a folder's notebooks (:func:`_notebooks`) live here too, and
:class:`ClassroomError`, which every classroom command raises for a bad notebook or folder.

Imports: ``nbformat`` and the standard library; nothing from labkit.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


class ClassroomError(ValueError):
    """A notebook, lesson or folder is not what the command needs; the message says which."""


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
