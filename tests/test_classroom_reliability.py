"""`check` cannot be faked and runs each submission in a sandbox; `student` keeps the learner's
work; near-miss solution markers never leak a solution.

The submissions in tests/fixtures/classroom/submissions (rebuilt by its build.py) are the
student version of lessons/01_exercises.ipynb edited to fake a verdict, escape the sandbox,
copy the solution, run out of memory or kill the kernel. Each `check` starts one kernel per
notebook (about a second), so the notebooks of a test share one call.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from pathlib import Path

import nbformat
import pytest

from labkit import classroom
from labkit.classroom import ClassroomError

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "classroom"
LESSONS = FIX / "lessons"
INSTRUCTOR = LESSONS / "01_exercises.ipynb"
SUBS = FIX / "submissions"


def check(*paths, **kw) -> dict:
    """{(notebook file name, exercise): (result, feedback)} of one `check` run."""
    rows = classroom.check_notebooks(paths, **dict({"lessons": LESSONS, "timeout": 30}, **kw))
    return {(Path(r.notebook).name, r.exercise): (r.result, r.feedback) for r in rows}


def run_main(capsys, *args) -> tuple[int, str, str]:
    code = classroom.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- fakes


def test_forged_lines_rigged_ints_and_patched_checks_do_not_pass():
    """The grader runs the check in its own process on the learner's function: a printed
    PASS line, an int whose == is always True and a patched labkit.checks all FAIL."""
    rows = check(SUBS / "forged_line.ipynb", SUBS / "always_equal.ipynb",
                 SUBS / "patched_checks.ipynb")
    got = {k: v[0] for k, v in rows.items()}
    assert got == {
        ("forged_line.ipynb", "lora-count"): "FAIL",
        ("forged_line.ipynb", "adamw-bytes"): "PASS",  # right answers still pass
        ("always_equal.ipynb", "lora-count"): "FAIL",
        ("always_equal.ipynb", "adamw-bytes"): "PASS",
        ("patched_checks.ipynb", "lora-count"): "FAIL",
        ("patched_checks.ipynb", "adamw-bytes"): "PASS",
    }
    assert "that is r * (d * k)" in rows["forged_line.ipynb", "lora-count"][1]
    assert "you return 0, expected" in rows["always_equal.ipynb", "lora-count"][1]
    assert "that is d * k, the frozen weight" in rows["patched_checks.ipynb", "lora-count"][1]


def test_the_wire_rebuilds_plain_values_and_never_a_submissions_class():
    torch = pytest.importorskip("torch")
    from labkit.classroom import wire

    class Always(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    class Weird:
        pass

    value = (Always(3), True, 2.5, math.inf, "s", None, [1], {"k": 2},
             torch.arange(4, dtype=torch.bfloat16), torch.ones(2, requires_grad=True), Weird())
    message, back = wire.unpack(wire.pack({"op": "x"}, {"v": value}))
    v = back["v"]
    assert message["op"] == "x" and type(v) is tuple
    assert type(v[0]) is int and v[0] == 3 and v[0] != 4  # the value, not the class
    assert v[1:8] == (True, 2.5, math.inf, "s", None, [1], {"k": 2})
    assert v[8].dtype == torch.bfloat16 and torch.equal(v[8], torch.arange(4).bfloat16())
    assert v[9].requires_grad and not v[8].requires_grad
    assert type(v[10]).__name__ == "Weird" and isinstance(v[10], wire.Opaque)
    assert v[10] != v[10].__class__("x")
    with pytest.raises(wire.WireError, match="malformed value"):
        wire.unpack('{"values": {"v": {"t": "int", "v": 3}}}')  # an int is sent as text
    with pytest.raises(wire.WireError, match="malformed value on the wire: int"):
        wire.unpack('{"values": {"v": {"t": "int", "v": "%s"}}}' % ("9" * 5000))
    with pytest.raises(wire.WireError, match="not a JSON message"):
        wire.unpack("__import__('os')")


def test_checks_on_tensors_run_in_the_grader_gradients_included():
    """LoRA's forward and one DDP rank's loss (its gradient flows back through the kernel)."""
    pytest.importorskip("torch")
    tensors = FIX / "tensors"
    rows = check(tensors / "lessons" / "02_tensors.ipynb", tensors / "wrong.ipynb",
                 lessons=tensors / "lessons", timeout=60)
    assert rows[("02_tensors.ipynb", "lora-forward")][0] == "PASS"
    result, why = rows[("02_tensors.ipynb", "shard-loss")]
    assert result == "PASS" and "DDP's averaged gradient is the global mean loss's" in why
    assert rows[("wrong.ipynb", "lora-forward")][0] == "FAIL"
    assert "changed W in place" in rows[("wrong.ipynb", "lora-forward")][1]
    assert "the shard's own mean loss" in rows[("wrong.ipynb", "shard-loss")][1]


# ----------------------------------------------------------------------------- sandbox


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # a zombie waiting for its new parent: no longer running


def test_each_submission_runs_alone_and_leaves_no_process_behind(tmp_path, monkeypatch):
    """escape.ipynb deletes every notebook in its folder and starts a background process."""
    folder = tmp_path / "submissions"
    folder.mkdir()
    escape, alice = folder / "escape.ipynb", folder / "alice.ipynb"
    shutil.copy(SUBS / "escape.ipynb", escape)
    shutil.copy(INSTRUCTOR, alice)
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("LABKIT_TEST_PIDFILE", str(pidfile))
    rows = check(escape, alice)
    pid = int(pidfile.read_text())
    try:
        end = time.monotonic() + 5
        while not _gone(pid) and time.monotonic() < end:
            time.sleep(0.1)
        assert _gone(pid), "the submission's background process outlived the check"
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)
    assert escape.is_file() and alice.is_file()  # it deleted only its own copy
    assert {k: v[0] for k, v in rows.items()} == {
        ("escape.ipynb", "lora-count"): "PASS", ("escape.ipynb", "adamw-bytes"): "PASS",
        ("alice.ipynb", "lora-count"): "PASS", ("alice.ipynb", "adamw-bytes"): "PASS",
    }


def test_memory_limit_turns_a_huge_allocation_into_a_row():
    """oom.ipynb allocates 3 GB (lazily: no memory without a limit) under a 1 GB limit."""
    rows = check(SUBS / "oom.ipynb", memory_gb=1)
    result, why = rows["oom.ipynb", "lora-count"]  # the allocation in the exercise's cell
    assert result == "FAIL" and "no function lora_count after running the notebook" in why
    assert "cell 4 ran out of memory (the check kernel may use 1 GB" in why
    result, why = rows["oom.ipynb", "adamw-bytes"]  # the allocation inside the function
    assert result == "FAIL" and "your function raised MemoryError: ran out of memory" in why
    # a limit too small for the kernel itself: one row that says so
    (row,) = classroom.check_notebooks([INSTRUCTOR], lessons=LESSONS, memory_gb=0.05)
    assert row.result == "ERROR" and row.feedback.startswith("the kernel did not start")
    assert "is --memory-limit 0.05 GB too small for it?" in row.feedback


def test_a_dead_kernel_or_a_hang_is_one_row_and_the_whole_notebook_has_a_limit():
    rows = classroom.check_notebooks([SUBS / "exits.ipynb"], lessons=LESSONS, timeout=30)
    assert [(r.exercise, r.result) for r in rows] == [
        ("lora-count", "ERROR"), ("adamw-bytes", "ERROR")]
    assert rows[0].feedback.startswith("the kernel died in cell 5 (os._exit")
    assert rows[1].feedback == "not run: the notebook stopped at cell 5"
    assert not any("timeout" in r.feedback or "ran past" in r.feedback for r in rows)
    # the same when the grader calls the functions: one loops forever, the other exits
    rows = check(SUBS / "stalls.ipynb", timeout=2)
    assert rows == {
        ("stalls.ipynb", "lora-count"): (
            "ERROR", "running lora_count on the grader's inputs took longer than the 2 s "
                     "timeout"),
        ("stalls.ipynb", "adamw-bytes"): (
            "ERROR", "the kernel died while running adamw_bytes on the grader's inputs")}
    # hangs.ipynb sleeps 600 s in cell 2: the 60 s per cell do not stop it, the 2 s do
    rows = check(FIX / "bad" / "hangs.ipynb", timeout=60, total_timeout=2)
    assert rows["hangs.ipynb", "-"] == ("ERROR", "the notebook ran past the 2 s limit for the "
                                                 "whole notebook, in cell 2 (stopped there)")


def test_a_submission_cannot_read_the_solutions_through_labkit(monkeypatch, tmp_path):
    rows = check(SUBS / "peek_solution.ipynb")
    result, why = rows["peek_solution.ipynb", "lora-count"]
    assert result == "FAIL" and "your function raised ClassroomError" in why
    assert "reads no notebooks inside a check kernel" in why
    # the same marker, set here: every helper that reads the lessons refuses
    monkeypatch.setenv(classroom.CHECK_KERNEL_ENV, "1")
    for call in (lambda: classroom.solution("01", "lora-count", LESSONS),
                 lambda: classroom.show_solution("01", "lora-count", LESSONS),
                 lambda: classroom.make_workspace(tmp_path / "ws", LESSONS),
                 lambda: classroom.make_student(LESSONS, tmp_path / "out"),
                 lambda: classroom.exercise_checks(INSTRUCTOR)):
        with pytest.raises(ClassroomError, match="reads no notebooks inside a check kernel"):
            call()
    assert not (tmp_path / "ws").exists() and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- check's CLI


@pytest.mark.parametrize("option", ["--timeout", "--total-timeout", "--memory-limit"])
@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_limits_must_be_positive(capsys, option, value):
    with pytest.raises(SystemExit) as info:
        classroom.main(["check", str(INSTRUCTOR), option, value])
    assert info.value.code == 2
    assert f"argument {option}: must be a positive number, got '{value}'" in capsys.readouterr().err
    with pytest.raises(ClassroomError, match="timeout must be a positive number, got 0"):
        classroom.check_notebooks([INSTRUCTOR], timeout=0)


def test_csv_target_is_checked_before_anything_runs(capsys, tmp_path):
    code, out, err = run_main(capsys, "check", INSTRUCTOR, "--csv", tmp_path,
                              "--lessons", LESSONS)
    assert code == 2 and out == ""  # no table: nothing ran
    assert f"--csv {tmp_path}: is a folder; give a file name" in err
    code, out, err = run_main(capsys, "check", INSTRUCTOR, "--csv", tmp_path / "no" / "r.csv")
    assert code == 2 and out == "" and "does not exist" in err


# ----------------------------------------------------------------------------- lessons


def test_the_grader_finds_the_lesson_a_submission_came_from(tmp_path):
    """Lessons 01 and 03 share the exercise id lora-param-count (different functions)."""
    lessons = ROOT / "lessons"
    alice = classroom.student_notebook(nbformat.read(lessons / "03_finetune_with_lora.ipynb", 4))
    found = classroom.lesson_for(alice, "alice.ipynb", lessons)  # by the exercise's cell id
    assert found.path.name == "03_finetune_with_lora.ipynb"
    assert found.checks["lora-param-count"][0].function == "lora_param_count"
    first = [i for i, c in enumerate(alice.cells) if classroom._is_solution(c)][0]
    alice.cells[first].id = "renamed"
    found = classroom.lesson_for(alice, "01_what_is_lora.ipynb", lessons)  # by the file name
    assert found.path.name == "01_what_is_lora.ipynb"
    with pytest.raises(ClassroomError, match="are in several lessons .*name the file after"):
        classroom.lesson_for(alice, "alice.ipynb", lessons)


# ----------------------------------------------------------------------------- student


def test_student_into_a_workspace_needs_force_and_keeps_backups(capsys, tmp_path):
    ws = tmp_path / "ws"
    classroom.make_workspace(ws, LESSONS)
    mine = ws / "01_exercises.ipynb"
    nb = nbformat.read(mine, as_version=4)
    nb.cells[3].source = "def lora_count(d, k, r):\n    return 42  # my try"
    nbformat.write(nb, mine)
    code, out, err = run_main(capsys, "student", LESSONS, ws)
    assert code == 2 and out == ""
    assert f"{ws}: is a learner's workspace (it has .labkit-workspace)" in err
    assert "workspace --reset" in err and "--force" in err
    assert "my try" in mine.read_text()  # untouched
    with pytest.raises(ClassroomError, match="is a learner's workspace"):
        classroom.make_student(LESSONS, ws)
    code, out, err = run_main(capsys, "student", LESSONS, ws, "--force")
    assert code == 0, err
    backup = ws / classroom.BACKUPS / "01_exercises.1.ipynb"
    assert f"wrote {mine} (the learner's version moved to {backup})" in out
    assert "my try" in backup.read_text() and "my try" not in mine.read_text()
    assert "NotImplementedError" in mine.read_text()


@pytest.mark.parametrize("begin, end", [
    ("### Begin Solution", "### End Solution"),
    ("###   BEGIN    SOLUTION  ", "###END SOLUTION"),
    ("# begin solution", "# end solution"),
])
def test_solution_markers_match_whatever_their_case_and_spacing(begin, end):
    nb = nbformat.read(INSTRUCTOR, as_version=4)
    nb.cells[3].source = f"def lora_count(d, k, r):\n    {begin}\n    return r * (d + k)\n    {end}"
    out = classroom.student_notebook(nb, "n")
    assert "r * (d + k)" not in out.cells[3].source
    assert "    raise NotImplementedError(\"Exercise lora-count" in out.cells[3].source


@pytest.mark.parametrize("line", ["### BEGIN-SOLUTION", "## BEGIN SOLUTIONS", "#BEGINSOLUTION",
                                  "### END_SOLUTION"])
def test_near_miss_markers_are_errors_naming_cell_and_line(line, tmp_path):
    nb = nbformat.read(INSTRUCTOR, as_version=4)
    nb.cells[3].source = f"def lora_count(d, k, r):\n    {line}\n    return r * (d + k)"
    with pytest.raises(ClassroomError, match=(
            r"lessons/02_x.ipynb: cell 4 \(id ex-03\), exercise 'lora-count': line 2 "
            f"'{line}' looks like a solution marker but is not one; write it as")):
        classroom.student_notebook(nb, "lessons/02_x.ipynb")
    nbformat.write(nb, tmp_path / "01.ipynb")
    with pytest.raises(ClassroomError, match="looks like a solution marker"):
        classroom.make_student(tmp_path / "01.ipynb", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_solution_drops_markers_of_any_case(tmp_path):
    nb = nbformat.read(INSTRUCTOR, as_version=4)
    nb.cells[3].source = "def lora_count(d, k, r):\n    ### begin solution\n    return 1\n" \
                         "    ### End Solution"
    nbformat.write(nb, tmp_path / "01_exercises.ipynb")
    text = classroom.solution("01", "lora-count", tmp_path)
    assert text == "def lora_count(d, k, r):\n    return 1"


def test_a_model_config_crosses_the_wire_as_data_and_nothing_else_does():
    """Lesson 06's exercise takes a ModelConfig: it crosses as its fields and is rebuilt as
    labkit's own class; a subclass (which could carry rigged methods) does not."""
    import dataclasses

    from labkit.classroom import wire
    from labkit.configs import get_config

    cfg = get_config("tinyllama-1.1b")
    tensors: dict = {}
    back = wire.decode(wire.encode(cfg, tensors), tensors)
    assert back == cfg and type(back) is type(cfg)

    @dataclasses.dataclass(frozen=True)
    class Rigged(type(cfg)):
        def __eq__(self, other):
            return True

    rigged = Rigged(**cfg.to_dict())
    assert isinstance(wire.decode(wire.encode(rigged, tensors), tensors), wire.Opaque)
    with pytest.raises(wire.WireError, match="config"):
        wire.decode({"t": "config", "v": wire.encode({"hidden": 1}, tensors)}, tensors)
