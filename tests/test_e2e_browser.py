"""The course as a learner meets it: JupyterLab in a real (headless) Chromium.

nbval proves that a lesson's outputs are right; it cannot see what the browser shows. These
tests start JupyterLab with the README's run command (`make lab`) on a temporary copy of the
lessons, open notebooks in Chromium, run all cells from the Run menu, and check what is on the
page: no cell errors, no "Error displaying widget", no console errors beyond ``ALLOWED_CONSOLE``,
images that load, and a quiz that works (a wrong option shows its feedback, Hint shows the
hint, the right option scores, and the progress file records the attempts).

The checks are plain functions that return a list of problems, so the tests can show that they
catch a broken widget and a broken quiz (fixtures under tests/fixtures/). Screenshots go to
``test-output/e2e/``. Without Chromium the tests are skipped with the install line, except
with ``CI=true``, where a missing browser fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from lab_server import LabServer, start_lab

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHOTS = ROOT / "test-output" / "e2e"

CHROMIUM_INSTALL = "apt-get update && apt-get install -y chromium"
# Flags for a closed network: without the background-networking ones Chromium keeps trying to
# reach Google, and the refused connections pile up.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Console errors that are not the course's fault, each with its reason. Keep it short.
ALLOWED_CONSOLE: tuple[tuple[str, str], ...] = ()
#: JupyterLab settings for the test server: no news or update checks (there is no network),
#: and every cell kept in the DOM (with the default windowing, cells far below the viewport
#: may not be rendered, so their outputs could not be checked).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
}
LESSON_IDS = ("00", "02", "08")
RUN_TIMEOUT_S = 240  # Run All on a busy 2-core machine; lessons take <= 60 s under nbval
QUIZ_TIMEOUT_S = 30  # a Check / Hint round trip to the kernel


# ----------------------------------------------------------------------------- fixtures


def _missing(msg: str):
    """Skip with ``msg``; under CI=true a missing piece fails instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{msg} (CI=true: the browser tests must run)")
    pytest.skip(msg)


def chromium_path() -> str:
    """Chromium's executable ($LABKIT_CHROMIUM, else chromium on PATH), or skip with the line
    that installs it."""
    exe = os.environ.get("LABKIT_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None
    )
    if exe and Path(exe).exists():
        return exe
    _missing(f"Chromium not found; install it with: {CHROMIUM_INSTALL}")


def committed_files() -> dict[Path, bytes]:
    """The committed lessons and fixtures (all of them where git is not there)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "lessons", "tests/fixtures"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        paths = sorted(ROOT / f for f in out.split("\0") if f.endswith(".ipynb"))
    except (OSError, subprocess.SubprocessError):
        paths = sorted([*LESSONS.glob("*.ipynb"), *FIXTURES.glob("e2e_*.ipynb")])
    return {p: p.read_bytes() for p in paths if p.exists()}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`make lab` serving a copy of the lessons plus the fixture notebooks."""
    chromium_path()  # skip before starting a server that nothing would use
    before = committed_files()
    tmp = tmp_path_factory.mktemp("e2e")
    course = tmp / "course"
    shutil.copytree(LESSONS, course)
    for name in FIXTURE_NOTEBOOKS:
        shutil.copy(FIXTURES / name, course / name)
    state = tmp / "state"
    server = start_lab(course, state, user_settings=LAB_SETTINGS)
    try:
        yield server
    finally:
        server.stop()
    # autosave or a stray save must never reach the committed notebooks
    after = committed_files()
    changed = [str(f.relative_to(ROOT)) for f, data in before.items() if after.get(f) != data]
    assert not changed, f"the browser tests changed committed files: {changed}"


@pytest.fixture(scope="module")
def browser(lab):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright (the test extra) is not installed; run `make setup`")
    with sync_playwright() as pw:
        # Playwright adds --headless and a fresh temporary --user-data-dir itself.
        b = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """One browser tab on one notebook, with every console error and page error it logged."""

    def __init__(self, browser, lab: LabServer, notebook: str):
        self.lab, self.notebook = lab, notebook
        self.context = browser.new_context(viewport={"width": 1280, "height": 860})
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.page.on(
            "console", lambda m: self.console.append(m.text) if m.type == "error" else None
        )
        self.page.on("pageerror", lambda e: self.console.append(f"uncaught: {e}"))

    @property
    def slug(self) -> str:
        return re.sub(r"\W", "-", self.notebook)

    @property
    def panel(self):
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")

    def goto(self) -> None:
        """Open the notebook in a JupyterLab workspace of its own (no other tabs restored)."""
        lab = self.lab
        self.page.goto(
            f"{lab.url}/lab/workspaces/{self.slug}/tree/{self.notebook}?token={lab.token}"
        )


FIXTURE_NOTEBOOKS = (
    "e2e_plot_quiz_widget.ipynb",
    "e2e_broken_widget.ipynb",
    "e2e_broken_quiz.ipynb",
)


def _lesson_notebook(lesson: str) -> str | None:
    found = sorted(LESSONS.glob(f"{lesson}_*.ipynb"))
    return found[0].name if found else None


@pytest.fixture(scope="module")
def pages(browser, lab):
    """Every notebook of this module, opened and started (Run All) at once, each in its own
    window: while one lesson computes, the others load, so the module takes about as long as
    its slowest notebook rather than the sum. Tests get their page with :func:`finished`."""
    names = [n for n in map(_lesson_notebook, LESSON_IDS) if n] + list(FIXTURE_NOTEBOOKS)
    opened = {name: Page(browser, lab, name) for name in names}
    try:
        for p in opened.values():
            p.goto()
        for p in opened.values():
            start_run(p)
        yield opened
    finally:
        for p in opened.values():
            p.context.close()  # the kernels stop with the server, all at once


def finished(pages: dict, notebook: str) -> Page:
    """The notebook's page once its Run All has finished."""
    p = pages[notebook]
    wait_until_run(p)
    return p


# ------------------------------------------------------------------------ driving the page


def menu(page, top: str, entry: str) -> None:
    """Click a menu bar entry, e.g. Run > Run All Cells, as a learner would."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{re.escape(top)}$")).click()
    page.locator(
        ".lm-Menu:not(.lm-mod-hidden) .lm-Menu-itemLabel",
        has_text=re.compile(f"^{re.escape(entry)}$"),
    ).first.click()


_NO_OUTPUTS = """
() => !document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output')
"""
_KERNEL_IDLE = """
() => [...document.querySelectorAll('.jp-StatusBar-Item')]
  .some(w => /\\|\\s*Idle\\s*$/.test(w.textContent.trim()))
"""
_ALL_RUN = """
() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return false;
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
      .map(p => p.textContent.trim());
  if (prompts.some(p => p.includes('*'))) return false;
  const idle = document.querySelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]');
  const failed = panel.querySelector('[data-mime-type="application/vnd.jupyter.error"]');
  return !!idle && (!!failed || prompts.every(p => /^\\[\\d+\\]:$/.test(p)));
}
"""


def start_run(p: Page) -> None:
    """Once the kernel is connected, clear all outputs, then Run > Run All Cells.

    Clearing first means that what is checked afterwards is what this run produced, not the
    stored outputs.
    """
    page = p.page
    p.panel.locator(".jp-Cell").first.wait_for(timeout=120_000)
    # The status bar says "Python 3 (ipykernel) | Idle" once the kernel is connected; Run All
    # clicked before that (while it says Connecting or Initializing) runs nothing.
    page.wait_for_function(_KERNEL_IDLE, timeout=120_000, polling=250)
    menu(page, "Edit", "Clear Outputs of All Cells")
    page.wait_for_function(_NO_OUTPUTS, timeout=30_000)
    menu(page, "Run", "Run All Cells")


def wait_until_run(p: Page) -> None:
    """Wait until Run All is done: no cell waits or runs, the kernel is idle, and every code
    cell has an execution count (or one raised, which stops Run All)."""
    page = p.page
    try:
        page.wait_for_function(_ALL_RUN, timeout=RUN_TIMEOUT_S * 1000, polling=250)
    except Exception as exc:  # playwright's TimeoutError: say where it stopped
        shot = screenshot(p, f"timeout_{p.slug}.png")
        prompts = page.evaluate(_PROMPTS)
        raise AssertionError(
            f"{p.notebook}: Run All did not finish in {RUN_TIMEOUT_S} s; prompts {prompts}, "
            f"kernel {page.evaluate(_KERNEL)!r}; screenshot {shot}; outputs "
            f"{[(o['cell'], o['mime'], o['text'][:200]) for o in page_outputs(p)]}\n"
            f"JupyterLab log:\n{p.lab.log_tail()}"
        ) from exc


_PROMPTS = """() => [...document.querySelectorAll(
  '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')].map(p => p.textContent)"""
_KERNEL = """() => (document.querySelector('.jp-Notebook-ExecutionIndicator') || {dataset: {}})
  .dataset.status"""


# --------------------------------------------------------------------------- the checks


_OUTPUTS = """
() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const cells = [...panel.querySelectorAll('.jp-Cell')];
  const out = [];
  cells.forEach((cell, i) => {
    cell.querySelectorAll('.jp-OutputArea-output').forEach(o => {
      const imgs = [...o.querySelectorAll('img')].map(im => {
        const r = im.getBoundingClientRect();
        return {loaded: im.complete && im.naturalWidth > 0, w: r.width, h: r.height};
      });
      out.push({cell: i + 1, mime: o.getAttribute('data-mime-type') || '',
                text: o.textContent, imgs: imgs,
                widget: !!o.querySelector('.jupyter-widgets'),
                broken: !!o.querySelector('.jupyter-widgets-error-widget')});
    });
  });
  return out;
}
"""


def page_outputs(p: Page) -> list[dict]:
    """Every output on the page: cell number (1-based, counting all cells), MIME type (none
    for a widget), text, images, whether it holds a widget and whether that widget broke."""
    return p.page.evaluate(_OUTPUTS)


def wait_for_widgets(p: Page, timeout_s: float = 30) -> None:
    """Wait (up to ``timeout_s``) until no widget output still says "Loading widget..."."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any("Loading widget" in o["text"] for o in page_outputs(p)):
            return
        p.page.wait_for_timeout(200)


def output_problems(p: Page) -> list[str]:
    """Cell errors, widgets that failed or never rendered, images that did not load."""
    wait_for_widgets(p)
    problems = []
    for o in page_outputs(p):
        text = " ".join(o["text"].split())
        where = f"{p.notebook} cell {o['cell']}"
        if o["mime"] == "application/vnd.jupyter.error":
            problems.append(f"{where}: error output: {text[-300:]}")
        if "Error displaying widget" in text:
            problems.append(f"{where}: {text[:200]}")
        elif o["broken"]:
            problems.append(
                f"{where}: a widget failed to load and shows the broken-widget icon "
                f"({text[:80]!r}; the console has the error)"
            )
        elif "Loading widget" in text:
            problems.append(f"{where}: widget never rendered (still 'Loading widget...')")
        for img in o["imgs"]:
            if not img["loaded"]:
                problems.append(f"{where}: an image did not load")
    return problems


def only_kernel_list_race(server_log: str) -> bool:
    """Whether every HTTP 500 in a Jupyter server log is jupyter_server's known race: a
    ``GET /api/kernels`` while a kernel is still starting fails on its unset
    ``last_activity`` trait, and the page's next poll succeeds (seen in CI on 2026-11-28)."""
    failed = re.findall(r"\] 500 (\w+ \S+)", server_log)
    return (bool(failed) and all(f.startswith("GET /api/kernels") for f in failed)
            and "'last_activity' trait" in server_log)


def console_problems(p: Page, server_log: str | None = None) -> list[str]:
    """Console errors and uncaught exceptions on the page, minus ``ALLOWED_CONSOLE``; with
    ``server_log``, minus failed loads whose 500s are all :func:`only_kernel_list_race`."""
    race = server_log is not None and only_kernel_list_race(server_log)
    return [
        f"{p.notebook}: console error: {msg[:300]}"
        for msg in p.console
        if not any(re.search(pattern, msg) for pattern, _why in ALLOWED_CONSOLE)
        and not (race and "status of 500 (Internal Server Error)" in msg)
    ]


def visible_plots(p: Page) -> int:
    """How many loaded, visibly sized images the outputs show (a matplotlib figure is one)."""
    return sum(
        1
        for o in page_outputs(p)
        for img in o["imgs"]
        if img["loaded"] and img["w"] > 50 and img["h"] > 50
    )


def _norm(text: str | None) -> str:
    return " ".join((text or "").split())


def _wait_text(locator, want: str, timeout_s: float) -> str | None:
    """Wait until ``locator``'s text (whitespace collapsed) contains ``want``; None if it did,
    else the text it had when time ran out."""
    deadline = time.monotonic() + timeout_s
    while True:
        have = _norm(locator.text_content())
        if want in have:
            return None
        if time.monotonic() > deadline:
            return have
        locator.page.wait_for_timeout(100)


def _attempts(path: Path, item_id: str) -> list[dict]:
    if not path.exists():
        return []
    return [a for a in json.loads(path.read_text())["attempts"] if a["id"] == item_id]


def _choice_item(p: Page, bank):
    """The last quiz on the page, stepped (Next) to an item with options and a Hint button.

    Returns (item locator, quiz root locator, bank Item), or None if there is no such item.
    """
    # quiz sessions and lone items (not those inside a session), in page order
    found = p.panel.locator(".labkit-quiz-session, .labkit-quiz-item")
    roots = [
        r
        for r in (found.nth(i) for i in range(found.count()))
        if r.evaluate("e => !e.parentElement.closest('.labkit-quiz-session')")
    ]
    for root in reversed(roots):
        is_session = "labkit-quiz-session" in (root.get_attribute("class") or "")
        steps = 20 if is_session else 1
        for _ in range(steps):
            item = root if not is_session else root.locator(".labkit-quiz-item")
            prompt = _norm(item.locator(".labkit-quiz-prompt b").first.text_content())
            found = [it for it in bank.items if _norm(it.prompt) == prompt and it.choices]
            has_hint = item.locator(".labkit-quiz-hint-button").count() > 0
            if found and has_hint:
                return item, root, found[0]
            if not is_session:
                break
            pos = _norm(root.locator(".labkit-quiz-position").text_content())
            m = re.match(r"Question (\d+) of (\d+)", pos)
            if not m or m.group(1) == m.group(2):
                break
            root.locator(".labkit-quiz-next").click()
            if _wait_text(root, f"Question {int(m.group(1)) + 1} of", QUIZ_TIMEOUT_S):
                break
    return None


def quiz_problems(
    p: Page, progress: Path, *, timeout_s: float = QUIZ_TIMEOUT_S, shot: Path | None = None
) -> list[str]:
    """Answer the last quiz on the page as a learner (its first item with options and a Hint
    button): a wrong option, Hint, the right option. Each must show what the bank says, and
    the progress file must record the wrong and the right attempt.
    """
    from labkit import quiz

    bank = quiz.load_bank()
    found = _choice_item(p, bank)
    if found is None:
        return [f"{p.notebook}: no quiz item with options and a Hint button on the page"]
    view, root, item = found
    options = item.options()
    wrong = next(c for c in options if c.text != item.answer)
    before = len(_attempts(progress, item.id))
    problems = []
    feedback = view.locator(".labkit-quiz-feedback")

    def choose(text: str) -> None:
        view.locator(".labkit-quiz-choices label").filter(
            has_text=re.compile(f"^\\s*{re.escape(text)}\\s*$")
        ).click()
        view.locator(".labkit-quiz-check").click()

    choose(wrong.text)
    want = _norm(f"Not quite: {wrong.feedback}")
    if (seen := _wait_text(feedback, want, timeout_s)) is not None:
        problems.append(f"{p.notebook}: wrong option: feedback {seen!r}, expected {want!r}")
    view.locator(".labkit-quiz-hint-button").click()
    want = _norm(f"Hint: {item.hint}")
    if (seen := _wait_text(view.locator(".labkit-quiz-hint"), want, timeout_s)) is not None:
        problems.append(f"{p.notebook}: Hint: shows {seen!r}, expected {want!r}")
    choose(item.answer)
    if (seen := _wait_text(feedback, "Correct.", timeout_s)) is not None:
        problems.append(f"{p.notebook}: right option: feedback {seen!r}, expected 'Correct.'")
    if shot is not None:
        root.screenshot(path=str(shot))
    deadline = time.monotonic() + timeout_s
    while True:
        new = [(a["correct"], a["score"]) for a in _attempts(progress, item.id)[before:]]
        if new == [(False, 0.0), (True, 1.0)] or time.monotonic() > deadline:
            break
        p.page.wait_for_timeout(100)
    if new != [(False, 0.0), (True, 1.0)]:
        problems.append(
            f"{p.notebook}: progress file {progress} recorded {new} for {item.id!r}, "
            "expected a wrong then a right attempt"
        )
    return problems


def screenshot(p: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    p.page.screenshot(path=str(path))
    return path


# ---------------------------------------------------------------------------- the tests


def stored_images(notebook: Path) -> int:
    """How many image outputs (figures) the committed notebook holds."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return sum(
        any(mime.startswith("image/") for mime in out.get("data", {}))
        for cell in cells
        for out in cell.get("outputs", [])
    )


@pytest.mark.parametrize("lesson", LESSON_IDS)
def test_lesson_runs_in_the_browser(lesson, lab, pages):
    name = _lesson_notebook(lesson)
    if name is None:
        pytest.skip("lesson not written yet")
    p = finished(pages, name)
    problems = output_problems(p)
    # every figure stored in the lesson shows up again as a loaded, visible image
    shown, stored = visible_plots(p), stored_images(LESSONS / name)
    if shown < stored:
        problems.append(f"{name}: {shown} visible images, the stored lesson has {stored}")
    # the screenshot: sidebar closed, the first figure (else the first code cell) in view
    p.page.keyboard.press("Control+b")
    figures = p.panel.locator(".jp-OutputArea-output img")
    target = (figures if figures.count() else p.panel.locator(".jp-CodeCell")).first
    target.evaluate("e => e.scrollIntoView({block: 'center'})")
    screenshot(p, f"lesson_{lesson}.png")
    problems += quiz_problems(p, lab.progress, shot=SHOTS / f"lesson_{lesson}_quiz.png")
    problems += console_problems(p, server_log=lab.log.read_text(errors="replace"))
    assert problems == []


RACE_LOG = """[E 21:00:30.648 ServerApp] Uncaught exception GET /api/kernels?17958 (127.0.0.1)
    traitlets.traitlets.TraitError: The 'last_activity' trait of a ServerKernelManager instance
[E 21:00:30.650 ServerApp] 500 GET /api/kernels?17958 (abc@127.0.0.1) 15.59ms referer=x
"""


def test_only_the_known_kernel_list_race_is_excused():
    assert only_kernel_list_race(RACE_LOG)
    other = RACE_LOG + "[E 21:00:31.000 ServerApp] 500 PUT /api/contents/08_review.ipynb (a) 3ms\n"
    assert not only_kernel_list_race(other)
    assert not only_kernel_list_race(RACE_LOG.replace("'last_activity' trait", "other trait"))
    assert not only_kernel_list_race("[I 21:00:30 ServerApp] 200 GET /api/kernels")


def test_plot_widget_and_quiz_fixture(lab, pages):
    """Known content: a matplotlib figure, a quiz item and the rank explorer all show."""
    p = finished(pages, "e2e_plot_quiz_widget.ipynb")
    problems = output_problems(p)
    assert visible_plots(p) == 1
    widgets = [o for o in page_outputs(p) if o["widget"] and not o["broken"]]
    assert len(widgets) == 2, widgets
    assert p.panel.locator(".jp-Cell").nth(3).locator(".widget-slider").count() == 3  # d, k, r
    assert "trainable A (r x k) + B (d x r)" in _norm(p.panel.text_content())
    screenshot(p, "fixture_plot_quiz_widget.png")
    problems += quiz_problems(p, lab.progress, shot=SHOTS / "fixture_quiz.png")
    problems += console_problems(p)
    assert problems == []


def test_checks_catch_a_broken_widget(pages):
    """A widget whose front-end version does not exist: the page shows the error."""
    p = finished(pages, "e2e_broken_widget.ipynb")
    problems = output_problems(p)
    assert len(problems) == 1, problems
    assert problems[0].startswith("e2e_broken_widget.ipynb cell 2: a widget failed to load")
    console = console_problems(p)
    assert any("@jupyter-widgets/controls, version ^99.0.0 is not registered" in c for c in console)


def test_checks_catch_a_broken_quiz(lab, pages):
    """A quiz whose Check callback raises: no feedback, nothing recorded."""
    p = finished(pages, "e2e_broken_quiz.ipynb")
    assert output_problems(p) == []  # it renders fine: only using it shows the fault
    problems = quiz_problems(p, lab.progress, timeout_s=2)
    nb = "e2e_broken_quiz.ipynb"
    assert len(problems) == 3, problems  # the Hint button still works
    assert problems[0].startswith(f"{nb}: wrong option: feedback '', expected 'Not quite: ")
    assert problems[1] == f"{nb}: right option: feedback '', expected 'Correct.'"
    assert problems[2].startswith(f"{nb}: progress file {lab.progress} recorded [] for 'lb-goal'")
