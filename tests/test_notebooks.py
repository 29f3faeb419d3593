"""Notebook hygiene: what nbval cannot see.

nbval skips code cells that were never executed and does not care about execution order
or stored widget state, so a lesson could pass nbval and still show a reader stale or
missing output. These checks close that gap; each is first shown to fire on a bad notebook.
"""

import re
from pathlib import Path

import nbformat
import pytest
import tomllib
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parent.parent
# A decimal number of seconds or a tqdm rate: output that changes from run to run.
TIMING = re.compile(r"\b\d+\.\d+\s?(s|ms|sec|seconds)\b|it/s|s/it")
NOTEBOOKS = sorted((ROOT / "lessons").glob("*.ipynb"))


def problems(nb) -> list[str]:
    """Every rule of DESIGN.md's notebook section that this notebook breaks."""
    out = []
    if "widgets" in nb.metadata:
        out.append("stored widget state in metadata.widgets (re-run with scripts/run_notebook.py)")
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code, start=1):
        if cell.execution_count is None:
            out.append(f"code cell {i} was never executed")
        elif cell.execution_count != i:
            out.append(f"code cell {i} has execution count {cell.execution_count}, expected {i}")
        last = cell.source.rstrip().splitlines()[-1] if cell.source.strip() else ""
        if last.endswith(";") and not last.lstrip().startswith("#"):
            out.append(f"code cell {i} hides its output with a trailing ';' (assign to _ instead)")
        for o in cell.get("outputs", []):
            if o.output_type == "error":
                out.append(f"code cell {i} stored an error: {o.ename}")
            if (
                o.output_type == "stream"
                and "NBVAL_IGNORE_OUTPUT" not in cell.source
                and TIMING.search(o.text)
            ):
                out.append(
                    f"code cell {i} prints what looks like a wall-clock time: {o.text[:60]!r}"
                )
    return out


def _good_notebook():
    nb = new_notebook()
    nb.cells = [new_markdown_cell("# t"), new_code_cell("print(1)", execution_count=1)]
    nb.cells[1].outputs = [new_output("stream", name="stdout", text="1\n")]
    return nb


def test_lessons_exist():
    assert NOTEBOOKS, "lessons/ holds no notebooks"
    assert NOTEBOOKS[0].name == "00_welcome.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_lesson_is_stored_executed_and_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert problems(nb) == []


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda nb: nb.cells[1].update(execution_count=None), "never executed"),
        (lambda nb: nb.cells[1].update(execution_count=3), "expected 1"),
        (lambda nb: nb.metadata.update(widgets={"state": {}}), "widget state"),
        (lambda nb: nb.cells[1].update(source="plt.plot([1]);"), "trailing ';'"),
        (
            lambda nb: nb.cells[1].outputs.append(
                new_output("error", ename="ValueError", evalue="x", traceback=[])
            ),
            "stored an error",
        ),
        (
            lambda nb: nb.cells[1].outputs.append(
                new_output("stream", name="stdout", text="trained in 3.25 s\n")
            ),
            "wall-clock",
        ),
    ],
    ids=["unexecuted", "order", "widgets", "semicolon", "error", "timing"],
)
def test_hygiene_check_fires(breakage, expected):
    nb = _good_notebook()
    assert problems(nb) == []
    breakage(nb)
    found = problems(nb)
    assert len(found) == 1 and expected in found[0], found


def test_nbval_is_strict_with_timeout_and_sanitizer():
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    addopts = opts["addopts"].split()
    assert "--nbval" in addopts and "--nbval-lax" not in addopts
    assert "--nbval-current-env" in addopts
    assert any(a.startswith("--nbval-cell-timeout=") for a in addopts)
    sanitizer = next(a.split("=", 1)[1] for a in addopts if a.startswith("--nbval-sanitize-with"))
    assert (ROOT / sanitizer).is_file()
    assert "lessons" in opts["testpaths"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_lesson_ends_with_its_quiz(path):
    """The quiz is the main path's last code cell: the last before a final `## Going deeper`
    section (material for the curious, whose cells may still run), or the last of all."""
    nb = nbformat.read(path, as_version=4)
    deeper = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
                   and re.search(r"^## Going deeper\s*$", c.source, re.M)), len(nb.cells))
    last = [c for c in nb.cells[:deeper] if c.cell_type == "code"][-1]
    lesson = path.name[:2]
    assert f'quiz.lesson_quiz("{lesson}"' in last.source, f"{path.name} must end with its quiz"
    text = "".join(o.get("data", {}).get("text/plain", "") for o in last.outputs)
    assert text.startswith(f"Lesson {lesson} quiz"), "the quiz's text fallback is stored"
