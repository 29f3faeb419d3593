"""The quiz in a notebook: ipywidgets views of items and sessions, and the embedding API.

:class:`ItemView` shows one item (answer, Check, feedback, Hint, Show solution),
:class:`Session` several one at a time; each displays as one output bundle, the widget view
plus a plain-text fallback that never shows the answer. :func:`show`, :func:`lesson_quiz`,
:func:`flashcards`, :func:`practice`, :func:`explain` and :func:`take_test` are what lessons
call (``from labkit import quiz; quiz.lesson_quiz("01")``).

Imports: labkit.quiz.bank, .generated, .grading, .progress, .selection, .text; ipywidgets
only when a view is built (so ``import labkit.quiz`` and the terminal quiz never load it).
"""

from __future__ import annotations

import html

from labkit.quiz.bank import Bank, Item, load_bank
from labkit.quiz.generated import generate_item
from labkit.quiz.grading import Feedback, TestReport, check, score_test
from labkit.quiz.progress import Progress
from labkit.quiz.selection import lesson_items, pick, pick_test, review_topics
from labkit.quiz.text import _footer, _html_prompt, _pre, item_text, solution_text


class ItemView:
    """One item as ipywidgets: answer, Check, feedback, Hint, Show solution.

    Attributes a script (or test) drives: ``choices`` (RadioButtons, value is the option
    index), ``response`` (Text / Textarea), ``check_button``, ``hint_button``,
    ``solution_button``, ``reveal_button`` / ``knew_button`` / ``again_button`` (recall);
    read ``feedback.value``, ``hint.value``, ``solution.value`` and ``result``.

    An explain item, once checked (outside a test), shows its checklist in ``feedback``, the
    model answer in ``model_answer`` and one checkbox per missed concept in ``mark_boxes``
    ("I covered: ..."); ticking one records a self-mark with
    :meth:`Progress.record_self_mark`, apart from the automatic score.
    """

    def __init__(self, item: Item, *, progress: Progress | None = None, mode: str = "practice"):
        import ipywidgets as W  # deferred: only a notebook view needs it (it is slow to load)

        self.item, self.mode, self.progress = item, mode, progress
        self.result: Feedback | None = None
        self.choices = self.response = None
        self.feedback, self.hint, self.solution = W.HTML(""), W.HTML(""), W.HTML("")
        self.model_answer, self.marks = W.HTML(""), W.VBox([])
        self.mark_boxes: list = []
        self.check_button = W.Button(description="Check", button_style="primary")
        self.hint_button = W.Button(description="Hint")
        self.solution_button = W.Button(description="Show solution")
        self.check_button.on_click(lambda _: self.check())
        self.hint_button.on_click(lambda _: self.show_hint())
        self.solution_button.on_click(lambda _: self.show_solution())
        body = [W.HTML(_html_prompt(item))]
        buttons = [self.check_button, self.hint_button, self.solution_button]
        if item.choices:
            self.choices = W.RadioButtons(
                options=[(c.text, i) for i, c in enumerate(item.options())],
                value=None,
                layout=W.Layout(width="auto"),
            )
            body.append(self.choices)
        elif item.kind == "code_output":
            self.response = W.Text(placeholder="what it prints")
            body.append(self.response)
        elif item.kind == "explain":
            self.response = W.Textarea(
                placeholder="Two to four whole sentences...",
                layout=W.Layout(width="95%", height="6em"),
            )
            body.append(self.response)
        if item.kind == "recall":
            self.reveal_button = W.Button(description="Show answer", button_style="primary")
            self.knew_button = W.Button(description="I knew it")
            self.again_button = W.Button(description="Not yet")
            self.reveal_button.on_click(lambda _: self.show_solution())
            self.knew_button.on_click(lambda _: self.check(True))
            self.again_button.on_click(lambda _: self.check(False))
            buttons = [self.reveal_button, self.knew_button, self.again_button]
        if mode == "test":
            buttons = [self.check_button]  # no hints or solutions during a test
        self.box = W.VBox(body + [W.HBox(buttons), self.feedback, self.model_answer, self.marks,
                                  self.hint, self.solution])
        # stable CSS class names: the browser tests (tests/test_e2e_browser.py) find parts by them
        parts = dict(item=self.box, prompt=body[0], choices=self.choices, check=self.check_button)
        parts.update(feedback=self.feedback, hint=self.hint, solution=self.solution)
        parts.update({"hint-button": self.hint_button, "solution-button": self.solution_button})
        for name, w in parts.items():
            if w is not None:
                w.add_class(f"labkit-quiz-{name}")

    def current_response(self):
        if self.choices is not None:
            return self.choices.value
        return self.response.value if self.response is not None else None

    def check(self, response=None) -> Feedback:
        fb = check(self.item, self.current_response() if response is None else response)
        message = fb.message
        if fb.correct is not None and self.mode == "test":
            # one answer per question in a test: lock it, then show the right one
            for w in (self.check_button, self.choices, self.response):
                if w is not None:
                    w.disabled = True
            message += "" if fb.correct else f"\nThe answer: {self.item.answer}"
        colour = {True: "green", False: "#b00", None: "#555"}[fb.correct]
        self.feedback.value = f"<div style='color:{colour}'>{_pre(message)}</div>"
        if fb.correct is not None:
            self.result = fb
            if self.progress is not None:
                self.progress.record(self.item, fb, self.mode)
            if fb.explain is not None and self.mode != "test":
                self._offer_self_marks(fb.explain.missed)
        return fb

    def _offer_self_marks(self, missed: list[str]) -> None:
        """The model answer, and a checkbox per missed concept that records a self-mark."""
        import ipywidgets as W

        self.model_answer.value = f"<b>Model answer:</b> {html.escape(self.item.answer)}"
        self.mark_boxes = []
        for name in missed:
            box = W.Checkbox(value=False, description=f"I covered: {name}", indent=False,
                             layout=W.Layout(width="auto"))
            box.observe(lambda change, name=name: self._self_mark(name, change), names="value")
            self.mark_boxes.append(box)
        note = "Missed a concept you believe you covered? Tick it (your score stays as it is)."
        self.marks.children = ([W.HTML(f"<i>{note}</i>")] if missed else []) + self.mark_boxes

    def _self_mark(self, concept: str, change) -> None:
        if change["new"] and self.progress is not None:
            self.progress.record_self_mark(self.item.id, concept)

    def show_hint(self) -> None:
        self.hint.value = f"<i>Hint: {html.escape(self.item.hint)}</i>"

    def show_solution(self) -> None:
        self.solution.value = _pre(solution_text(self.item))

    def text(self) -> str:
        return item_text(self.item) + "\n" + _footer(self.item.topic)

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.box._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = self.text()
        return bundle


class Session:
    """Several items shown one at a time (practice, flashcards, explain, test).

    ``next_button`` / ``prev_button`` move between items, ``views[i]`` is each item's
    :class:`ItemView`; in a test ``finish_button`` scores it into ``report.value``.
    """

    def __init__(
        self, items: list[Item], *, mode: str, progress: Progress | None, title: str, command: str
    ):
        import ipywidgets as W  # deferred: only a notebook view needs it (it is slow to load)

        self.items, self.mode, self.title, self.command = items, mode, title, command
        self.views = [ItemView(it, progress=progress, mode=mode) for it in items]
        self.index = 0
        self.position = W.HTML()
        self.holder = W.Box([self.views[0].box])
        self.prev_button = W.Button(description="Previous")
        self.next_button = W.Button(description="Next")
        self.finish_button = W.Button(description="Finish and score", button_style="success")
        self.report = W.HTML("")
        self.prev_button.on_click(lambda _: self.go(self.index - 1))
        self.next_button.on_click(lambda _: self.go(self.index + 1))
        self.finish_button.on_click(lambda _: self.finish())
        nav = [self.prev_button, self.next_button]
        if mode == "test":
            nav.append(self.finish_button)
        self.box = W.VBox(
            [
                W.HTML(f"<h4>{html.escape(title)}</h4>"),
                self.position,
                self.holder,
                W.HBox(nav),
                self.report,
            ]
        )
        for name, w in (
            ("session", self.box),
            ("position", self.position),
            ("next", self.next_button),
        ):
            w.add_class(f"labkit-quiz-{name}")
        self.go(0)

    def go(self, index: int) -> None:
        self.index = max(0, min(index, len(self.views) - 1))
        self.holder.children = [self.views[self.index].box]
        self.position.value = f"Question {self.index + 1} of {len(self.views)}"

    def finish(self) -> TestReport:
        rep = score_test(self.items, [v.result for v in self.views])
        self.report.value = _pre(rep.text())
        return rep

    def text(self) -> str:
        body = "\n\n".join(item_text(it, i + 1) for i, it in enumerate(self.items))
        return f"{self.title}\n\n{body}\n\n{_footer(self.command)}"

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.box._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = self.text()
        return bundle


# ------------------------------------------------------------------- the embedding API


def _progress(progress) -> Progress:
    return progress if isinstance(progress, Progress) else Progress(progress)


def show(
    topic=None,
    *,
    ids=None,
    kind=None,
    difficulty=None,
    n=None,
    seed: int = 0,
    generated: int = 0,
    progress=None,
    bank=None,
):
    """Items to answer in a lesson: one :class:`ItemView`, or a :class:`Session` of several.

    Args:
        topic: a topic name (or tuple of them); ``ids``: exact item ids instead of filters.
        kind, difficulty: filters; ``n``: how many; ``seed``: which ones, reproducibly.
        generated: add this many fresh numeric items (alternating lora-count, model-bytes).
        progress: a :class:`Progress` or a path; default the user's progress file.
        bank: a :class:`Bank` or a directory; default the course bank.
    """
    bank = bank if isinstance(bank, Bank) else load_bank(bank)
    items = pick(bank, topic, ids=ids, kind=kind, difficulty=difficulty, n=n, seed=seed)
    kinds = ("lora-count", "model-bytes")
    items += [generate_item(kinds[i % 2], seed + i) for i in range(generated)]
    command = topic if isinstance(topic, str) else "practice"
    if len(items) == 1:
        return ItemView(items[0], progress=_progress(progress))
    return Session(
        items,
        mode="practice",
        progress=_progress(progress),
        title=f"Quiz: {len(items)} questions",
        command=command,
    )



def lesson_quiz(lesson: str, n: int = 3, seed: int = 0, progress=None, bank=None) -> Session:
    """The closing quiz of a lesson: its three hand-picked items (:func:`lesson_items`)."""
    lesson = str(lesson).zfill(2)
    bank = bank if isinstance(bank, Bank) else load_bank(bank)
    return Session(
        lesson_items(bank, lesson, n, seed),
        mode="practice",
        progress=_progress(progress),
        title=f"Lesson {lesson} quiz",
        command=f"lesson {lesson}",
    )


def _study(bank, topic, mode: str, title: str, command: str, kind=None, n=None, seed: int = 0,
           progress=None, review: bool = False) -> Session:
    """A study session of ``kind`` items on ``topic``, in a seeded order; with ``review`` and
    no topic, the :func:`review_topics` instead of the whole bank."""
    bank = bank if isinstance(bank, Bank) else load_bank(bank)
    if topic is None and review:
        topic = review_topics(bank)
    items = pick(bank, topic, kind=kind, n=n, seed=seed)
    return Session(items, mode=mode, progress=_progress(progress), title=title, command=command)


def flashcards(topic=None, seed: int = 0, n=None, progress=None, bank=None) -> Session:
    """Recall cards: read the question, reveal the answer, say whether you knew it.

    ``topic``: a name or a tuple of names; default the core topics (:func:`review_topics`).
    """
    return _study(bank, topic, "flashcards", "Flashcards", "flashcards", "recall", n, seed,
                  progress, review=True)


def practice(topic=None, seed: int = 0, n=None, progress=None, bank=None) -> Session:
    """One item at a time with hints and solutions."""
    return _study(bank, topic, "practice", "Practice", topic or "practice", None, n, seed, progress)


def explain(topic=None, seed: int = 0, n=None, progress=None, bank=None) -> Session:
    """Explain-in-your-own-words items, scored against their concept checklists.

    ``topic``: a name or a tuple of names; default the core topics (:func:`review_topics`).
    """
    return _study(bank, topic, "explain", "Explain in your own words", "explain", "explain", n,
                  seed, progress, review=True)


def take_test(seed: int = 0, progress=None, bank=None, topics=None, exclude=()) -> Session:
    """The 10-question test (3 easy, 4 medium, 3 hard), scored with a per-topic breakdown.

    ``topics``: a tuple of topic names to draw from; default the core topics
    (:func:`review_topics`), e.g. ``topics=quiz.load_bank().topics`` for every topic.
    ``exclude``: ids not to ask, e.g. ``already_asked("08")``, what the lessons ask elsewhere.
    """
    bank = bank if isinstance(bank, Bank) else load_bank(bank)
    return Session(
        pick_test(bank, seed, topics=topics, exclude=exclude),
        mode="test",
        progress=_progress(progress),
        title=f"Test (seed {seed}): 10 questions",
        command=f"test --seed {seed}",
    )
