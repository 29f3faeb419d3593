"""labkit.quiz's terminal (labkit/quiz/cli.py, ``python -m labkit.quiz``): piped tests, practice
with hints, flashcards, explain, progress, lesson quizzes, errors; and its torch-free import."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

from labkit import quiz

ROOT = Path(__file__).resolve().parent.parent
BANK = quiz.load_bank(quiz.BANK_DIR)


def option_index(item, text):
    return [c.text for c in item.options()].index(text)


def test_terminal_runs_a_whole_test_from_piped_input(tmp_path):
    items = quiz.pick_test(BANK, 0)
    lines = []
    for i, item in enumerate(items):
        if item.choices:
            right = option_index(item, item.answer) + 1
            lines.append(str(right if i != 4 else right % len(item.choices) + 1))
        else:
            lines.append(item.answer if i != 4 else "something else")
    progress = tmp_path / "p.json"
    proc = subprocess.run(
        [sys.executable, "-m", "labkit.quiz", "test", "--seed", "0", "--progress", str(progress)],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out = proc.stdout
    assert out.count("--- Question ") == 10 and out.count("Correct") == 9
    assert f"The answer: {items[4].answer}" in out
    assert "Score: 9/10 (90%)" in out
    saved = json.loads(progress.read_text())["attempts"]
    assert [a["id"] for a in saved] == [it.id for it in items]
    assert [a["mode"] for a in saved] == ["test"] * 10


def test_terminal_practice_hints_retries_and_early_end(tmp_path):
    seed = next(s for s in range(50) if quiz.pick(BANK, "lora-params", seed=s)[0].choices)
    item = quiz.pick(BANK, "lora-params", seed=seed)[0]
    right = option_index(item, item.answer) + 1
    out = io.StringIO()
    stdin = io.StringIO(f"h\nfive\n9\n{right}\n")  # then input ends during question 2
    args = ["lora-params", "--seed", str(seed), "--n", "3", "--progress", str(tmp_path / "p.json")]
    assert quiz.main(args, stdin=stdin, stdout=out) == 0
    text = out.getvalue()
    assert f"Hint: {item.hint}" in text
    assert "Type a number from 1 to" in text and "Pick an option from 1 to" in text
    assert "Correct." in text and "Solution:" in text
    assert "--- Question 2 of 3 ---" in text and "(input ended)" in text
    assert text.rstrip().endswith("Done: 1/1 right.")
    assert [a["id"] for a in quiz.Progress(tmp_path / "p.json").attempts] == [item.id]


def test_terminal_flashcards_explain_and_progress(tmp_path):
    progress = str(tmp_path / "p.json")
    out = io.StringIO()
    quiz.main(
        ["flashcards", "--n", "2", "--progress", progress],
        stdin=io.StringIO("\ny\n\nn\n"),
        stdout=out,
    )
    assert out.getvalue().count("Did you know it?") == 2 and "Done: 1/2 right." in out.getvalue()
    assert out.getvalue().startswith("Flashcards: 2 items.")
    cards = quiz.pick(BANK, quiz.CORE_TOPICS, kind="recall", n=2, seed=0)  # core topics, as 08
    saved = quiz.Progress(progress).attempts
    assert [(a["id"], a["mode"]) for a in saved] == [(it.id, "flashcards") for it in cards]
    out = io.StringIO()
    answer = BANK.by_id["qz-explain"].answer
    quiz.main(
        ["explain", "--n", "1", "--seed", "0", "--progress", progress],
        stdin=io.StringIO(answer + "\n\n"),
        stdout=out,
    )
    assert "concepts." in out.getvalue()
    out = io.StringIO()
    quiz.main(["progress", "--progress", progress], stdout=out)
    assert out.getvalue().splitlines()[0] == f"Progress file: {progress}"
    assert out.getvalue().splitlines()[1].split() == [
        "topic",
        "attempts",
        "correct",
        "items",
        "score",
    ]


def test_terminal_unknown_mode_is_an_error(tmp_path, capsys):
    assert quiz.main(["lora", "--progress", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert ("error: unknown mode 'lora'; use a topic (benefits, beyond-lora, failure-lab, "
            "finetuning, lora-basics") in err
    assert "or lesson NN, practice, test" in err


def test_terminal_hint_in_a_practice_item(tmp_path):
    out = io.StringIO()
    item = BANK.by_id["lp-fraction"]
    term = quiz._Terminal(io.StringIO("h\n0.20%\n"), out, quiz.Progress(tmp_path / "p.json"))
    fb = term.answer(item, "practice")
    assert f"Hint: {item.hint}" in out.getvalue() and fb.correct is False
    assert "Solution:" in out.getvalue()


def test_lesson_quiz_in_the_terminal(tmp_path):
    out = io.StringIO()
    code = quiz.main(["lesson", "2", "--progress", str(tmp_path / "p.json")],
                     stdin=io.StringIO(""), stdout=out)
    assert code == 0 and out.getvalue().startswith("Lesson 02 quiz: 3 items.")
    assert BANK.by_id["ll-b-zero"].prompt in out.getvalue()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert quiz.main(["lesson", "--progress", str(tmp_path / "p.json")]) == 2
        assert quiz.main(["test", "07", "--progress", str(tmp_path / "p.json")]) == 2
    assert "which lesson? e.g. python -m labkit.quiz lesson 07" in err.getvalue()
    assert "unexpected argument '07': only 'lesson' takes a number" in err.getvalue()


# -------------------------------------------------------------------------- light import


def test_import_labkit_quiz_leaves_torch_out():
    # the package, and every module behind its names (the terminal's and the notebook API's)
    code = (
        "import sys, labkit.quiz as q; names = [getattr(q, n) for n in q.__all__]; "
        "bad = [m for m in ('torch', 'ipywidgets', 'bitsandbytes') "
        "if m in sys.modules]; print(bad)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.strip() == "[]", proc.stderr
