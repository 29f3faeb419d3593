"""The learner's workspace: their own copy of the course, made from the student versions.

:func:`make_workspace` creates it on first run (``make lab`` does it) and only adds lessons
that are new afterwards, never overwriting the learner's work; :func:`reset_workspace`
replaces one lesson (or all) with a fresh student version, moving the old file to
``.backups/``; :func:`write_student` is ``student SRC OUT``, which refuses to write into a
workspace unless forced, and then keeps backups the same way. :func:`resolve_lesson` finds a
lesson by number or name, and :func:`solution` / :func:`show_solution` give one exercise's
instructor solution (refused inside a ``check`` kernel, as is every read of a lesson). The
repository's ``lessons/`` and ``workspace/`` folders are the defaults.

Imports: ``labkit.classroom.student`` (exercises, student versions, reading notebooks),
``nbformat`` and the standard library.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat

from labkit.classroom.student import (
    BACKUPS,
    MARKER,
    ClassroomError,
    _notebooks,
    _read,
    _student_versions,
    exercises,
    make_student,
    marker,
    student_notebook,
)

#: The repository (labkit/classroom/ is two levels below it).
ROOT = Path(__file__).resolve().parent.parent.parent
#: The instructor lessons (with solutions) and the default workspace, both in the repository.
LESSONS_DIR = ROOT / "lessons"
WORKSPACE_DIR = ROOT / "workspace"
# MARKER (the file that marks a folder as a labkit workspace; reset refuses to touch other
# folders) and BACKUPS (where replaced notebooks go) are defined in .student, which checks
# the marker too.


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
    lines = [ln for ln in by_id[exercise].source.splitlines() if marker(ln) is None]
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
    return _replace_notebooks(directory, converted)


def _replace_notebooks(directory: Path, converted) -> list[tuple[Path, Path | None]]:
    """Write each (name, notebook) into ``directory``, first moving a file already there to
    ``<directory>/.backups/<stem>.<n>.ipynb`` (the lowest free n)."""
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


def write_student(
    src: str | os.PathLike, out: str | os.PathLike, force: bool = False
) -> list[tuple[Path, Path | None]]:
    """``student SRC OUT``: the student versions of ``src`` written to ``out``.

    Into a learner's workspace (``out`` holds :data:`MARKER`) only with ``force``, and then
    each notebook it replaces is moved to ``out/.backups/`` first, as ``--reset`` does.
    Everything is converted before anything is written.

    Returns:
        (written notebook, backup of the one it replaced or None) pairs.
    """
    src, out = Path(src), Path(out)
    if not (force and (out / MARKER).is_file()):
        return [(path, None) for path in make_student(src, out)]
    return _replace_notebooks(out, _student_versions(src, out))
