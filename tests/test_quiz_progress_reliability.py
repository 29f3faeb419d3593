"""labkit.quiz's progress file under stress (labkit/quiz/progress.py): several processes
answering into one file, the version-2 schema with self-marks, corrupt or unusable files, and
random mutations of a real progress file."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from quiz_mutations import mutate_bytes, mutate_tree

from labkit import quiz

ROOT = Path(__file__).resolve().parent.parent
BANK = quiz.load_bank(quiz.BANK_DIR)
ITEM = BANK.by_id["qz-why"]

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from labkit import quiz
    path, go, who, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    item = quiz.load_bank().by_id["qz-why"]
    fb = quiz.check(item, 0)
    p = quiz.Progress(path)
    while not go.exists():  # start together, so the writes overlap
        time.sleep(0.002)
    for i in range(n):
        if who.startswith("mark"):
            p.record_self_mark("lb-explain", f"{who}-{i}")
        else:
            p.record(item, fb, mode=f"{who}-{i}")
""")


def run_writers(tmp_path, names, n):
    path, go = tmp_path / "progress.json", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(go), who, str(n)],
                         cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        for who in names
    ]
    time.sleep(0.6)  # let every process import and open the file
    go.touch()
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), errors
    return path


def test_several_processes_answering_into_one_file_keep_every_answer(tmp_path):
    names = ["a", "b", "c", "d"]
    path = run_writers(tmp_path, names, 30)
    modes = [a["mode"] for a in quiz.Progress(path).attempts]
    assert sorted(modes) == sorted(f"{w}-{i}" for w in names for i in range(30))
    # each writer's answers stay in its own order
    for w in names:
        mine = [m for m in modes if m.startswith(f"{w}-")]
        assert mine == [f"{w}-{i}" for i in range(30)]


def test_self_marks_and_attempts_from_several_processes_are_all_kept(tmp_path):
    path = run_writers(tmp_path, ["a", "b", "mark1", "mark2"], 20)
    p = quiz.Progress(path)
    assert len(p.attempts) == 40
    concepts = sorted(m["concept"] for m in p.self_marks)
    assert concepts == sorted(f"mark{k}-{i}" for k in (1, 2) for i in range(20))


# ------------------------------------------------------------------------ version 2


def attempt(**changes):
    a = {"id": "qz-why", "topic": "quantization", "kind": "choice", "difficulty": "easy",
         "mode": "practice", "correct": True, "score": 1.0, "time": 1767225600.0}
    a.update(changes)
    return a


def test_a_new_file_is_version_2_with_attempts_and_self_marks(tmp_path):
    path = tmp_path / "progress.json"
    p = quiz.Progress(path)
    p.record(ITEM, quiz.check(ITEM, 0))
    p.record_self_mark("lb-explain", "the base stays frozen")
    data = json.loads(path.read_text())
    assert set(data) == {"version", "attempts", "self_marks"} and data["version"] == 2
    assert [a["id"] for a in data["attempts"]] == ["qz-why"]
    (mark,) = data["self_marks"]
    assert mark["id"] == "lb-explain" and mark["concept"] == "the base stays frozen"
    assert abs(mark["time"] - time.time()) < 60
    assert quiz.Progress(path).self_marks == data["self_marks"]


def test_a_self_mark_needs_an_item_id_and_a_concept(tmp_path):
    path = tmp_path / "progress.json"
    p = quiz.Progress(path)
    p.record_self_mark("lb-explain", "the base stays frozen")
    before = path.read_bytes()
    with pytest.raises(quiz.QuizError, match=r"self-mark: 'concept' must be non-empty text"):
        p.record_self_mark("lb-explain", "  ")
    with pytest.raises(quiz.QuizError, match=r"self-mark: 'item_id' must be non-empty text"):
        p.record_self_mark(None, "frozen")
    assert path.read_bytes() == before and len(p.self_marks) == 1


def test_a_version_1_file_is_migrated_on_read_and_written_as_version_2(tmp_path):
    path = tmp_path / "progress.json"
    v1 = json.dumps({"version": 1, "attempts": [attempt()]}, indent=1)
    path.write_text(v1)
    p = quiz.Progress(path)
    assert p.attempts == [attempt()] and p.self_marks == []
    assert path.read_text() == v1  # reading does not write
    p.record_self_mark("qz-explain", "fewer bits per weight")
    data = json.loads(path.read_text())
    assert data["version"] == 2 and data["attempts"] == [attempt()]
    assert [m["concept"] for m in data["self_marks"]] == ["fewer bits per weight"]


def test_a_newer_version_is_refused_and_never_overwritten(tmp_path):
    path = tmp_path / "progress.json"
    path.write_text(json.dumps({"version": 3, "attempts": [], "streaks": {}}))
    before = path.read_bytes()
    message = (r"progress file version 3 is newer than this labkit reads \(1-2\); upgrade "
               r"labkit, or use another file \(--progress FILE or LABKIT_PROGRESS\); it was "
               r"left as it is")
    with pytest.raises(quiz.QuizError, match=message):
        quiz.Progress(path)
    unread = quiz.Progress(path, read=False)
    with pytest.raises(quiz.QuizError, match=message):
        unread.record(ITEM, quiz.check(ITEM, 0))
    with pytest.raises(quiz.QuizError, match=message):
        unread.reset()
    assert path.read_bytes() == before
    proc = subprocess.run([sys.executable, "-m", "labkit.quiz", "progress", "--progress",
                           str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {path}: progress file version 3 is newer")
    assert path.read_bytes() == before


# ------------------------------------------------------------- corrupt or unusable files

CORRUPT = {
    "not-json": (b'{"attempts": [', r"not valid JSON"),
    "bad-utf8": (b'{"version": 1, "attempts": []}\xff', r"not valid UTF-8"),
    "not-an-object": (b"[]", r"not a JSON object"),
    "attempts-not-a-list": (b'{"version": 2, "attempts": {}, "self_marks": []}',
                            r"'attempts' is not a list"),
    "entry-wrong-types": (json.dumps({"version": 1, "attempts": [attempt(correct="yes")]}).encode(),
                          r"attempts\[0\]: 'correct' must be true or false"),
    "entry-missing-field": (json.dumps({"version": 1, "attempts": [{"id": "qz-why"}]}).encode(),
                            r"attempts\[0\]: 'topic' is missing"),
    "score-out-of-range": (json.dumps({"version": 1, "attempts": [attempt(score=7)]}).encode(),
                           r"attempts\[0\]: 'score' must be a number from 0 to 1"),
    "version-text": (b'{"version": "2", "attempts": []}', r"'version' must be a whole number"),
    "self-marks-wrong": (b'{"version": 2, "attempts": [], "self_marks": [{"id": 3}]}',
                         r"self_marks\[0\]: 'id' must be non-empty text"),
}


@pytest.mark.parametrize("content, problem", list(CORRUPT.values()), ids=list(CORRUPT))
def test_a_corrupt_progress_file_is_set_aside_and_a_fresh_one_started(tmp_path, content,
                                                                       problem):
    path = tmp_path / "progress.json"
    path.write_bytes(content)
    with pytest.warns(quiz.ProgressFileWarning) as caught:
        p = quiz.Progress(path)
    (aside,) = [f for f in tmp_path.iterdir() if f.name.startswith("progress.json.corrupt-")]
    assert aside.read_bytes() == content  # kept, byte for byte
    message = str(caught[0].message)
    assert message.startswith(f"{path}: the progress file could not be used (")
    assert re.search(problem, message), message
    assert message.endswith(f"it was moved to {aside} and a fresh one started")
    assert p.attempts == [] and p.self_marks == []
    p.record(ITEM, quiz.check(ITEM, 0))
    assert [a["id"] for a in quiz.Progress(path).attempts] == ["qz-why"]
    assert aside.read_bytes() == content


def test_a_second_corrupt_file_never_replaces_the_first_one_set_aside(tmp_path):
    path = tmp_path / "progress.json"
    for content in (b"one", b"two"):
        path.write_bytes(content)
        with pytest.warns(quiz.ProgressFileWarning):
            quiz.Progress(path)
    kept = sorted(f.read_bytes() for f in tmp_path.iterdir() if ".corrupt-" in f.name)
    assert kept == [b"one", b"two"]


def test_the_terminal_says_where_a_corrupt_file_went_without_a_traceback(tmp_path):
    path = tmp_path / "progress.json"
    path.write_bytes(b"\x00\x01 not json")
    proc = subprocess.run([sys.executable, "-m", "labkit.quiz", "progress", "--progress",
                           str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    (aside,) = [f for f in tmp_path.iterdir() if ".corrupt-" in f.name]
    assert proc.stderr.startswith(f"note: {path}: the progress file could not be used")
    assert f"it was moved to {aside} and a fresh one started" in proc.stderr
    assert "No attempts yet" in proc.stdout


def cli_error(path) -> str:
    proc = subprocess.run([sys.executable, "-m", "labkit.quiz", "test", "--progress", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, input="")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_a_directory_as_the_progress_path_is_a_clear_error(tmp_path):
    message = (rf"{tmp_path}: this progress path is a directory; give a file, e.g. --progress "
               rf"{tmp_path / 'quiz_progress.json'}")
    with pytest.raises(quiz.QuizError, match=message):
        quiz.Progress(tmp_path)
    assert cli_error(tmp_path).startswith(f"error: {tmp_path}: this progress path is a directory")
    assert tmp_path.is_dir()


def test_a_path_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    path = tmp_path / "notes.txt" / "progress.json"
    fix = r"use a file in a writable directory \(--progress FILE or LABKIT_PROGRESS\)"
    with pytest.raises(quiz.QuizError, match=rf"^{path}: cannot use this progress file \(.*\); "
                       + fix):
        quiz.Progress(path)
    assert cli_error(path).startswith(f"error: {path}: cannot use this progress file (")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_write_refused_by_the_system_is_a_clear_error_and_changes_nothing(tmp_path,
                                                                            monkeypatch):
    """What a read-only directory does to a non-root user (root may write anywhere, so the
    real thing is the next test, which root skips)."""
    path = tmp_path / "progress.json"
    p = quiz.Progress(path)
    p.record(ITEM, quiz.check(ITEM, 0))
    before, attempts = path.read_bytes(), list(p.attempts)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(quiz.QuizError, match=rf"^{path}: cannot use this progress file "
                       r"\(.*Permission denied.*\); use a file in a writable directory"):
        p.record(ITEM, quiz.check(ITEM, 1))
    assert path.read_bytes() == before and p.attempts == attempts  # rolled back


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root may write into a read-only directory")
def test_a_read_only_directory_or_file_is_a_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "progress.json"
    quiz.Progress(path).record(ITEM, quiz.check(ITEM, 0))
    before = path.read_bytes()
    path.chmod(0o444)
    with pytest.raises(quiz.QuizError, match=r"progress file is read-only; make it writable"):
        quiz.Progress(path).record(ITEM, quiz.check(ITEM, 0))
    path.chmod(0o644)
    folder.chmod(0o555)
    try:
        with pytest.raises(quiz.QuizError, match=r"cannot use this progress file"):
            quiz.Progress(path).record(ITEM, quiz.check(ITEM, 0))
        assert "cannot use this progress file" in cli_error(path)
    finally:
        folder.chmod(0o755)
    assert path.read_bytes() == before


# ------------------------------------------------------------------------------ fuzzing

FUZZ_VALUES = [None, True, 0, -1, 1e308, float("nan"), "", "x" * 3, [], {}, [1, 2],
               {"id": "x"}, "ünï", 10**30]


def real_progress_file(path) -> bytes:
    p = quiz.Progress(path)
    for item_id, answer in [("qz-why", 0), ("qz-why", 1), ("lp-trainable-count", "16,384"),
                            ("lb-goal", 2)]:
        item = BANK.by_id[item_id]
        p.record(item, quiz.check(item, answer), mode="practice")
    data = json.loads(path.read_text())
    data["version"] = 2
    data["self_marks"] = [{"id": "lb-explain", "concept": "frozen", "time": 1767225600.5}]
    return json.dumps(data, indent=1).encode()


def test_random_mutations_of_a_real_progress_file_never_raise_anything_but_quiz_error(tmp_path):
    original = real_progress_file(tmp_path / "base.json")
    data = json.loads(original)
    rng = random.Random(20261204)
    outcomes = {"loaded": 0, "set aside": 0, "refused": 0}
    for n in range(200):
        folder = tmp_path / f"m{n}"
        folder.mkdir()
        path = folder / "progress.json"
        if n % 2:
            content = mutate_bytes(rng, original, bytes(range(256)), [b"[", b"{}", b"\xc3"])
        else:
            content = json.dumps(mutate_tree(rng, data, FUZZ_VALUES), indent=1).encode()
        path.write_bytes(content)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                p = quiz.Progress(path)
                p.summary_text()
                p.record(ITEM, quiz.check(ITEM, 0))
                p.record_self_mark("lb-explain", "frozen")
        except quiz.QuizError as exc:
            assert str(exc).startswith(f"{path}: "), exc
            assert path.read_bytes() == content  # refused: left as it was
            outcomes["refused"] += 1
            continue
        kept = [f.read_bytes() for f in folder.iterdir() if ".corrupt-" in f.name]
        if caught:
            assert kept == [content] and "moved to" in str(caught[0].message)
            outcomes["set aside"] += 1
        else:
            assert kept == []
            outcomes["loaded"] += 1
        fresh = quiz.Progress(path)
        assert fresh.attempts[-1]["id"] == ITEM.id and fresh.self_marks[-1]["concept"] == "frozen"
    assert min(outcomes.values()) > 0, outcomes  # the mutations reach every outcome
