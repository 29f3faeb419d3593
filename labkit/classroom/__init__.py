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

Modules: ``student`` (exercises, student versions, reading notebooks, ClassroomError),
``checking`` (run submissions and grade them), ``workspace`` (the learner's copy, reset,
solutions), ``cli`` (the command line; ``__main__`` runs it).

Imports: neither torch nor labkit's ML modules (the notebooks it runs do); ``labkit.checks``
for the protocol line only. The names below load on first use.
"""

from labkit._api import lazy_exports

_EXPORTS = {
    ".student": ["BEGIN", "END", "ClassroomError", "Exercise", "exercise_metadata",
                 "exercises", "make_student", "student_notebook", "_is_solution"],
    ".checking": ["Row", "check_notebooks", "execute", "grade", "table", "to_csv"],
    ".workspace": ["BACKUPS", "LESSONS_DIR", "MARKER", "ROOT", "WORKSPACE_DIR",
                   "make_workspace", "reset_workspace", "resolve_lesson", "show_solution",
                   "solution"],
    ".cli": ["main"],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
