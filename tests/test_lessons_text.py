"""The lessons' prose: artefacts a text edit can leave behind, which nbval never sees.

nbval compares code outputs only. A scripted edit of a markdown cell once left the bare
path "lessons/05_qlora.ipynb" in the middle of a sentence, where a quoted result belonged.
A notebook path in prose belongs in a link (``[lesson 05](05_qlora.ipynb)``) or in inline
code; anywhere else it is such a leftover.
"""

import re

import nbformat
import pytest

from tests.conftest import LESSONS

NOTEBOOKS = sorted(LESSONS.glob("*.ipynb"))
# A markdown link or image, and inline code: the places where a path may stand.
ALLOWED = re.compile(r"!?\[[^\]]*\]\([^)]*\)|`[^`]*`")
NOTEBOOK_PATH = re.compile(r"(?:[\w./-]*/)?\b\d\d_\w+\.ipynb\b")


def stray_paths(markdown: str) -> list[str]:
    """Notebook paths in ``markdown`` that stand outside a link or inline code."""
    return NOTEBOOK_PATH.findall(ALLOWED.sub(" ", markdown))


@pytest.mark.parametrize(
    "text, found",
    [
        ("3 seeds (same settings): lessons/05_qlora.ipynb That is", ["lessons/05_qlora.ipynb"]),
        ("see 04_quantization.ipynb.", ["04_quantization.ipynb"]),
        ("see [lesson 04](04_quantization.ipynb) and `lessons/05_qlora.ipynb`", []),
        ("![fig](docs/06_memory.ipynb)", []),
        ("the file lessons.ipynb and 2 x 64 bytes", []),
    ],
    ids=["artefact", "bare", "link-and-code", "image", "no-path"],
)
def test_stray_path_check_fires_only_outside_links_and_code(text, found):
    assert stray_paths(text) == found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_stray_notebook_path_in_lesson_prose(path):
    nb = nbformat.read(path, as_version=4)
    bad = {i: stray_paths(c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"}
    assert not {i: p for i, p in bad.items() if p}, (
        f"{path.name}: notebook paths outside a link or inline code (cell index: paths)"
    )


def deprecation_warnings(nb) -> list[tuple[int, str]]:
    """(cell index, line) of every deprecation warning a stored output shows."""
    return [(i, line) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for out in c.get("outputs", []) if out.get("output_type") == "stream"
            for line in out.get("text", "").splitlines() if "DeprecationWarning" in line]


def test_deprecation_check_sees_a_stored_warning():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from labkit.adapters import save_adapter", outputs=[nbformat.v4.new_output(
            "stream", name="stderr", text="x.py:1: LabkitDeprecationWarning: use labkit.lora\n")])])
    assert deprecation_warnings(nb) == [(0, "x.py:1: LabkitDeprecationWarning: use labkit.lora")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_lessons_call_no_deprecated_name(path):
    """Lessons use labkit's current names: a renamed name still works (learners' workspace
    copies are never rewritten) but warns, and a lesson must not show that warning."""
    assert not deprecation_warnings(nbformat.read(path, as_version=4)), path.name
