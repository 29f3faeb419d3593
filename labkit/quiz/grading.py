"""Grading: checking one response, the attempts saved as progress, and scoring a test.

:func:`check` turns a response (an option, printed text, an explanation, a self-rating) into
:class:`Feedback`; :class:`Progress` keeps every checked attempt in a JSON file, rewritten
atomically; :func:`score_test` counts a test's right answers overall and per topic.

Imports: labkit.quiz.bank, labkit.quiz.explain_scorer; platformdirs only when no progress
path is given.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit.quiz.bank import Item, QuizError
from labkit.quiz.explain_scorer import ExplainResult, score_explanation


@dataclass
class Feedback:
    """The result of checking one response: ``correct`` is None when nothing was answered."""

    correct: bool | None
    score: float
    message: str
    explain: ExplainResult | None = None


_AFFIRMATION = re.compile(r"^(right|yes|correct)[.,!:]?\s*", re.IGNORECASE)


def _norm(text: str) -> str:
    return " ".join(str(text).split())


def check(item: Item, response) -> Feedback:
    """Check a response against an item.

    Args:
        response: for choice kinds, the 0-based index into ``item.options()`` or the option's
            text; for code_output, the printed text; for explain, the explanation; for recall,
            True ("I knew it") or False.
    """
    if response is None or (isinstance(response, str) and not response.strip()):
        return Feedback(None, 0.0, "Answer first, then check.")
    if item.kind in ("choice", "scenario", "find_bug"):
        options = item.options()
        if isinstance(response, int) and not isinstance(response, bool):
            if not 0 <= response < len(options):
                return Feedback(None, 0.0, f"Pick an option from 1 to {len(options)}.")
            chosen = options[response]
        else:
            matches = [c for c in options if c.text == _norm(response)]
            if not matches:
                return Feedback(None, 0.0, "That is not one of the options.")
            chosen = matches[0]
        if chosen.text == item.answer:
            # authors often open the right option's feedback with "Right." or "Yes."
            rest = _AFFIRMATION.sub("", chosen.feedback)
            return Feedback(True, 1.0, f"Correct. {rest}".strip())
        return Feedback(False, 0.0, f"Not quite: {chosen.feedback}")
    if item.kind == "code_output":
        if _norm(response) == _norm(item.answer):
            return Feedback(True, 1.0, f"Correct: it prints {item.answer}.")
        return Feedback(
            False,
            0.0,
            f"Not quite: it does not print {_norm(response)}. "
            "Trace it line by line; the solution shows each step.",
        )
    if item.kind == "explain":
        res = score_explanation(str(response), list(item.concepts), list(item.misconceptions))
        return Feedback(res.passed, res.score, res.summary(), explain=res)
    knew = bool(response)  # recall: self-rated
    return Feedback(knew, float(knew), "Good." if knew else "It will come back later.")


# ------------------------------------------------------------------------------ progress


def progress_path(path: str | os.PathLike | None = None) -> Path:
    """Where progress is kept: ``path``, else ``$LABKIT_PROGRESS``, else the user data dir."""
    if path:
        return Path(path)
    if os.environ.get("LABKIT_PROGRESS"):
        return Path(os.environ["LABKIT_PROGRESS"])
    import platformdirs  # deferred: needed only when no path is given

    return Path(platformdirs.user_data_dir("labkit", appauthor=False)) / "quiz_progress.json"


class Progress:
    """Attempts and scores in a JSON file, rewritten atomically (temp file, fsync, rename).

    A crash mid-write leaves the previous file whole: the new text goes to a temporary file in
    the same directory, which only replaces the old one once it is completely on disk.
    """

    VERSION = 1

    def __init__(self, path: str | os.PathLike | None = None, *, read: bool = True):
        self.path = progress_path(path)
        self.data = self._read() if read else {"version": self.VERSION, "attempts": []}

    def _read(self) -> dict:
        if not self.path.exists():
            return {"version": self.VERSION, "attempts": []}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise QuizError(
                f"{self.path}: progress file is not valid JSON ({exc}); move it "
                "away or start over with `python -m labkit.quiz reset`"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("attempts"), list):
            raise QuizError(
                f"{self.path}: progress file has no 'attempts' list; move it away "
                "or start over with `python -m labkit.quiz reset`"
            )
        return data

    @property
    def attempts(self) -> list[dict]:
        return self.data["attempts"]

    def record(self, item: Item, feedback: Feedback, mode: str = "practice") -> None:
        """Append one attempt and save (answers that were not checked are not recorded).

        The file is re-read first, so several quizzes open at once (two notebook cells, a
        notebook and a terminal) add to it instead of overwriting each other's attempts.
        """
        if feedback.correct is None:
            return
        self.data = self._read()
        self.attempts.append(
            {
                "id": item.id,
                "topic": item.topic,
                "kind": item.kind,
                "difficulty": item.difficulty,
                "mode": mode,
                "correct": feedback.correct,
                "score": round(feedback.score, 4),
                "time": round(time.time(), 3),
            }
        )
        self.save()

    def save(self) -> None:
        text = json.dumps(self.data, indent=1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".quiz-progress-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def reset(self, topic: str | None = None) -> None:
        """Forget all attempts (without reading the file, so a corrupt one is replaced), or
        those of one topic."""
        if topic is None:
            self.data = {"version": self.VERSION, "attempts": []}
        else:
            self.data = self._read()
            self.data["attempts"] = [a for a in self.attempts if a["topic"] != topic]
        self.save()

    def summary(self) -> dict[str, dict]:
        """Per topic: attempts, correct attempts, distinct items seen, mean of latest scores."""
        out: dict[str, dict] = {}
        latest: dict[str, dict] = {}
        for a in self.attempts:
            s = out.setdefault(a["topic"], {"attempts": 0, "correct": 0, "items": 0, "score": 0.0})
            s["attempts"] += 1
            s["correct"] += bool(a["correct"])
            latest[a["id"]] = a
        for a in latest.values():
            out[a["topic"]]["items"] += 1
            out[a["topic"]]["score"] += a["score"]
        for s in out.values():
            s["score"] = round(s["score"] / s["items"], 3)
        return dict(sorted(out.items()))

    def summary_text(self) -> str:
        rows = self.summary()
        if not rows:
            return f"No attempts yet ({self.path})."
        lines = [f"{'topic':<14} {'attempts':>8} {'correct':>8} {'items':>6} {'score':>6}"]
        for topic, s in rows.items():
            lines.append(
                f"{topic:<14} {s['attempts']:>8} {s['correct']:>8} {s['items']:>6} "
                f"{100 * s['score']:>5.0f}%"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------------ a test's score


@dataclass
class TestReport:
    correct: int
    total: int
    by_topic: dict = field(default_factory=dict)  # topic -> [correct, total]

    def text(self) -> str:
        lines = [f"Score: {self.correct}/{self.total} ({100 * self.correct / self.total:.0f}%)"]
        for topic, (c, n) in sorted(self.by_topic.items()):
            lines.append(f"  {topic:<14} {c}/{n}")
        return "\n".join(lines)


def score_test(items: list[Item], feedbacks: list[Feedback | None]) -> TestReport:
    """Count right answers overall and per topic; an unanswered item counts as wrong."""
    report = TestReport(0, len(items))
    for it, fb in zip(items, feedbacks, strict=True):
        ok = bool(fb is not None and fb.correct)
        cell = report.by_topic.setdefault(it.topic, [0, 0])
        cell[0] += ok
        cell[1] += 1
        report.correct += ok
    return report
