"""Answer cues in the question bank: length and position must give nothing away."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from labkit import quiz
from labkit.quiz.cues import cue_report

FIXTURE = Path(__file__).parent / "fixtures" / "cueing_bank.yaml"
SHIPPED = quiz.load_bank(quiz.BANK_DIR, cache=False).items
#: The right option must also be the longest, and the shortest, of its item now and then: a
#: bank whose right option is never the longest teaches "never pick the longest" instead.
MIN_EXTREME_SHARE = 0.10


@pytest.fixture
def cueing(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "lora_basics.yaml")
    return quiz.load_bank(tmp_path, cache=False).items


def test_a_cueing_bank_is_caught_and_its_items_named(cueing):
    rep = cue_report(cueing)
    assert rep.n == 4 and sorted(rep.longest) == ["cue-four", "cue-one", "cue-three", "cue-two"]
    problems = rep.problems()
    assert any("strictly the longest in 4 of 4 items" in p and "cue-one" in p for p in problems)
    assert any("x as long as distractors" in p for p in problems)


def test_padding_one_distractor_by_a_character_does_not_pass(cueing):
    """Making one wrong option one character longer than the right one removes the 'longest'
    cue item by item, but the pooled length ratio still gives the answers away."""
    padded = []
    for it in cueing:
        right = len(it.answer)
        first_wrong = next(c for c in it.choices if c.text != it.answer)
        choices = tuple(dataclasses.replace(c, text=c.text.ljust(right + 1, "."))
                        if c is first_wrong else c for c in it.choices)
        padded.append(dataclasses.replace(it, choices=choices))
    rep = cue_report(padded)
    assert rep.longest == []
    assert any("x as long as distractors" in p for p in rep.problems())


def test_position_cue_is_measured_in_the_order_shown(cueing):
    rep = cue_report(cueing)
    shown = {it.id: [c.text for c in it.options()].index(it.answer) for it in cueing}
    assert {i: sorted(v) for i, v in rep.positions.items()} == {
        p: sorted(k for k, q in shown.items() if q == p) for p in set(shown.values())}


def test_the_shipped_bank_gives_no_answer_cue():
    """No length or position cue in the real bank (limits: labkit.quiz.cues.LIMITS); the
    message lists each bound broken and the items to rewrite."""
    problems = cue_report(SHIPPED).problems()
    assert problems == [], "answer cues in quizzes/*.yaml:\n" + "\n".join(problems)


def test_the_shipped_bank_does_not_cue_the_other_way_either():
    """Balancing lengths must not overshoot: if the right option were never the longest (or
    never the shortest), eliminating the extremes would be a strategy of its own."""
    rep = cue_report(SHIPPED)
    assert rep.n >= 40, rep.n
    for cue in ("longest", "shortest"):
        share = len(getattr(rep, cue)) / rep.n
        assert share >= MIN_EXTREME_SHARE, (
            f"the right option is strictly the {cue} in only {100 * share:.0f} % of "
            f"{rep.n} items (at least {100 * MIN_EXTREME_SHARE:.0f} %): a learner can rule "
            f"out the {cue} option")
