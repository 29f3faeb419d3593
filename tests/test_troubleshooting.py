"""The troubleshooting index: every symptom links to a lesson heading that exists.

README.md's "Troubleshooting" table sends a learner from a symptom ("my adapter file is 443
bytes") to the lesson section that treats it, as a link ``lessons/NN_name.ipynb#anchor``.
JupyterLab, where ``make lab`` opens the course, gives every rendered heading the id of its
text with spaces replaced by "-" (``createHeaderId`` in JupyterLab's rendermime), and scrolls
to it when the link is followed. A renamed heading would leave the link pointing nowhere, so
each link's anchor must be the id of a heading in its notebook.
"""

import re
from urllib.parse import unquote

import nbformat
import pytest

from tests.conftest import LESSONS

ROOT = LESSONS.parent
DOCS = [ROOT / "README.md", ROOT / "INSTRUCTORS.md"]
LINK = re.compile(r"\]\((lessons/[\w.-]+\.ipynb)#([^)\s]+)\)")


def heading_id(line: str) -> str:
    """JupyterLab's id of a markdown heading line: its rendered text, spaces as "-"."""
    text = re.sub(r"^#+\s*", "", line.strip())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link renders as its text
    text = re.sub(r"(\*\*|__|`)", "", text)  # bold and code marks render as nothing
    return text.replace(" ", "-")


def heading_ids(nb) -> set[str]:
    return {heading_id(line) for c in nb.cells if c.cell_type == "markdown"
            for line in c.source.splitlines() if re.match(r"#{1,6} ", line)}


def broken_links(markdown: str) -> list[str]:
    """Every ``lessons/...ipynb#anchor`` link in ``markdown`` whose heading does not exist."""
    bad = []
    for path, anchor in LINK.findall(markdown):
        nb_path = ROOT / path
        if not nb_path.is_file():
            bad.append(f"{path}: no such lesson")
        elif unquote(anchor) not in heading_ids(nbformat.read(nb_path, as_version=4)):
            bad.append(f"{path}#{anchor}: no heading with that id")
    return bad


def test_heading_id_is_jupyterlabs():
    assert (heading_id('## "CUDA out of memory" on a 16 GB card')
            == '"CUDA-out-of-memory"-on-a-16-GB-card')
    assert heading_id("## 7 · Will it fit? The calculator") == "7-·-Will-it-fit?-The-calculator"
    assert heading_id("### `LoRALinear` in **ten** lines") == "LoRALinear-in-ten-lines"


def test_the_check_fires_on_a_renamed_heading_and_a_missing_lesson():
    good = "[x](lessons/12_failure_lab.ipynb#fp16-training-turns-to-NaN)"
    assert broken_links(good) == []
    assert broken_links(good.replace("NaN", "nan")) == [
        "lessons/12_failure_lab.ipynb#fp16-training-turns-to-nan: no heading with that id"]
    assert broken_links("[x](lessons/99_none.ipynb#a)") == ["lessons/99_none.ipynb: no such lesson"]


def test_readme_has_a_troubleshooting_index_covering_every_failure_lab_problem():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    linked = {unquote(a) for p, a in LINK.findall(section) if p.endswith("12_failure_lab.ipynb")}
    lab = nbformat.read(LESSONS / "12_failure_lab.ipynb", as_version=4)
    problems = {heading_id(line) for c in lab.cells if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("## ")}
    problems -= {"Takeaways", "Quiz", "Going-deeper"}
    assert problems and problems <= linked, sorted(problems - linked)


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_linked_heading_exists(doc):
    text = doc.read_text(encoding="utf-8")
    assert not broken_links(text), broken_links(text)
