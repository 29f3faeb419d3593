"""What ``check`` grades a submission with: the checks that the INSTRUCTOR lesson calls.

A submission's own cells are the learner's to edit, so they never say which check grades an
exercise. :func:`lesson_for` finds the instructor lesson a submission was made from (in
``--lessons``, by its exercises' ids; a tie is broken by the file name, then by shared cell
ids), and :func:`exercise_checks` reads that lesson's check calls: in the cells from each
exercise up to the next one, every call ``checks.check_<name>(<function>, <literals>...)``
(or ``labkit.checks.check_<name>``, or ``check_<name>`` imported from it) becomes a
:class:`CheckCall`: the check's name, the learner's function's name and the literal
arguments. The grader then runs that check itself (``labkit.classroom.checking``).

Imports: ``labkit.classroom.student`` (exercises, reading notebooks) and the standard library.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path

from labkit.classroom.student import ClassroomError, _notebooks, _read, exercises


@dataclass(frozen=True)
class CheckCall:
    """One check call of an instructor lesson: ``check(function, *args, **kwargs)``."""

    check: str
    function: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LessonChecks:
    """An instructor lesson: its path, exercise cell ids, and each exercise's check calls."""

    path: Path
    cell_ids: dict  # grade_id -> cell id
    checks: dict  # grade_id -> list[CheckCall], in the lesson's order


def _check_names() -> set[str]:
    from labkit import checks  # torch-free: the names only

    return {n for n in checks.__all__ if n.startswith("check_")}


def _called_check(node: ast.Call, names: set[str]) -> str | None:
    f = node.func
    if isinstance(f, ast.Attribute) and f.attr in names:
        base = f.value
        if (isinstance(base, ast.Name) and base.id == "checks") or (
                isinstance(base, ast.Attribute) and base.attr == "checks"):
            return f.attr
    if isinstance(f, ast.Name) and f.id in names:
        return f.id
    return None


def _calls(source: str, where: str, names: set[str]) -> list[CheckCall]:
    code = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln
                     for ln in source.splitlines())
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise ClassroomError(f"{where}: not valid Python ({exc.msg}, line {exc.lineno})") from None
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or (check := _called_check(node, names)) is None:
            continue
        if not node.args or not isinstance(node.args[0], ast.Name):
            raise ClassroomError(f"{where}: {check}(...) must get the learner's function by "
                                 "name as its first argument, e.g. check(my_function)")
        try:
            args = tuple(ast.literal_eval(a) for a in node.args[1:])
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        except ValueError:
            raise ClassroomError(
                f"{where}: {check}(...) may take only literal arguments after the function "
                "(numbers, strings...): the grader repeats the call in its own process"
            ) from None
        if None in kwargs:
            raise ClassroomError(f"{where}: {check}(...) may not take **kwargs")
        out.append(CheckCall(check, node.args[0].id, args, kwargs))
    return out


def exercise_checks(path: Path) -> LessonChecks:
    """The check calls of each exercise of the instructor lesson at ``path``.

    Raises:
        ClassroomError: an exercise has no check call, or one the grader cannot repeat.
    """
    nb, names = _read(path), _check_names()
    exs = exercises(nb, str(path))
    checks, cell_ids = {}, {}
    for j, ex in enumerate(exs):
        stop = exs[j + 1].index if j + 1 < len(exs) else len(nb.cells)
        calls = []
        for i in range(ex.index, stop):
            cell = nb.cells[i]
            if cell.cell_type == "code":
                calls += _calls(cell.source, f"{path}: cell {i + 1}", names)
        if not calls:
            raise ClassroomError(
                f"{path}: exercise {ex.grade_id!r} has no labkit.checks call in its cells "
                "(e.g. checks.check_lora_forward(lora_forward)); the grader needs one"
            )
        checks[ex.grade_id] = calls
        cell_ids[ex.grade_id] = nb.cells[ex.index].get("id")
    return LessonChecks(path, cell_ids, checks)


def lesson_for(nb, name: str, lessons: str | os.PathLike, cache: dict | None = None
               ) -> LessonChecks:
    """The instructor lesson in ``lessons`` that the submission ``nb`` was made from.

    Raises:
        ClassroomError: no lesson, or several equally good ones, have its exercises.
    """
    lessons = Path(lessons)
    if not lessons.is_dir():
        raise ClassroomError(f"{lessons}: the instructor lessons folder is missing; pass "
                             "--lessons with the notebooks the submissions were made from")
    cache = {} if cache is None else cache
    found = []
    for path in _notebooks(lessons):
        if path not in cache:
            cache[path] = exercise_checks(path)
        if cache[path].checks:
            found.append(cache[path])
    mine = {ex.grade_id: nb.cells[ex.index].get("id") for ex in exercises(nb, name)}

    def score(lesson: LessonChecks):
        shared = set(mine) & set(lesson.checks)
        same_ids = sum(mine[g] is not None and mine[g] == lesson.cell_ids[g] for g in shared)
        return (Path(name).name == lesson.path.name, same_ids, len(shared))

    scored = sorted(((score(x), x) for x in found if set(mine) & set(x.checks)),
                    key=lambda sx: sx[0], reverse=True)
    if not scored:
        raise ClassroomError(
            f"no lesson in {lessons} has its exercises ({', '.join(mine)}); pass --lessons "
            "with the instructor notebooks it was made from"
        )
    if len(scored) > 1 and scored[0][0] == scored[1][0]:
        tied = [x.path.name for s, x in scored if s == scored[0][0]]
        raise ClassroomError(
            f"its exercises ({', '.join(mine)}) are in several lessons ({', '.join(tied)}); "
            f"name the file after its lesson (e.g. {tied[0]}) so the grader knows which"
        )
    return scored[0][1]
