"""labkit.quiz's progress file (labkit/quiz/progress.py): per-topic summary, concurrent writers,
where it lives, and atomic rewrites that survive a crash (more in
test_quiz_progress_reliability.py)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import labkit.quiz.progress as progress_module
from labkit import quiz

ROOT = Path(__file__).resolve().parent.parent
BANK = quiz.load_bank(quiz.BANK_DIR)


def test_progress_survives_a_reload_and_summarises_per_topic(tmp_path):
    path = tmp_path / "deep" / "progress.json"
    p = quiz.Progress(path)
    a, b = BANK.by_id["lp-trainable-count"], BANK.by_id["qz-why"]
    p.record(a, quiz.check(a, "8,192"))
    p.record(a, quiz.check(a, "16,384"))
    p.record(b, quiz.check(b, "Each parameter is stored in fewer bits."))
    p.record(b, quiz.Feedback(None, 0.0, "no answer"))  # not checked: not recorded
    again = quiz.Progress(path)
    assert again.attempts == p.attempts and len(again.attempts) == 3
    assert again.summary() == {
        "lora-params": {"attempts": 2, "correct": 1, "items": 1, "score": 1.0},
        "quantization": {"attempts": 1, "correct": 1, "items": 1, "score": 1.0},
    }
    assert "lora-params           2        1      1   100%" in again.summary_text()
    again.reset("quantization")
    assert list(quiz.Progress(path).summary()) == ["lora-params"]
    again.reset()
    assert quiz.Progress(path).attempts == []


def test_two_progress_objects_on_one_file_keep_each_others_attempts(tmp_path):
    path = tmp_path / "progress.json"
    first, second = quiz.Progress(path), quiz.Progress(path)
    a, b = BANK.by_id["qz-why"], BANK.by_id["lb-goal"]
    first.record(a, quiz.check(a, 0))
    second.record(b, quiz.check(b, 0))
    first.record(a, quiz.check(a, 1))
    assert [x["id"] for x in quiz.Progress(path).attempts] == ["qz-why", "lb-goal", "qz-why"]


def test_progress_path_from_argument_environment_or_user_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_PROGRESS", str(tmp_path / "env.json"))
    assert quiz.progress_path() == tmp_path / "env.json"
    assert quiz.progress_path(tmp_path / "arg.json") == tmp_path / "arg.json"
    monkeypatch.delenv("LABKIT_PROGRESS")
    import platformdirs

    assert quiz.progress_path().parent == Path(
        platformdirs.user_data_dir("labkit", appauthor=False)
    )


def test_progress_crash_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    item = BANK.by_id["qz-why"]
    p = quiz.Progress(path)
    p.record(item, quiz.check(item, 0))
    before = path.read_text()

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(progress_module.os, "fsync", crash)  # where Progress looks it up
    with pytest.raises(quiz.QuizError, match=r"cannot use this progress file \(disk gone\)"):
        p.record(item, quiz.check(item, 1))
    assert path.read_text() == before
    # the temp file is cleaned up (the lock file stays: it is empty and reused)
    assert sorted(os.listdir(tmp_path)) == ["progress.json", "progress.json.lock"]


def test_progress_killed_process_mid_write_keeps_the_old_file(tmp_path):
    """A process that dies between writing the temp file and renaming it (os._exit)."""
    path = tmp_path / "progress.json"
    item = BANK.by_id["qz-why"]
    quiz.Progress(path).record(item, quiz.check(item, 0))
    before = path.read_text()
    script = textwrap.dedent(f"""
        import os
        from labkit import quiz
        p = quiz.Progress({str(path)!r})
        item = quiz.load_bank().by_id["qz-why"]
        os.replace = lambda *a: os._exit(9)  # die before the new file takes the old one's place
        p.record(item, quiz.check(item, 1))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True)
    assert proc.returncode == 9
    assert path.read_text() == before
    assert len(quiz.Progress(path).attempts) == 1


def test_reset_sets_a_corrupt_progress_file_aside_and_starts_over(tmp_path, capsys):
    path = tmp_path / "progress.json"
    path.write_text('{"attempts": [')
    out = io.StringIO()
    assert quiz.main(["reset", "--progress", str(path)], stdout=out) == 0
    (aside,) = tmp_path.glob("progress.json.corrupt-*")
    assert capsys.readouterr().err == (
        f"note: {path}: the progress file could not be used (not valid JSON: Expecting value: "
        f"line 1 column 15 (char 14)); it was moved to {aside} and a fresh one started\n"
    )
    assert out.getvalue() == f"Progress reset ({path}).\n"
    assert quiz.Progress(path).attempts == []
    assert aside.read_text() == '{"attempts": ['
