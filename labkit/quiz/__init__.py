"""The course's quizzes: the question bank, its widgets, study modes, progress, a terminal.

The bank is ``quizzes/<topic>.yaml`` (one file per topic; the format is described in
``quizzes/README.md``). This package imports neither torch nor ipywidgets at import time, so
``python -m labkit.quiz`` starts at once; generated items call labkit's arithmetic lazily.

Embedding in a lesson (each call returns one object whose display is one output bundle: the
widget view plus a plain-text fallback that never shows the answer)::

    from labkit import quiz
    quiz.lesson_quiz("01")                      # the lesson's topics, 3 items, seed 0
    quiz.show(topic="lora-params", n=3, seed=0) # any selection; one item shows alone
    quiz.show(ids=["lora-trainable-count"])     # exact items
    quiz.show(topic="lora-params", generated=1, seed=0)  # plus a fresh numeric item
    quiz.flashcards(); quiz.practice("qlora"); quiz.take_test(seed=0); quiz.explain()

The review modes (flashcards, explain, the test) draw on the six core topics of DESIGN.md
unless given topics; the lesson topics (``memory``, ``scaling``) are asked by name.

Terminal: ``python -m labkit.quiz [TOPIC|practice|test|flashcards|explain|progress|reset]``
with ``--seed``, ``--n``, ``--progress PATH`` and ``--bank DIR``; answers are read from stdin,
so a piped file runs a whole test.

Progress goes to ``--progress`` / ``progress=``, else ``$LABKIT_PROGRESS``, else
``<user data dir>/labkit/quiz_progress.json``; every answer is added under a file lock and the
file rewritten atomically, so several quizzes may answer into it at once.

Modules: ``bank`` the item format, validation and loading; ``generated`` numeric items
answered by labkit; ``explain_scorer`` the explain-in-your-own-words scorer (with
``explain_text`` reading an answer, ``explain_roles`` the global misconceptions and
``lexicon`` the shared synonym table); ``grading``
checking a response and a test's score; ``progress`` the attempts and self-marks file;
``selection`` the course's plan and drawing items; ``text`` an item as plain text;
``notebook`` the widgets and the lessons' API; ``cli`` the terminal (``__main__`` runs it).

Imports: nothing at import time (the names below load lazily); the modules use the standard
library, yaml, filelock (when a progress file is opened), lemminflect (when an explanation
is scored) and (generated items only) labkit.lora and labkit.quant.
"""

from labkit._api import lazy_exports

_EXPORTS = {
    ".bank": ["BANK_DIR", "KINDS", "DIFFICULTIES", "QuizError", "Choice", "Item", "parse_item",
              "Bank", "load_bank", "_BANKS"],
    ".generated": ["generate_item"],
    ".explain_scorer": ["MIN_WORDS", "MIN_RELATION_SHARE", "MISCONCEPTION_WINDOW", "words",
                        "ExplainResult", "score_explanation", "phrase_pattern",
                        "GLOBAL_MISCONCEPTIONS"],
    ".grading": ["Feedback", "check", "TestReport", "score_test"],
    ".progress": ["progress_path", "Progress", "ProgressFileWarning"],
    ".selection": ["SCORED_KINDS", "CORE_TOPICS", "REVIEW_TOPICS", "LESSON_TOPICS",
                   "LESSON_ITEMS", "LESSON_SHOWN", "TEST_PLAN", "difficulty_plan",
                   "review_topics", "pick_test", "pick", "lesson_items", "already_asked"],
    ".text": ["item_text", "solution_text", "printable", "_indent"],
    ".notebook": ["ItemView", "Session", "show", "lesson_quiz", "flashcards", "practice",
                  "explain", "take_test"],
    ".cli": ["main", "_Terminal"],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
