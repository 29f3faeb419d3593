"""The shape every lesson shares: what the learner meets first, and what is kept for later.

DESIGN.md's lesson shape: the first cell says what the learner "will be able to" do, the
main path ends with a ``## Takeaways`` section before the quiz, and material for maintainers
and the very curious sits in a final ``## Going deeper`` section. The main path (every cell
before ``## Going deeper``, or every cell where there is none) never sends the learner to
the repository's test or benchmark files or to a ``.py`` path: it names modules
(``labkit.lora``), not files. Each check is first shown to fire on a bad notebook.
"""

import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tests.conftest import LESSONS

NOTEBOOKS = sorted(LESSONS.glob("*.ipynb"))
GOING_DEEPER = "## Going deeper"
TAKEAWAYS = "## Takeaways"
# A test or benchmark folder, or a Python file's path: maintainer material on the main path.
MAINTAINER_PATH = re.compile(r"\btests/|\bbenchmarks/|[\w/.-]*\w\.py\b")


def headings(cell) -> list[str]:
    """The markdown heading lines of a cell, stripped."""
    if cell.cell_type != "markdown":
        return []
    return [line.strip() for line in cell.source.splitlines() if line.startswith("#")]


def going_deeper_index(nb) -> int:
    """Index of the cell that opens ``## Going deeper``; ``len(nb.cells)`` if none does."""
    return next((i for i, c in enumerate(nb.cells) if GOING_DEEPER in headings(c)),
                len(nb.cells))


def shape_problems(nb) -> list[str]:
    """Every rule of the lesson shape that ``nb`` breaks, in words."""
    out = []
    cells = nb.cells
    first_md = next((c for c in cells if c.cell_type == "markdown"), None)
    if first_md is None or "You will be able to" not in first_md.source:
        out.append('the first markdown cell does not say what "You will be able to" do')
    deeper = going_deeper_index(nb)
    takeaways = [i for i, c in enumerate(cells) if TAKEAWAYS in headings(c)]
    if not takeaways:
        out.append(f"no '{TAKEAWAYS}' heading")
    elif takeaways[0] > deeper:
        out.append(f"'{TAKEAWAYS}' comes after '{GOING_DEEPER}'; it closes the main path")
    quiz = [i for i, c in enumerate(cells)
            if c.cell_type == "code" and "quiz.lesson_quiz(" in c.source]
    if quiz and takeaways and quiz[0] < takeaways[0]:
        out.append(f"the quiz (cell {quiz[0]}) comes before '{TAKEAWAYS}'")
    for i, c in enumerate(cells[:deeper]):
        for hit in sorted(set(MAINTAINER_PATH.findall(c.source))):
            out.append(f"cell {i} names {hit!r} before '{GOING_DEEPER}' (name the module, or "
                       f"move the pointer into '{GOING_DEEPER}')")
    return out


def _lesson(*cells):
    return new_notebook(cells=list(cells))


GOOD = [new_markdown_cell("# 99 · A lesson\n\nYou will be able to\n\n* count"),
        new_code_cell("from labkit import lora  # labkit.lora builds it"),
        new_markdown_cell("## Takeaways\n\n* one"),
        new_code_cell('quiz.lesson_quiz("99")'),
        new_markdown_cell("## Going deeper\n\nChecked in tests/test_lora.py."),
        new_code_cell("# see benchmarks/lora_vs_peft.py")]


@pytest.mark.parametrize("broken, expected", [
    (lambda c: c.__setitem__(0, new_markdown_cell("# 99 · A lesson")), "You will be able to"),
    (lambda c: c.__setitem__(2, new_markdown_cell("## What to remember")), "no '## Takeaways'"),
    (lambda c: c.insert(1, new_markdown_cell("Read labkit/lora/layers.py.")),
     "cell 1 names 'labkit/lora/layers.py'"),
    (lambda c: c.insert(1, new_code_cell("!python scripts/run_notebook.py x")),
     "'scripts/run_notebook.py'"),
    (lambda c: c.insert(2, new_markdown_cell("As tests/ check, ...")), "'tests/'"),
    (lambda c: c.pop(4), "'benchmarks/'"),  # without the heading, every cell is main path
    (lambda c: c.insert(1, c.pop(3)), "the quiz (cell 1) comes before"),
], ids=["no-objectives", "no-takeaways", "py-path", "script", "tests-dir", "no-heading",
        "quiz-first"])
def test_shape_check_fires(broken, expected):
    assert shape_problems(_lesson(*GOOD)) == []
    cells = list(GOOD)
    broken(cells)
    found = shape_problems(_lesson(*cells))
    assert any(expected in p for p in found), found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_lesson_has_the_course_shape(path):
    problems = shape_problems(nbformat.read(path, as_version=4))
    assert not problems, f"{path.name}:\n" + "\n".join(problems)
