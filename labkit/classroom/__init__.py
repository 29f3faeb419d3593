"""The classroom kit: student versions of the lessons, checking submissions, the workspace.

Exercises in the (instructor) lessons are code cells whose solution sits between two marker
lines, as in nbgrader, and which carry nbgrader's cell metadata (``solution: true`` and a
``grade_id`` that names the exercise)::

    def lora_forward(x, W, A, B, alpha, r):
        ### BEGIN SOLUTION
        return x @ W.T + (alpha / r) * (x @ A.T) @ B.T
        ### END SOLUTION

The cell after it calls a check from ``labkit.checks`` on the learner's function (the
learner sees ``CHECK <name>: PASS|FAIL - <feedback>``). Three things are built on that:

* ``student``: the learner's version of a notebook. Each marked region becomes
  ``raise NotImplementedError("Exercise <id>: ...")`` (markdown: ``YOUR ANSWER HERE``);
  outputs and execution counts are cleared; every other cell, and all metadata, stay.
  Markers match whatever their case and spacing; a near-miss is an error naming the cell.
  It refuses to write into a learner's workspace unless ``--force`` (then with backups).
* ``check``: run submitted notebooks, each in a sandbox (its own temporary folder and
  process group, time and memory limits), and grade each exercise in the grader's own
  process: the checks the instructor lesson calls, run on the learner's functions through
  the kernel with inputs the grader chooses. What a notebook prints decides nothing.
  A text table and CSV; a missing, hanging or crashing notebook gets an ERROR row and the
  others go on.
* ``workspace``: the learner's own copy of the course, made from the student versions on
  first run (``make lab`` does it), never overwritten afterwards except by ``--reset``;
  ``--solution LESSON EXERCISE`` prints one exercise's solution (refused inside ``check``).

Command line::

    python -m labkit.classroom student lessons/ OUT/ [--force]
    python -m labkit.classroom check SUBMISSION.ipynb ... [--timeout 60] [--total-timeout 600]
        [--memory-limit 4] [--lessons lessons/] [--seed N] [--csv results.csv]
    python -m labkit.classroom workspace [--reset [LESSON]] [--solution LESSON EXERCISE]

Modules: ``student`` (exercises, markers, student versions, reading notebooks,
ClassroomError), ``workspace`` (the learner's copy, reset, solutions, ``student`` into a
workspace), ``specs`` (the instructor lesson's check calls), ``sandbox`` (the kernel a
submission runs in), ``wire`` (values between grader and kernel, JSON), ``remote`` (the
learner's function as the grader calls it), ``checking`` (grading and the report), ``cli``
(the command line; ``__main__`` runs it).

Imports: neither torch nor labkit's ML modules (the notebooks and checks it runs do); the
names below load on first use.
"""

from labkit._api import lazy_exports

_EXPORTS = {
    ".student": ["BACKUPS", "BEGIN", "CHECK_KERNEL_ENV", "END", "MARKER", "ClassroomError",
                 "Exercise", "exercise_metadata", "exercises", "make_student", "marker",
                 "student_notebook", "_is_solution"],
    ".checking": ["MEMORY_GB", "TIMEOUT", "TOTAL_TIMEOUT", "Row", "check_notebook",
                  "check_notebooks", "table", "to_csv"],
    ".specs": ["CheckCall", "LessonChecks", "exercise_checks", "lesson_for"],
    ".sandbox": ["Sandbox", "SandboxStop"],
    ".workspace": ["LESSONS_DIR", "ROOT", "WORKSPACE_DIR", "make_workspace", "reset_workspace",
                   "resolve_lesson", "show_solution", "solution", "write_student"],
    ".cli": ["main"],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
