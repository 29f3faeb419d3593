"""The classroom kit: student versions, `check` on submissions, the learner's workspace.

Fixtures live in tests/fixtures/classroom (rebuilt by its build.py): a two-exercise
instructor notebook, a lesson without exercises, an unbalanced one and one that hangs.
Notebook executions start a kernel each (a few seconds), so they are batched. The sandbox,
the fakes `check` must not fall for, and the markers' near-misses are tested in
test_classroom_reliability.py.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import tomllib
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from labkit import checks, classroom
from labkit.classroom import BEGIN, END, ClassroomError

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "classroom"
INSTRUCTOR = FIX / "lessons" / "01_exercises.ipynb"
LESSONS_WITH_EXERCISES = [
    p for p in sorted((ROOT / "lessons").glob("*.ipynb"))
    if classroom.exercises(nbformat.read(p, as_version=4), p.name)
]


def cli(*args, cwd=ROOT, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labkit.classroom", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=timeout,
    )


def run_main(capsys, *args) -> tuple[int, str, str]:
    """The same command line, in this process (a subprocess costs seconds on 2 cores)."""
    code = classroom.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def read(path):
    return nbformat.read(path, as_version=4)


# ----------------------------------------------------------------------------- light import


def test_classroom_imports_without_torch():
    r = subprocess.run(
        [sys.executable, "-c",
         "import sys, labkit.classroom; print('torch' in sys.modules)"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


# ----------------------------------------------------------------------------- student


def test_student_version_replaces_solutions_and_keeps_the_rest(tmp_path):
    written = classroom.make_student(FIX / "lessons", tmp_path)
    assert sorted(p.name for p in written) == ["00_intro.ipynb", "01_exercises.ipynb"]
    teacher, student = read(INSTRUCTOR), read(tmp_path / "01_exercises.ipynb")
    assert [c.id for c in teacher.cells] == [c.id for c in student.cells]
    for t, s in zip(teacher.cells, student.cells, strict=True):
        assert t.metadata == s.metadata  # nbgrader metadata kept as it is
        if s.cell_type == "code":
            assert s.outputs == [] and s.execution_count is None
        if classroom._is_solution(t):
            assert BEGIN not in s.source and END not in s.source
            assert "return r * (d + k)" not in s.source and "moments * bytes_each" not in s.source
            grade_id = t.metadata["nbgrader"]["grade_id"]
            assert f'raise NotImplementedError("Exercise {grade_id}:' in s.source
            assert "see the hint above" in s.source
            # the function header and docstring, outside the markers, stay
            assert s.source.splitlines()[:2] == t.source.splitlines()[:2]
            # the stub keeps the solution's indentation
            assert "\n    raise NotImplementedError" in s.source
        else:
            assert s.source == t.source


def test_student_version_of_an_executed_notebook_drops_outputs_and_widget_state(tmp_path):
    nb = read(INSTRUCTOR)
    nb.metadata["widgets"] = {"state": {}}
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="x\n")]
    nb.cells[1].execution_count = 1
    out = classroom.student_notebook(nb)
    assert "widgets" not in out.metadata
    assert out.cells[1].outputs == [] and out.cells[1].execution_count is None
    assert nb.cells[1].outputs  # the input is not modified


@pytest.mark.parametrize(
    "source, message",
    [
        (f"x = 1\n{BEGIN}\ny = 2\n", "at line 2 is never closed"),
        (f"x = 1\n{END}\n", "has no '### BEGIN SOLUTION' before it"),
        (f"{BEGIN}\n{BEGIN}\n{END}\n", "opens a second solution"),
    ],
    ids=["no-end", "no-begin", "nested"],
)
def test_unbalanced_markers_name_notebook_cell_and_line(source, message):
    nb = read(INSTRUCTOR)
    nb.cells[3].source = source
    with pytest.raises(ClassroomError, match=message) as info:
        classroom.student_notebook(nb, "lessons/02_x.ipynb")
    assert "lessons/02_x.ipynb: cell 4 (id ex-03), exercise 'lora-count'" in str(info.value)


def test_markers_without_metadata_and_metadata_without_markers_are_errors():
    nb = read(INSTRUCTOR)
    nb.cells[4].source = f"{BEGIN}\nx = 1\n{END}"
    with pytest.raises(ClassroomError, match="cell 5 .* has solution markers but no nbgrader"):
        classroom.student_notebook(nb, "n")
    nb = read(INSTRUCTOR)
    nb.cells[3].source = "def lora_count(d, k, r):\n    return 0"
    with pytest.raises(ClassroomError, match="has no '### BEGIN SOLUTION' / '### END SOLUTION'"):
        classroom.student_notebook(nb, "n")
    nb = read(INSTRUCTOR)
    nb.cells[6].metadata["nbgrader"]["grade_id"] = "lora-count"
    with pytest.raises(ClassroomError, match="'lora-count' is used twice"):
        classroom.exercises(nb, "n")


def test_student_cli_errors_write_nothing(tmp_path, capsys):
    code, _, err = run_main(capsys, "student", FIX / "bad", tmp_path / "out")
    assert code == 2
    assert "unbalanced.ipynb: cell 2 (id bad-01), exercise 'open-ended'" in err
    assert "never closed" in err and not (tmp_path / "out").exists()
    code, _, err = run_main(capsys, "student", FIX / "lessons", FIX / "lessons")
    assert code == 2 and "would replace the solutions" in err
    code, _, err = run_main(capsys, "student", tmp_path / "missing", tmp_path / "out")
    assert code == 2 and "no such notebook or folder" in err
    code, out, _ = run_main(capsys, "student", FIX / "lessons", tmp_path / "ok")
    assert code == 0 and out.count("wrote ") == 2


def _run_until_error(path: Path):
    nb = read(path)
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    with pytest.raises(CellExecutionError) as info:
        client.execute(stderr=subprocess.DEVNULL)
    failed = next(i for i, c in enumerate(nb.cells)
                  if any(o.get("output_type") == "error" for o in c.get("outputs", [])))
    return nb, failed, info.value


@pytest.mark.parametrize(
    "lesson",
    [INSTRUCTOR] + LESSONS_WITH_EXERCISES,
    ids=lambda p: p.name,
)
def test_student_lesson_runs_up_to_its_first_exercise_and_stops_there(lesson, tmp_path):
    first = classroom.exercises(read(lesson), lesson.name)[0]
    path = classroom.make_student(lesson, tmp_path)[0]
    nb, failed, err = _run_until_error(path)
    assert err.ename == "NotImplementedError"
    assert f"Exercise {first.grade_id}" in err.evalue
    # it fails at the exercise or at the check right after it, never before
    later = [e.index for e in classroom.exercises(nb, path.name)[1:]] + [len(nb.cells)]
    assert first.index <= failed < later[0]
    assert all(c.execution_count for c in nb.cells[:failed] if c.cell_type == "code")


# ----------------------------------------------------------------------------- check


@pytest.mark.parametrize("lesson", LESSONS_WITH_EXERCISES, ids=lambda p: p.name)
def test_instructor_lesson_stored_outputs_pass_every_check(lesson):
    """nbval proves the stored outputs current; here every exercise's checks printed PASS,
    and `check` finds the call it repeats in the grader (the function the exercise defines)."""
    nb = read(lesson)
    exs = classroom.exercises(nb, lesson.name)
    calls = classroom.exercise_checks(lesson).checks
    assert list(calls) == [e.grade_id for e in exs]
    for j, ex in enumerate(exs):
        stop = exs[j + 1].index if j + 1 < len(exs) else len(nb.cells)
        text = "".join(o.get("text", "") for c in nb.cells[ex.index:stop]
                       if c.cell_type == "code" for o in c.outputs)
        printed = checks.parse_check_lines(text)
        assert printed and all(r.passed for r in printed), (ex.grade_id, text)
        assert all(f"def {c.function}(" in ex.source for c in calls[ex.grade_id])


def _submission(tmp_path) -> Path:
    """The student version with exercise 1 solved and exercise 2 wrong (one moment)."""
    out = classroom.make_student(INSTRUCTOR, tmp_path / "student")[0]
    nb = read(out)
    ex1, ex2 = classroom.exercises(nb)
    nb.cells[ex1.index].source = "def lora_count(d, k, r):\n    return r * d + r * k"
    nb.cells[ex2.index].source = "def adamw_bytes(n_params):\n    return 4 * n_params"
    path = tmp_path / "alice.ipynb"
    nbformat.write(nb, path)
    return path


def test_check_reports_each_exercise_and_goes_on_after_bad_notebooks(tmp_path):
    sub = _submission(tmp_path)
    hang = FIX / "bad" / "hangs.ipynb"
    missing = tmp_path / "nobody.ipynb"
    csv_path = tmp_path / "report.csv"
    # 5 s per cell: the fixtures' cells are plain arithmetic (their checks do not import torch)
    r = cli("check", missing, hang, sub, INSTRUCTOR, "--timeout", "5", "--csv", csv_path,
            "--lessons", FIX / "lessons")
    assert r.returncode == 1, r.stderr
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    got = [(Path(x["notebook"]).name, x["exercise"], x["result"]) for x in rows]
    assert got == [
        ("nobody.ipynb", "-", "ERROR"),
        ("hangs.ipynb", "-", "ERROR"),
        ("hangs.ipynb", "lora-count", "ERROR"),
        ("hangs.ipynb", "adamw-bytes", "FAIL"),  # not in the notebook: the lesson has it
        ("alice.ipynb", "lora-count", "PASS"),
        ("alice.ipynb", "adamw-bytes", "FAIL"),
        ("01_exercises.ipynb", "lora-count", "PASS"),  # the instructor version passes
        ("01_exercises.ipynb", "adamw-bytes", "PASS"),
    ]
    feedback = [x["feedback"] for x in rows]
    assert feedback[0] == "no such notebook"
    assert "cell 2 ran longer than the 5 s timeout" in feedback[1]
    assert "not run: the notebook stopped at cell 2" in feedback[2]
    assert "has no exercise 'adamw-bytes'" in feedback[3]
    assert "keeps two moments, m and v" in feedback[5]  # the check's specific feedback
    # the text table shows the same rows and a summary
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["notebook", "exercise", "result", "feedback"]
    assert any("alice.ipynb" in ln and "adamw-bytes" in ln and "FAIL" in ln for ln in lines)
    assert "3 passed, 2 failed, 3 errors" in r.stdout


def test_check_of_nothing_runnable_fails_with_csv_on_stdout(tmp_path, capsys):
    code, out, _ = run_main(capsys, "check", tmp_path / "none.ipynb", "--csv", "-")
    assert code == 1 and "no such notebook" in out
    assert "notebook,exercise,result,feedback" in out


def test_check_without_exercises_or_without_a_matching_lesson(tmp_path):
    """Both are ERROR rows found before any kernel starts."""
    (row,) = classroom.check_notebooks([FIX / "lessons" / "00_intro.ipynb"],
                                       lessons=FIX / "lessons")
    assert row.result == "ERROR" and "no exercises" in row.feedback
    shutil.copy(FIX / "lessons" / "00_intro.ipynb", tmp_path)
    (row,) = classroom.check_notebooks([INSTRUCTOR], lessons=tmp_path)
    assert row.result == "ERROR" and "no lesson in" in row.feedback
    assert "pass --lessons" in row.feedback


# ----------------------------------------------------------------------------- workspace


def test_workspace_create_keep_reset_and_solution(tmp_path, capsys):
    ws, lessons = tmp_path / "workspace", tmp_path / "lessons"
    shutil.copytree(FIX / "lessons", lessons)

    def ws_cli(*args):
        return run_main(capsys, "workspace", "--dir", ws, "--lessons", lessons, *args)

    code, out, err = ws_cli()
    assert code == 0, err
    assert "created" in out and (ws / classroom.MARKER).is_file()
    nb = read(ws / "01_exercises.ipynb")
    assert "NotImplementedError" in nb.cells[3].source  # the student version

    # the learner's edits survive a second run (make lab again), new lessons are added
    nb.cells[3].source = "def lora_count(d, k, r):\n    return 42  # my try"
    nbformat.write(nb, ws / "01_exercises.ipynb")
    shutil.copy(lessons / "00_intro.ipynb", lessons / "02_new.ipynb")
    code, out, err = ws_cli()
    assert code == 0 and "02_new.ipynb" in out and "kept 2 lessons" in out
    assert "my try" in read(ws / "01_exercises.ipynb").cells[3].source

    # reset one lesson: fresh student version, the learner's file kept as a backup
    code, out, err = ws_cli("--reset", "1")
    assert code == 0, err
    assert "NotImplementedError" in read(ws / "01_exercises.ipynb").cells[3].source
    backup = ws / classroom.BACKUPS / "01_exercises.1.ipynb"
    assert "my try" in read(backup).cells[3].source and str(backup) in out
    # reset all
    code, out, err = ws_cli("--reset")
    assert code == 0 and out.count("reset ") == 3
    assert (ws / classroom.BACKUPS / "01_exercises.2.ipynb").is_file()

    # show a solution: the instructor's code without the markers
    code, out, err = ws_cli("--solution", "01", "adamw-bytes")
    assert code == 0, err
    assert "return moments * bytes_each * n_params" in out and BEGIN not in out


def test_workspace_errors(tmp_path, capsys):
    lessons = FIX / "lessons"

    def ws_cli(*args):
        return run_main(capsys, "workspace", "--lessons", lessons, *args)

    code, out, err = ws_cli("--solution", "07", "x")
    assert code == 2 and "no lesson '07'; lessons: 00_intro, 01_exercises" in err
    code, out, err = ws_cli("--solution", "1", "nope")
    assert code == 2
    assert "has no exercise 'nope'; its exercises: lora-count, adamw-bytes" in err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("x")
    code, out, err = ws_cli("--dir", other)
    assert code == 2 and "is not a labkit workspace" in err
    code, out, err = ws_cli("--dir", tmp_path / "none", "--reset")
    assert code == 2 and "no workspace here yet" in err
    code, out, err = ws_cli("--dir", lessons)
    assert code == 2 and "is the lessons folder itself" in err
    code, out, err = run_main(
        capsys, "workspace", "--dir", tmp_path / "w", "--lessons", tmp_path / "nolessons"
    )
    assert code == 2 and "the lessons folder is missing" in err


def test_make_lab_opens_the_workspace_and_tests_never_touch_it():
    """`make lab` creates the workspace first; the test suite's paths exclude it."""
    dry = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert "labkit.classroom workspace --dir workspace" in dry.stdout
    assert "--ServerApp.root_dir=workspace" in dry.stdout
    dry = subprocess.run(["make", "-n", "lab", "COURSE_DIR=/elsewhere"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert "root_dir=/elsewhere" in dry.stdout
    assert "if [ \"/elsewhere\" = \"workspace\" ]" in dry.stdout  # creation is skipped
    # nbval runs over testpaths; the workspace is neither there nor under one of them
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    ws = classroom.WORKSPACE_DIR.resolve()
    for tp in opts["testpaths"]:
        tp = (ROOT / tp).resolve()
        assert tp != ws and tp not in ws.parents, tp
    assert "workspace/" in (ROOT / ".gitignore").read_text().splitlines()
    assert classroom.WORKSPACE_DIR == ROOT / "workspace"


# ----------------------------------------------------------------------------- nbgrader


def test_nbgrader_generates_the_same_student_version(tmp_path):
    """nbgrader takes the exercise cells as they are; its release equals ours but the stub."""
    pytest.importorskip("nbgrader")  # pinned in the test environment (Python 3.11+)
    course = tmp_path / "course"
    (course / "source" / "lab").mkdir(parents=True)
    shutil.copy(INSTRUCTOR, course / "source" / "lab")
    config = 'c = get_config()\nc.CourseDirectory.course_id = "lab"\n'
    (course / "nbgrader_config.py").write_text(config)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(
        [sys.executable, "-m", "nbgrader", "generate_assignment", "lab", "--force"],
        cwd=course, capture_output=True, text=True, timeout=300, env=env,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    theirs = read(course / "release" / "lab" / INSTRUCTOR.name)
    ours = classroom.student_notebook(read(INSTRUCTOR))

    def normal(src: str) -> str:  # the stubs differ only in the exception's message
        return "\n".join("raise NotImplementedError" if "raise NotImplementedError" in ln
                         else ln for ln in src.splitlines())

    assert [normal(c.source) for c in theirs.cells] == [normal(c.source) for c in ours.cells]
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in theirs.cells]
    assert [i for i in ids if i] == ["lora-count", "adamw-bytes"]
