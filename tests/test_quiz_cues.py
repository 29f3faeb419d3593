"""Answer cues in the question bank: length and position must give nothing away."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from labkit import quiz
from labkit.quiz.cues import cue_report

FIXTURE = Path(__file__).parent / "fixtures" / "cueing_bank.yaml"


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
