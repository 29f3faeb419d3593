"""After an explain answer is scored the learner sees the checklist and the model answer and
may mark a missed concept as covered: in the notebook widget (a checkbox per missed concept)
and in the terminal (numbers, Enter to skip). The self-mark goes to Progress.self_marks; the
automatic score is not changed by it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from labkit import quiz

ROOT = Path(__file__).resolve().parent.parent
BANK = quiz.load_bank(quiz.BANK_DIR)
PARTIAL = "LoRA keeps the pretrained weights frozen and trains two small matrices A and B."


def test_widget_shows_checklist_model_answer_and_records_self_marks(tmp_path):
    progress = quiz.Progress(tmp_path / "p.json")
    view = quiz.show(ids=["lb-explain"], progress=progress)
    view.response.value = PARTIAL
    view.check_button.click()
    res = view.result.explain
    assert res.hit == ["the base stays frozen", "small low-rank matrices are trained"]
    assert "[ ] far fewer trainable parameters (cheap)" in view.feedback.value
    assert "Model answer" in view.model_answer.value
    assert view.item.answer[:40] in view.model_answer.value
    labels = [box.description for box in view.mark_boxes]
    assert labels == [f"I covered: {name}" for name in res.missed]
    view.mark_boxes[1].value = True  # tick "far fewer trainable parameters (cheap)"
    view.mark_boxes[1].value = False  # unticking records nothing more
    saved = json.loads((tmp_path / "p.json").read_text())
    assert [(m["id"], m["concept"]) for m in saved["self_marks"]] == [
        ("lb-explain", res.missed[1])
    ]
    assert [(a["id"], a["correct"], a["score"]) for a in saved["attempts"]] == [
        ("lb-explain", False, 0.5)
    ]  # the automatic score stands


def test_widget_passed_answer_offers_no_marks_and_test_mode_none(tmp_path):
    progress = quiz.Progress(tmp_path / "p.json")
    view = quiz.show(ids=["lb-explain"], progress=progress)
    view.response.value = view.item.answer
    view.check_button.click()
    assert view.result.correct and view.mark_boxes == []
    test_view = quiz.ItemView(BANK.by_id["lb-explain"], progress=progress, mode="test")
    test_view.response.value = PARTIAL
    test_view.check_button.click()
    assert test_view.mark_boxes == [] and test_view.model_answer.value == ""
    assert progress.self_marks == []


ITEM = quiz.pick(BANK, quiz.review_topics(BANK), kind="explain", n=1, seed=0)[0]
#: Covers the shapes of B and A only; misses the sum and why it is small.
SHAPES = "The adapter is B, which is d x r, and A, which is r x k."


def _terminal(tmp_path, answer: str, marks: str):
    progress = tmp_path / "p.json"
    proc = subprocess.run(
        [sys.executable, "-m", "labkit.quiz", "explain", "--n", "1", "--seed", "0",
         "--progress", str(progress)],
        input=f"{answer}\n\n{marks}", capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc.stdout, json.loads(progress.read_text())


def test_terminal_lists_missed_concepts_and_records_the_numbers_typed(tmp_path):
    res = quiz.check(ITEM, SHAPES).explain
    assert ITEM.id == "lp-explain" and len(res.missed) == 2 and len(res.hit) == 1
    out, saved = _terminal(tmp_path, SHAPES, "2 x 99 2\n")
    assert "[x] " + res.hit[0] in out and "[ ] " + res.missed[0] in out  # the checklist
    assert f"Answer: {ITEM.answer}" in out  # the model answer
    assert "Missed concepts:" in out and f"  2) {res.missed[1]}" in out
    assert "Skipped 'x'" in out and "Skipped '99'" in out
    assert [(m["id"], m["concept"]) for m in saved["self_marks"]] == [(ITEM.id, res.missed[1])]
    assert saved["attempts"][0]["correct"] is False
    assert abs(saved["attempts"][0]["score"] - res.score) < 1e-3  # the score stands (rounded)


def test_terminal_enter_skips_and_ended_input_is_fine(tmp_path):
    out, saved = _terminal(tmp_path, SHAPES, "\n")
    assert "Missed concepts:" in out and saved["self_marks"] == []
    out, saved = _terminal(tmp_path, SHAPES, "")
    assert "(input ended)" in out and "Done: 0/1 right." in out and saved["self_marks"] == []


def test_explain_session_self_marks_every_missed_concept_once_per_tick(tmp_path):
    progress = quiz.Progress(tmp_path / "p.json")
    session = quiz.explain(progress=progress)
    view = session.views[0]
    view.response.value = "This answer is about something else entirely, in a sentence."
    view.check_button.click()
    missed = view.result.explain.missed
    assert missed == [c["name"] for c in view.item.concepts]  # nothing covered
    for box in view.mark_boxes:
        box.value = True
    assert [m["concept"] for m in progress.self_marks] == missed
    assert progress.summary()[view.item.topic] == {"attempts": 1, "correct": 0, "items": 1,
                                                   "score": 0.0}  # the score is untouched
