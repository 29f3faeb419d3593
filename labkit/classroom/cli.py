"""The classroom's command line: ``python -m labkit.classroom student|check|workspace``.

Command line::

    python -m labkit.classroom student lessons/ OUT/ [--force]
    python -m labkit.classroom check SUBMISSION.ipynb ... [--timeout 60] [--total-timeout 600]
        [--memory-limit 4] [--lessons lessons/] [--seed N] [--csv results.csv]
    python -m labkit.classroom workspace [--reset [LESSON]] [--solution LESSON EXERCISE]

:func:`main` parses the arguments, checks the outputs it will write (``--csv``) before doing
anything, runs the command, prints what it did, and returns the exit status: 0 done (for
``check``: every row PASS), 1 ``check`` found a FAIL or ERROR, 2 a
:class:`~labkit.classroom.student.ClassroomError` (printed as ``error: ...``); argparse
refuses a limit that is not a positive number (status 2).

Imports: ``labkit.classroom.student``, ``.checking`` and ``.workspace``; the standard library.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

from labkit.classroom.checking import (
    MEMORY_GB,
    TIMEOUT,
    TOTAL_TIMEOUT,
    check_notebooks,
    table,
    to_csv,
)
from labkit.classroom.student import ClassroomError
from labkit.classroom.workspace import (
    LESSONS_DIR,
    WORKSPACE_DIR,
    make_workspace,
    reset_workspace,
    show_solution,
    write_student,
)


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _csv_target(value: str | None) -> None:
    """Refuse a --csv path that cannot be written, before anything runs."""
    if value in (None, "-"):
        return
    path = Path(value)
    if path.is_dir():
        raise ClassroomError(f"--csv {value}: is a folder; give a file name, e.g. "
                             f"{path / 'results.csv'}")
    parent = path.parent
    if not parent.is_dir():
        raise ClassroomError(f"--csv {value}: the folder {parent} does not exist; create it "
                             "first or choose another path")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ClassroomError(f"--csv {value}: cannot be written (permissions); choose another "
                             "path")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m labkit.classroom",
        description="Student versions of the lessons, checking submissions, the workspace.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("student", help="write student versions (solutions replaced by stubs)")
    p.add_argument("src", help="the instructor lessons: a folder or one notebook")
    p.add_argument("out", help="the folder to write the student versions to")
    p.add_argument("--force", action="store_true",
                   help="write into a learner's workspace anyway (their notebooks are moved "
                        "to its .backups/ first)")
    p = sub.add_parser("check", help="run submitted notebooks and report each exercise")
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--timeout", type=_positive(float), default=TIMEOUT,
                   help=f"seconds per cell, and per call of a learner's function "
                        f"(default {TIMEOUT})")
    p.add_argument("--total-timeout", type=_positive(float), default=TOTAL_TIMEOUT,
                   help=f"seconds for a whole notebook (default {TOTAL_TIMEOUT})")
    p.add_argument("--memory-limit", type=_positive(float), default=MEMORY_GB, metavar="GB",
                   help=f"address space of a submission's kernel, GB (default {MEMORY_GB:g})")
    p.add_argument("--lessons", default=str(LESSONS_DIR),
                   help="the instructor lessons the submissions were made from (their checks "
                        "grade them)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the checks' inputs (default: a fresh random one)")
    p.add_argument("--csv", default=None, help="also write the report as CSV here ('-': stdout)")
    p = sub.add_parser("workspace", help="create the learner's workspace; reset; solutions")
    p.add_argument("--dir", default=str(WORKSPACE_DIR), help="the workspace folder")
    p.add_argument("--lessons", default=str(LESSONS_DIR), help="the instructor lessons")
    p.add_argument("--reset", nargs="?", const="__all__", default=None, metavar="LESSON",
                   help="replace LESSON (or every lesson) with a fresh student version")
    p.add_argument("--solution", nargs=2, metavar=("LESSON", "EXERCISE"),
                   help="print one exercise's solution")
    return parser


def _check(args) -> int:
    _csv_target(args.csv)
    seed = random.SystemRandom().randrange(2**31) if args.seed is None else args.seed
    print(f"the checks' inputs are drawn with seed {seed} (--seed {seed} repeats them)",
          file=sys.stderr)
    rows = check_notebooks(args.notebooks, args.lessons, args.timeout, args.total_timeout,
                           args.memory_limit, seed, log=sys.stderr)
    print(table(rows))
    if args.csv == "-":
        print(to_csv(rows), end="")
    elif args.csv:
        Path(args.csv).write_text(to_csv(rows), encoding="utf-8")
        print(f"CSV written to {args.csv}")
    return 0 if rows and all(r.result == "PASS" for r in rows) else 1


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "student":
            for path, backup in write_student(args.src, args.out, force=args.force):
                print(f"wrote {path}" + (f" (the learner's version moved to {backup})"
                                         if backup else ""))
            return 0
        if args.command == "check":
            return _check(args)
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
