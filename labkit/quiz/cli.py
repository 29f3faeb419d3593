"""The terminal quiz: ``python -m labkit.quiz [TOPIC|lesson NN|practice|test|flashcards|
explain|progress|reset]``, answers read line by line from stdin (a person or a pipe).

After an explain answer (outside a test) the terminal shows the checklist and the model
answer, then lists the missed concepts by number: the learner may type the numbers of those
they believe they covered (Enter skips), and each is recorded as a self-mark, apart from the
automatic score.

Any terminal works: what its encoding cannot print is printed in ASCII (``text.printable``),
input that is not valid in its encoding reads as U+FFFD, and an option number is ASCII
digits (``²`` or a 5000-digit number gets "Type a number from 1 to N."). Errors are one
``error: ...`` line on stderr (exit status 2); a progress file set aside is a ``note: ...``;
Ctrl-C stops with "(stopped)" (status 130) and a closed pipe (``| head``) quietly (status 1).

Imports: labkit.quiz.bank, .grading, .progress, .selection, .text (no ipywidgets, no torch:
it starts at once).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings

from labkit.quiz.bank import Item, QuizError, load_bank
from labkit.quiz.grading import Feedback, check, score_test
from labkit.quiz.progress import Progress, ProgressFileWarning
from labkit.quiz.selection import (
    LESSON_TOPICS,
    TEST_PLAN,
    lesson_items,
    pick,
    pick_test,
    review_topics,
)
from labkit.quiz.text import item_text, printable, solution_text

_OPTION = re.compile(r"\s*([0-9]{1,6})\s*")  # an option's number: ASCII digits only


class _Terminal:
    """Reads answers line by line from ``stdin`` (a person or a pipe) and prints feedback."""

    def __init__(self, stdin, stdout, progress: Progress | None):
        self.stdin, self.stdout, self.progress = stdin, stdout, progress

    def write(self, text: str) -> None:
        self.stdout.write(printable(text, getattr(self.stdout, "encoding", None)))
        self.stdout.flush()

    def say(self, text: str = "") -> None:
        self.write(text + "\n")

    def ask(self, prompt: str) -> str | None:
        self.write(prompt)
        line = self.stdin.readline()
        if not line:
            self.say("\n(input ended)")
            return None
        return line.rstrip("\n")

    def answer(self, item: Item, mode: str) -> Feedback | None:
        """Ask until a checkable answer comes (or input ends); record and return it."""
        hints = mode != "test"
        self.say(item_text(item))
        while True:
            if item.kind == "recall":
                if self.ask("Press Enter to see the answer. ") is None:
                    return None
                self.say(solution_text(item))
                line = self.ask("Did you know it? [y/n] ")
                if line is None:
                    return None
                response = line.strip().lower().startswith("y")
            elif item.kind == "explain":
                self.say("Your explanation (end with an empty line):")
                lines = []
                while (line := self.stdin.readline()) and line.strip():
                    lines.append(line)
                if not line and not lines:
                    self.say("(input ended)")
                    return None
                response = "".join(lines)  # line breaks end sentences, as in the widget
            else:
                count = len(item.choices)
                what = f"1-{count}" if count else "what it prints"
                line = self.ask(f"Your answer ({what}{', h for a hint' if hints else ''}): ")
                if line is None:
                    return None
                if line.strip().lower() in ("h", "?", "hint"):
                    self.say(f"Hint: {item.hint}" if hints else "No hints during a test.")
                    continue
                response = line
                if count:
                    number = _OPTION.fullmatch(line)
                    if number is None:
                        self.say(f"Type a number from 1 to {count}.")
                        continue
                    response = int(number.group(1)) - 1
            fb = check(item, response)
            self.say(fb.message)
            if fb.correct is None:
                continue
            if mode == "test" and not fb.correct:
                self.say(f"The answer: {item.answer}")
            self.progress.record(item, fb, mode)
            if mode != "test" and item.kind != "recall":
                self.say(solution_text(item))
            if mode != "test" and fb.explain is not None and fb.explain.missed:
                self.self_mark(item, fb.explain.missed)
            return fb

    def self_mark(self, item: Item, missed: list[str]) -> list[str]:
        """Offer the missed concepts by number; record each one the learner says they covered
        with :meth:`Progress.record_self_mark` (apart from the score, which stays)."""
        self.say("Missed concepts:")
        for i, name in enumerate(missed):
            self.say(f"  {i + 1}) {name}")
        line = self.ask("If you believe you covered some, type their numbers (e.g. 1 3); "
                        "Enter to skip: ")
        picked: list[str] = []
        for part in (line or "").replace(",", " ").split():
            number = _OPTION.fullmatch(part)
            if number is None or not 1 <= int(number.group(1)) <= len(missed):
                self.say(f"Skipped {part!r}: type numbers from 1 to {len(missed)}.")
                continue
            name = missed[int(number.group(1)) - 1]
            if name not in picked:
                picked.append(name)
                self.progress.record_self_mark(item.id, name)
        if picked:
            self.say("Noted as self-marked (your automatic score stays as it is): "
                     + ", ".join(picked) + ".")
        return picked

    def run(self, items: list[Item], mode: str, title: str) -> list[Feedback | None]:
        self.say(title)
        feedbacks: list[Feedback | None] = []
        for i, item in enumerate(items):
            self.say(f"\n--- Question {i + 1} of {len(items)} ---")
            fb = self.answer(item, mode)
            feedbacks.append(fb)
            if fb is None:
                break
        feedbacks += [None] * (len(items) - len(feedbacks))
        return feedbacks


def _positive_int(text: str) -> int:
    """``--n``: ASCII digits, at least 1 (argparse reports anything else as a usage error)."""
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()) or not digits.lstrip("0"):
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    if len(digits.lstrip("0")) > 9:
        raise argparse.ArgumentTypeError(f"{text} is more items than any bank holds")
    return int(digits)


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    """Show a warning (a progress file set aside) as one ``note:`` line on stderr."""
    print(printable(f"note: {message}", sys.stderr.encoding), file=sys.stderr)


def main(argv=None, stdin=None, stdout=None) -> int:
    """The terminal front end; returns the exit status."""
    if stdin is None and hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")  # bytes the terminal's encoding lacks: U+FFFD
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    parser = argparse.ArgumentParser(
        prog="python -m labkit.quiz", description="Quizzes of the LoRA & QLoRA Lab."
    )
    parser.add_argument(
        "mode",
        nargs="?",
        default="practice",
        help="a topic, or lesson NN | practice | test | flashcards | explain | progress | reset",
    )
    parser.add_argument("lesson", nargs="?", default=None, help="after 'lesson': its number (07)")
    parser.add_argument("--seed", type=int, default=0, help="which items (default 0)")
    parser.add_argument("--n", type=_positive_int, default=None,
                        help="how many items (a test: default 10, 30%% easy, 30%% hard)")
    parser.add_argument("--progress", default=None, help="progress file (default: user data dir)")
    parser.add_argument("--bank", default=None, help="quiz bank directory (default: quizzes/)")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", ProgressFileWarning)
        warnings.showwarning = _note
        try:
            return _run(args, stdin, stdout)
        except QuizError as exc:
            print(printable(f"error: {exc}", sys.stderr.encoding), file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C: every answer given is saved already
            print("\n(stopped)", file=sys.stderr)
            return 130
        except BrokenPipeError:  # `... | head`: the reader left; say nothing more
            if stdout is sys.stdout:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1


def _run(args, stdin, stdout) -> int:
    if args.lesson is not None and args.mode != "lesson":
        raise QuizError(f"unexpected argument {args.lesson!r}: only 'lesson' takes a "
                        "number, e.g. python -m labkit.quiz lesson 07")
    term = _Terminal(stdin, stdout, None)
    if args.mode == "reset":
        progress = Progress(args.progress, read=False)  # a corrupt file is set aside first
        progress.reset()
        term.say(f"Progress reset ({progress.path}).")
        return 0
    term.progress = Progress(args.progress)
    if args.mode == "progress":
        term.say(f"Progress file: {term.progress.path}\n{term.progress.summary_text()}")
        return 0
    bank = load_bank(args.bank)
    if args.mode == "test":
        items = pick_test(bank, args.seed, n=args.n or len(TEST_PLAN))
        fbs = term.run(items, "test", f"Test (seed {args.seed}): {len(items)} questions, "
                       "no hints.")
        term.say("\n" + score_test(items, fbs).text())
        return 0
    if args.mode == "lesson":
        if args.lesson is None:
            raise QuizError(
                f"which lesson? e.g. python -m labkit.quiz lesson 07; "
                f"lessons: {', '.join(LESSON_TOPICS)}"
            )
        items = lesson_items(bank, args.lesson, n=args.n or 3, seed=args.seed)
        mode, title = "practice", f"Lesson {str(args.lesson).zfill(2)} quiz"
    else:
        topic = args.mode if args.mode in bank.titles else None
        kind = {"flashcards": "recall", "explain": "explain"}.get(args.mode)
        if topic is None and args.mode not in ("practice", "flashcards", "explain"):
            raise QuizError(
                f"unknown mode {args.mode!r}; use a topic ({', '.join(bank.topics)})"
                " or lesson NN, practice, test, flashcards, explain, progress, reset"
            )
        mode = "practice" if topic else args.mode
        if kind is not None:  # flashcards and explain review the core topics, as in lessons
            topic = review_topics(bank)
        items = pick(bank, topic, kind=kind, n=args.n, seed=args.seed)
        title = mode.capitalize()
    fbs = term.run(items, mode, f"{title}: {len(items)} items.")
    done = [fb for fb in fbs if fb is not None]
    term.say(f"\nDone: {sum(bool(fb.correct) for fb in done)}/{len(done)} right.")
    return 0
