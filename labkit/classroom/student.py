"""Exercises in a lesson notebook, and the learner's (student) version of it.

An exercise is a code cell with nbgrader's ``solution`` metadata whose solution sits between
the :data:`BEGIN` and :data:`END` marker lines. A marker line is matched ignoring case and
spacing (``### begin  solution`` counts, as does ``# BEGIN SOLUTION``); a line that only
nearly is one (``### BEGIN-SOLUTION``, ``## BEGIN SOLUTIONS``) is an error naming the cell,
never left in place, so a typo cannot leak a solution into the student version.
:func:`exercises` finds and validates them; :func:`student_notebook` replaces each marked
region with a ``raise NotImplementedError`` stub (markdown: ``YOUR ANSWER HERE``) and clears
outputs; :func:`make_student` writes the student version of a folder of lessons, all or
nothing, and refuses to write into a learner's workspace (:data:`MARKER`). Reading a notebook
(:func:`_read`) and listing a folder's notebooks (:func:`_notebooks`) live here too; both
refuse inside a ``check`` kernel (:data:`CHECK_KERNEL_ENV`), so a submission being checked
cannot read the instructor's solutions through labkit. :class:`ClassroomError` is what every
classroom command raises for a bad notebook or folder.

Imports: ``nbformat`` and the standard library; nothing from labkit.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
#: A marker line: one or more ``#``, then BEGIN or END and SOLUTION, any case and spacing.
_MARKER_LINE = re.compile(r"^#+\s*(BEGIN|END)\s+SOLUTION\s*$", re.IGNORECASE)
#: The letters of a line that nearly is a marker (``BEGIN-SOLUTION``, ``End Solutions``...).
_NEAR_MISS = {"beginsolution", "endsolution", "beginsolutions", "endsolutions"}
#: The file that marks a folder as a learner's workspace (see ``labkit.classroom.workspace``).
MARKER = ".labkit-workspace"
#: The workspace's folder for the learner's replaced notebooks (never deleted).
BACKUPS = ".backups"
#: Set (to "1") in the environment of the kernel that ``check`` runs a submission in.
CHECK_KERNEL_ENV = "LABKIT_CHECK_KERNEL"


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


def marker(line: str, where: str = "", number: int = 0) -> str | None:
    """``"BEGIN"`` or ``"END"`` when ``line`` is a solution marker, else None.

    Case and spacing do not matter. A line whose letters spell a marker but which is not one
    (``### BEGIN-SOLUTION``, ``# BEGIN SOLUTIONS``) raises, naming ``where`` and line
    ``number``: left alone it would leave the solution in the student version.
    """
    text = line.strip()
    m = _MARKER_LINE.match(text)
    if m:
        return m[1].upper()
    if re.sub(r"[^a-z]", "", text.lower()) in _NEAR_MISS:
        kind = BEGIN if "begin" in text.lower() else END
        raise ClassroomError(
            f"{where}: line {number} {text!r} looks like a solution marker but is not one; "
            f"write it as {kind!r} (case and spaces do not matter)"
        )
    return None


def _regions(source: str, where: str) -> list[tuple[int, int, str]]:
    """``(begin_line, end_line, indent)`` of each marked region; unbalanced markers raise."""
    out, begin, indent = [], None, ""
    for i, line in enumerate(source.splitlines()):
        kind = marker(line, where, i + 1)
        if kind == "BEGIN":
            if begin is not None:
                raise ClassroomError(
                    f"{where}: {BEGIN!r} at line {i + 1} opens a second solution before the "
                    f"one from line {begin + 1} is closed; add {END!r} before it"
                )
            begin, indent = i, line[: len(line) - len(line.lstrip())]
        elif kind == "END":
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


def _refuse_in_check_kernel(what) -> None:
    if os.environ.get(CHECK_KERNEL_ENV):
        raise ClassroomError(
            f"{what}: labkit.classroom reads no notebooks inside a check kernel "
            f"({CHECK_KERNEL_ENV} is set): a submission being checked cannot see the "
            "instructor's lessons or solutions"
        )


def _read(path: Path):
    _refuse_in_check_kernel(path)
    if not path.is_file():
        raise ClassroomError(f"{path}: no such notebook")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as exc:  # NotJSONError, ValidationError, UnicodeDecodeError...
        raise ClassroomError(
            f"{path}: not a readable notebook ({type(exc).__name__}: {exc})"
        ) from None


def _notebooks(src: Path) -> list[Path]:
    _refuse_in_check_kernel(src)
    if src.is_dir():
        paths = sorted(p for p in src.glob("*.ipynb"))
        if not paths:
            raise ClassroomError(f"{src}: no notebooks (*.ipynb) in this folder")
        return paths
    if src.suffix != ".ipynb" or not src.is_file():
        raise ClassroomError(f"{src}: no such notebook or folder")
    return [src]


def _student_versions(src: Path, out: Path) -> list[tuple[str, object]]:
    """(file name, student notebook) of every notebook of ``src``, all converted first."""
    paths = _notebooks(src)
    if out.resolve() in {p.parent.resolve() for p in paths}:
        raise ClassroomError(
            f"{out}: is the folder of the instructor notebooks; writing there would replace "
            "the solutions. Choose another output folder"
        )
    return [(p.name, student_notebook(_read(p), str(p))) for p in paths]


def make_student(src: str | os.PathLike, out: str | os.PathLike) -> list[Path]:
    """Write the student version of every notebook of ``src`` (a folder or a file) to ``out``.

    All notebooks are converted before any is written, so one bad notebook writes nothing.

    Raises:
        ClassroomError: ``out`` is the source folder, or a learner's workspace (it holds
            :data:`MARKER`; ``labkit.classroom.workspace.write_student(..., force=True)``
            overwrites one, keeping backups); a notebook is missing or malformed.
    """
    src, out = Path(src), Path(out)
    converted = _student_versions(src, out)
    if (out / MARKER).is_file():
        raise ClassroomError(
            f"{out}: is a learner's workspace (it has {MARKER}); writing the student versions "
            "there would overwrite the learner's work. Start lessons afresh with "
            "`python -m labkit.classroom workspace --reset [LESSON]`, or pass --force to "
            f"overwrite (the learner's notebooks are moved to {out / BACKUPS} first)"
        )
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, nb in converted:
        nbformat.write(nb, out / name)
        written.append(out / name)
    return written
