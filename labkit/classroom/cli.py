"""The classroom's command line: ``python -m labkit.classroom student|check|workspace``.

Command line::

    python -m labkit.classroom student lessons/ OUT/
    python -m labkit.classroom check SUBMISSION.ipynb ... [--timeout 60] [--csv results.csv]
    python -m labkit.classroom workspace [--reset [LESSON]] [--solution LESSON EXERCISE]

:func:`main` parses the arguments, runs the command, prints what it did, and returns the
exit status: 0 done (for ``check``: every row PASS), 1 ``check`` found a FAIL or ERROR,
2 a :class:`~labkit.classroom.student.ClassroomError` (printed as ``error: ...``).

Imports: ``labkit.classroom.student``, ``.checking`` and ``.workspace``; the standard library.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labkit.classroom.checking import check_notebooks, table, to_csv
from labkit.classroom.student import ClassroomError, make_student
from labkit.classroom.workspace import (
    LESSONS_DIR,
    WORKSPACE_DIR,
    make_workspace,
    reset_workspace,
    show_solution,
)


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
