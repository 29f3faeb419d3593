"""The terminal quiz: ``python -m labkit.quiz [TOPIC|lesson NN|practice|test|flashcards|
explain|progress|reset]``, answers read line by line from stdin (a person or a pipe).

Imports: labkit.quiz.bank, .grading, .selection, .text (no ipywidgets, no torch: it starts
at once).
"""

from __future__ import annotations

import argparse
import sys

from labkit.quiz.bank import Item, QuizError, load_bank
from labkit.quiz.grading import Feedback, Progress, check, score_test
from labkit.quiz.selection import LESSON_TOPICS, lesson_items, pick, pick_test, review_topics
from labkit.quiz.text import item_text, solution_text


class _Terminal:
    """Reads answers line by line from ``stdin`` (a person or a pipe) and prints feedback."""

    def __init__(self, stdin, stdout, progress: Progress):
        self.stdin, self.stdout, self.progress = stdin, stdout, progress

    def say(self, text: str = "") -> None:
        print(text, file=self.stdout, flush=True)

    def ask(self, prompt: str) -> str | None:
        self.stdout.write(prompt)
        self.stdout.flush()
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
                    if not line.strip().isdigit():
                        self.say(f"Type a number from 1 to {count}.")
                        continue
                    response = int(line) - 1
            fb = check(item, response)
            self.say(fb.message)
            if fb.correct is None:
                continue
            if mode == "test" and not fb.correct:
                self.say(f"The answer: {item.answer}")
            self.progress.record(item, fb, mode)
            if mode != "test" and item.kind != "recall":
                self.say(solution_text(item))
            return fb

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


def main(argv=None, stdin=None, stdout=None) -> int:
    """The terminal front end; returns the exit status."""
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
    parser.add_argument("--n", type=int, default=None, help="how many items (not for test)")
    parser.add_argument("--progress", default=None, help="progress file (default: user data dir)")
    parser.add_argument("--bank", default=None, help="quiz bank directory (default: quizzes/)")
    args = parser.parse_args(argv)
    try:
        if args.lesson is not None and args.mode != "lesson":
            raise QuizError(f"unexpected argument {args.lesson!r}: only 'lesson' takes a "
                            "number, e.g. python -m labkit.quiz lesson 07")
        if args.mode == "reset":
            progress = Progress(args.progress, read=False)  # a corrupt file must not block it
            progress.reset()
            print(f"Progress reset ({progress.path}).", file=stdout)
            return 0
        progress = Progress(args.progress)
        if args.mode == "progress":
            print(f"Progress file: {progress.path}\n{progress.summary_text()}", file=stdout)
            return 0
        bank = load_bank(args.bank)
        term = _Terminal(stdin, stdout, progress)
        if args.mode == "test":
            items = pick_test(bank, args.seed)
            fbs = term.run(items, "test", f"Test (seed {args.seed}): 10 questions, no hints.")
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
    except QuizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
