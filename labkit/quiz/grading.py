"""Grading: checking one response and scoring a test.

:func:`check` turns a response (an option, printed text, an explanation, a self-rating) into
:class:`Feedback`; :func:`score_test` counts a test's right answers overall and per topic.
The attempts are kept by :mod:`labkit.quiz.progress`.

Imports: labkit.quiz.bank, labkit.quiz.explain_scorer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from labkit.quiz.bank import Item
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
