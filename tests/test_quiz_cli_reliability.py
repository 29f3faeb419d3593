"""labkit.quiz's terminal against awkward terminals and input (labkit/quiz/cli.py): a terminal
that cannot print a character, answers no number parser expects, and ``--n``."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from labkit import quiz

ROOT = Path(__file__).resolve().parent.parent
BANK = quiz.load_bank(quiz.BANK_DIR)


def terminal(args, stdin: bytes, encoding: str = "utf-8") -> subprocess.CompletedProcess:
    """``python -m labkit.quiz ARGS`` in a terminal of ``encoding``, fed ``stdin``."""
    env = {**os.environ, "PYTHONIOENCODING": encoding, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "labkit.quiz", *args], input=stdin, env=env,
                          cwd=ROOT, capture_output=True, timeout=60)


def right_option(item) -> str:
    return str([c.text for c in item.options()].index(item.answer) + 1)


def test_an_ascii_terminal_gets_ascii_for_the_maths_symbols(tmp_path):
    seed = next(s for s in range(50) if quiz.pick(BANK, "lora-layers", seed=s)[0].id
                == "ll-both-zero")
    item = BANK.by_id["ll-both-zero"]
    assert "∝" in item.quick_check
    args = ["lora-layers", "--seed", str(seed), "--n", "1", "--progress", str(tmp_path / "p")]
    proc = terminal(args, f"{right_option(item)}\n".encode(), "ascii")
    out, err = proc.stdout.decode("ascii"), proc.stderr.decode()
    assert proc.returncode == 0 and err == "", err
    assert "Quick check: grad_B ~ A = 0 and grad_A ~ B = 0." in out
    assert "Done: 1/1 right." in out


def test_characters_with_no_ascii_form_become_question_marks(tmp_path):
    bank = tmp_path / "bank"
    bank.mkdir()
    item = {"id": "t-emoji", "topic": "lora-basics", "kind": "recall", "difficulty": "easy",
            "prompt": "What does \U0001f680 stand for in x² ≤ 1?", "answer": "speed ≈ 1.5×",
            "hint": "h", "solution": ["s"], "quick_check": "q", "mistakes": ["m"]}
    (bank / "lora_basics.yaml").write_text(
        yaml.safe_dump({"topic": "lora-basics", "title": "T", "items": [item]},
                       allow_unicode=True), encoding="utf-8")
    args = ["flashcards", "--bank", str(bank), "--progress", str(tmp_path / "p")]
    proc = terminal(args, b"\ny\n", "ascii")
    out = proc.stdout.decode("ascii")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    assert "What does ? stand for in x^2 <= 1?" in out and "Answer: speed ~= 1.5x" in out


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
@pytest.mark.parametrize("typed", ["²", "9" * 5000, "1e3", "-1"])
def test_answers_no_number_parser_expects_get_a_clear_message(tmp_path, encoding, typed):
    item = quiz.pick(BANK, "lora-params", seed=0)[0]
    assert item.choices
    stdin = f"{typed}\n{right_option(item)}\n".encode()  # bytes an ascii stdin rejects
    args = ["lora-params", "--n", "1", "--progress", str(tmp_path / "p")]
    proc = terminal(args, stdin, encoding)
    out = proc.stdout.decode(encoding)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    assert f"Type a number from 1 to {len(item.choices)}." in out
    assert "Done: 1/1 right." in out


def test_a_5000_digit_answer_to_a_code_item_is_just_wrong(tmp_path):
    item = next(it for it in quiz.pick(BANK, "lora-params", seed=0) if it.kind == "code_output")
    term = quiz._Terminal(io.StringIO("9" * 5000 + "\n"), io.StringIO(),
                          quiz.Progress(tmp_path / "p"))
    assert term.answer(item, "practice").correct is False


# ------------------------------------------------------------------------------- --n


@pytest.mark.parametrize("n", ["-1", "0", "two", "1.5"])
def test_n_must_be_a_positive_whole_number(tmp_path, capsys, n):
    with pytest.raises(SystemExit) as stop:
        quiz.main(["practice", "--n", n, "--progress", str(tmp_path / "p")],
                  stdin=io.StringIO(""), stdout=io.StringIO())
    assert stop.value.code == 2
    assert f"argument --n: must be a positive whole number, got {n!r}" in capsys.readouterr().err


def test_a_test_of_n_questions_asks_exactly_n(tmp_path):
    items = quiz.pick_test(BANK, 3, n=5)
    assert [it.difficulty for it in items] == ["easy"] * 2 + ["medium"] + ["hard"] * 2
    assert quiz.difficulty_plan(10) == quiz.TEST_PLAN and len(set(items)) == 5
    answers = "".join(f"{right_option(it) if it.choices else it.answer}\n" for it in items)
    out = io.StringIO()
    code = quiz.main(["test", "--seed", "3", "--n", "5", "--progress", str(tmp_path / "p")],
                     stdin=io.StringIO(answers), stdout=out)
    text = out.getvalue()
    assert code == 0 and text.startswith("Test (seed 3): 5 questions, no hints.")
    assert text.count("--- Question ") == 5 and "Score: 5/5 (100%)" in text
    assert [len(quiz.difficulty_plan(n)) for n in (1, 2, 3, 7, 20)] == [1, 2, 3, 7, 20]


def test_a_test_longer_than_the_bank_allows_says_why(tmp_path, capsys):
    code = quiz.main(["test", "--n", "1000", "--progress", str(tmp_path / "p")],
                     stdin=io.StringIO(""), stdout=io.StringIO())
    assert code == 2
    assert capsys.readouterr().err.startswith(
        "error: a test of 1000 questions needs 300 easy scored items (choice, scenario, "
        "code_output, find_bug) on lora-basics, lora-params, qlora, quantization, benefits, "
        "lora-is-not; the bank has 10"
    )


def test_pick_refuses_a_count_that_is_not_positive():
    with pytest.raises(quiz.QuizError, match=r"n must be a positive whole number, got -1"):
        quiz.pick(BANK, "lora-params", n=-1)
    with pytest.raises(quiz.QuizError, match=r"n must be a positive whole number, got 0"):
        quiz.pick_test(BANK, 0, n=0)


# -------------------------------------------------------------- leaving a quiz early


def start(args, tmp_path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "labkit.quiz", *args, "--progress",
                             str(tmp_path / "p")], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_ctrl_c_stops_without_a_traceback(tmp_path):
    proc = start(["test"], tmp_path)
    assert proc.stdout.readline().startswith(b"Test (seed 0): 10 questions")  # it waits now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == b"\n(stopped)\n", err


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    proc = start(["test"], tmp_path)
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    proc.stdin.write(b"1\n" * 10)
    proc.stdin.close()
    assert proc.wait(timeout=60) == 1
    assert proc.stderr.read() == b""
