"""The course's quizzes: the question bank, its widgets, study modes, progress, a terminal.

The bank is ``quizzes/<topic>.yaml`` (one file per topic; the format is described in
``quizzes/README.md``). This module imports neither torch nor ipywidgets at import time, so
``python -m labkit.quiz`` starts at once; generated items call labkit's arithmetic lazily.

Embedding in a lesson (each call returns one object whose display is one output bundle: the
widget view plus a plain-text fallback that never shows the answer)::

    from labkit import quiz
    quiz.lesson_quiz("01")                      # the lesson's topics, 3 items, seed 0
    quiz.show(topic="lora-params", n=3, seed=0) # any selection; one item shows alone
    quiz.show(ids=["lora-trainable-count"])     # exact items
    quiz.show(topic="lora-params", generated=1, seed=0)  # plus a fresh numeric item
    quiz.flashcards(); quiz.practice("qlora"); quiz.take_test(seed=0); quiz.explain()

The review modes (flashcards, explain, the test) draw on the six core topics of DESIGN.md
unless given topics; the lesson topics (``memory``, ``scaling``) are asked by name.

Terminal: ``python -m labkit.quiz [TOPIC|practice|test|flashcards|explain|progress|reset]``
with ``--seed``, ``--n``, ``--progress PATH`` and ``--bank DIR``; answers are read from stdin,
so a piped file runs a whole test.

Progress goes to ``--progress`` / ``progress=``, else ``$LABKIT_PROGRESS``, else
``<user data dir>/labkit/quiz_progress.json``; it is rewritten atomically on every answer.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from labkit.quiz_explain import ExplainResult, score_explanation

BANK_DIR = Path(__file__).resolve().parent.parent / "quizzes"
KINDS = ("recall", "choice", "code_output", "find_bug", "scenario", "explain")
DIFFICULTIES = ("easy", "medium", "hard")
#: Kinds that a test scores right/wrong (recall is self-rated, explain is partial credit).
SCORED_KINDS = ("choice", "scenario", "code_output", "find_bug")
#: The six course topics of DESIGN.md; lesson files may add more topics to the bank.
CORE_TOPICS = ("lora-basics", "lora-params", "qlora", "quantization", "benefits", "lora-is-not")
#: What the review modes (flashcards, explain, the 10-question test) draw on when no topic is
#: given: the core topics. Lesson topics (``lora-layers``, ``finetuning``, ``memory``,
#: ``scaling``) are asked by name, so the review of lesson 08 stays on the cheat sheet. A
#: bank with none of these uses all its topics.
REVIEW_TOPICS = CORE_TOPICS
#: The topics each lesson teaches; a closing quiz longer than its curated items
#: (``lesson_quiz("01", n=6)``) draws the rest from them.
LESSON_TOPICS = {
    "00": ("lora-basics", "lora-params"),
    "01": ("lora-basics", "lora-params", "lora-is-not"),
    "02": ("lora-layers",),
    "03": ("finetuning",),
    "04": ("quantization",),
    "05": ("qlora",),
    "06": ("memory",),
    "07": CORE_TOPICS,
    "08": CORE_TOPICS,
    "09": ("scaling",),
}
#: Each lesson's closing quiz, chosen by hand: three items on what that lesson taught, easy to
#: hard, and no item in two lessons' quizzes (a test checks both).
LESSON_ITEMS = {
    "00": ("lb-acronym", "lp-trainable-count", "lp-count-bug"),
    "01": ("ln-which-is-lora", "lb-rank-meaning", "lp-model-total"),
    "02": ("ll-b-zero", "ll-merge-bug", "ll-rank-scenario"),
    "03": ("ft-forgetting", "ft-switch-bug", "ft-lr-why"),
    "04": ("qz-bytes-recall", "qz-absmax-bits", "qz-double-quant"),
    "05": ("ql-name", "ql-what-4bit", "ql-dequant"),
    "06": ("mem-bytes-per-param", "mem-lora-removes", "mem-checkpointing-code"),
    "07": ("qz-why", "ql-memory-bug", "ql-adapter-precision"),
    "08": ("bf-scenario-budget", "ln-grow", "ln-scenario-speed"),
    "09": ("sc-ddp-replica", "sc-adapter-bytes", "sc-token-weighting"),
}
#: Items a lesson works through in its own cells (lesson 07's problems, lesson 08's explain
#: examples), besides its closing quiz; a test checks this against the notebooks.
LESSON_SHOWN = {
    "07": ("lb-goal", "ql-name", "ql-memory-code", "qz-both-bug", "ql-scenario-laptop"),
    "08": ("lb-explain", "ql-explain"),
}
TEST_PLAN = ("easy",) * 3 + ("medium",) * 4 + ("hard",) * 3

_COMMON = tuple("id topic kind difficulty prompt answer hint solution quick_check mistakes".split())
_EXTRA = {
    "recall": (),
    "choice": ("choices",),
    "scenario": ("choices",),
    "code_output": ("code",),
    "find_bug": ("code", "fixed", "output", "choices"),
    "explain": ("concepts", "misconceptions"),
}
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


class QuizError(ValueError):
    """A bank file, item or progress file is wrong; the message names file, item and field."""


# ----------------------------------------------------------------------------- the bank


@dataclass(frozen=True)
class Choice:
    text: str
    feedback: str


@dataclass(frozen=True)
class Item:
    """One question. ``choices`` keep file order; :meth:`options` is the display order."""

    id: str
    topic: str
    kind: str
    difficulty: str
    prompt: str
    answer: str
    hint: str
    solution: tuple[str, ...]
    quick_check: str
    mistakes: tuple[str, ...]
    choices: tuple[Choice, ...] = ()
    code: str = ""
    fixed: str = ""
    output: str = ""
    concepts: tuple[dict, ...] = ()
    misconceptions: tuple[dict, ...] = ()
    source: str = ""
    generated: bool = False

    def options(self) -> list[Choice]:
        """Choices in a fixed order shuffled by the item id (the same on every machine)."""
        order = list(self.choices)
        random.Random(self.id).shuffle(order)
        return order


def _fail(where: str, item_id: str | None, fld: str | None, problem: str) -> QuizError:
    parts = [where]
    if item_id is not None:
        parts.append(f"item {item_id!r}")
    if fld is not None:
        parts.append(f"field {fld!r}")
    return QuizError(": ".join(parts + [problem]))


def _text(value, where, item_id, fld) -> str:
    # YAML reads `answer: 14` as an int; numbers are accepted and kept as their text.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _fail(where, item_id, fld, f"must be text, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise _fail(where, item_id, fld, "must not be empty")
    return text


def _text_list(value, where, item_id, fld) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(where, item_id, fld, "must be a non-empty list of text")
    return tuple(_text(v, where, item_id, f"{fld}[{i}]") for i, v in enumerate(value))


def parse_item(raw, where: str, index: int = 0, *, generated: bool = False) -> Item:
    """Validate one item (a dict as read from YAML) and return it as an :class:`Item`.

    Raises:
        QuizError: ``"<file>: item '<id>': field '<field>': <problem>"``.
    """
    if not isinstance(raw, dict):
        raise _fail(where, f"#{index + 1}", None, "an item must be a mapping of fields")
    item_id = raw.get("id")
    label = item_id if isinstance(item_id, str) and item_id else f"#{index + 1}"
    for fld in _COMMON:
        if fld not in raw:
            raise _fail(where, label, fld, "missing")
    if not isinstance(item_id, str) or not _SLUG.match(item_id):
        raise _fail(where, label, "id", "must be lower-case words joined by '-'")
    kind = raw["kind"]
    if kind not in KINDS:
        raise _fail(where, item_id, "kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    if raw["difficulty"] not in DIFFICULTIES:
        raise _fail(
            where,
            item_id,
            "difficulty",
            f"{raw['difficulty']!r} is not one of {', '.join(DIFFICULTIES)}",
        )
    for fld in _EXTRA[kind]:
        if fld not in raw:
            raise _fail(where, item_id, fld, f"missing (a {kind} item needs it)")
    known = set(_COMMON) | set(_EXTRA[kind])
    for fld in raw:
        if fld not in known:
            raise _fail(
                where,
                item_id,
                fld,
                f"unknown field for a {kind} item; known: {', '.join(sorted(known))}",
            )
    t = lambda fld: _text(raw[fld], where, item_id, fld)  # noqa: E731
    fields = dict(
        id=item_id,
        topic=t("topic"),
        kind=kind,
        difficulty=raw["difficulty"],
        prompt=t("prompt"),
        answer=t("answer"),
        hint=t("hint"),
        solution=_text_list(raw["solution"], where, item_id, "solution"),
        quick_check=t("quick_check"),
        mistakes=_text_list(raw["mistakes"], where, item_id, "mistakes"),
        source=where,
        generated=generated,
    )
    if "choices" in raw:
        fields["choices"] = _parse_choices(raw["choices"], fields["answer"], where, item_id)
    for fld in ("code", "fixed", "output"):
        if fld in raw:
            fields[fld] = t(fld)
    if kind == "code_output" and "\n" in fields["answer"]:
        raise _fail(where, item_id, "answer", "a code_output answer must be one line")
    if kind == "explain":
        fields["concepts"] = _parse_phrases(raw["concepts"], where, item_id, "concepts", "name")
        fields["misconceptions"] = _parse_phrases(
            raw["misconceptions"], where, item_id, "misconceptions", "message"
        )
    return Item(**fields)


def _parse_choices(raw, answer, where, item_id) -> tuple[Choice, ...]:
    if not isinstance(raw, list) or len(raw) < 2:
        raise _fail(where, item_id, "choices", "must be a list of at least 2 options")
    texts = []
    for i, ch in enumerate(raw):
        if not isinstance(ch, dict) or "text" not in ch:
            raise _fail(
                where, item_id, f"choices[{i}]", "must be a mapping with 'text' and 'feedback'"
            )
        texts.append(_text(ch["text"], where, item_id, f"choices[{i}].text"))
    if len(set(texts)) != len(texts):
        raise _fail(where, item_id, "choices", "two options have the same text")
    if answer not in texts:
        listed = ", ".join(repr(x) for x in texts)
        raise _fail(where, item_id, "answer", f"{answer!r} is not among the choices ({listed})")
    out = []
    for i, (ch, text) in enumerate(zip(raw, texts, strict=True)):
        fld = f"choices[{i}].feedback"
        if text != answer and "feedback" not in ch:
            raise _fail(where, item_id, fld, "missing (every wrong option needs it)")
        out.append(Choice(text, _text(ch.get("feedback", "Correct."), where, item_id, fld)))
    return tuple(out)


def _parse_phrases(raw, where, item_id, fld, label) -> tuple[dict, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail(where, item_id, fld, "must be a non-empty list")
    out = []
    for i, entry in enumerate(raw):
        sub = f"{fld}[{i}]"
        if not isinstance(entry, dict) or set(entry) != {label, "phrases"}:
            raise _fail(where, item_id, sub, f"must be a mapping with '{label}' and 'phrases'")
        out.append(
            {
                label: _text(entry[label], where, item_id, f"{sub}.{label}"),
                "phrases": _text_list(entry["phrases"], where, item_id, f"{sub}.phrases"),
            }
        )
    return tuple(out)


@dataclass(frozen=True)
class Bank:
    """All items of a bank directory, validated; ``titles`` maps topic to its title."""

    items: tuple[Item, ...]
    titles: dict

    @property
    def by_id(self) -> dict[str, Item]:
        return {it.id: it for it in self.items}

    @property
    def topics(self) -> list[str]:
        return list(self.titles)

    def select(self, topic=None, kind=None, difficulty=None) -> list[Item]:
        """Items matching each given filter; each filter is a value or a tuple of values."""

        def ok(value, wanted):
            return (
                wanted is None
                or value == wanted
                or (isinstance(wanted, (tuple, list)) and value in wanted)
            )

        return [
            it
            for it in self.items
            if ok(it.topic, topic) and ok(it.kind, kind) and ok(it.difficulty, difficulty)
        ]


_BANKS: dict[Path, Bank] = {}


def load_bank(directory: str | os.PathLike | None = None, *, cache: bool = True) -> Bank:
    """Load and validate every ``*.yaml`` file of the bank; all or nothing.

    Args:
        directory: the bank; default ``$LABKIT_QUIZZES`` or the repository's ``quizzes/``.
        cache: reuse a bank already loaded from the same directory.

    Raises:
        QuizError: naming the file (and item and field) at the first problem found;
            nothing is returned or cached when any file is wrong.
    """
    directory = Path(directory or os.environ.get("LABKIT_QUIZZES") or BANK_DIR).resolve()
    if cache and directory in _BANKS:
        return _BANKS[directory]
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise QuizError(
            f"{directory}: no quiz files (*.yaml) here; pass the bank directory "
            "(bank=... or --bank) or set LABKIT_QUIZZES to it"
        )
    items: list[Item] = []
    seen: dict[str, str] = {}
    titles: dict[str, str] = {}
    for path in files:
        where = f"{directory.name}/{path.name}"
        topic, title, file_items = _load_file(path, where)
        titles[topic] = title
        for it in file_items:
            if it.id in seen:
                raise _fail(where, it.id, "id", f"duplicate id, already used in {seen[it.id]}")
            seen[it.id] = where
            items.append(it)
    bank = Bank(tuple(items), titles)
    if cache:
        _BANKS[directory] = bank
    return bank


def _load_file(path: Path, where: str) -> tuple[str, str, list[Item]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise QuizError(f"{where}: not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict) or set(data) != {"topic", "title", "items"}:
        raise QuizError(f"{where}: the file must be a mapping with keys topic, title, items")
    topic = data["topic"]
    if not isinstance(topic, str) or path.stem != topic.replace("-", "_"):
        raise QuizError(f"{where}: topic {topic!r} does not match the file name {path.name!r}")
    if not isinstance(data["items"], list) or not data["items"]:
        raise QuizError(f"{where}: 'items' must be a non-empty list")
    items = [parse_item(raw, where, i) for i, raw in enumerate(data["items"])]
    for it in items:
        if it.topic != topic:
            raise _fail(where, it.id, "topic", f"{it.topic!r} differs from the file's {topic!r}")
    return topic, str(data["title"]), items


# ------------------------------------------------------------------------ generated items


def _lora_param_count(d: int, k: int, r: int) -> int:
    """``labkit.lora.lora_param_count``, imported only when needed (labkit.lora needs torch)."""
    from labkit.lora import lora_param_count

    return int(lora_param_count(d, k, r))


def _bits_per_weight(quant_type: str, blocksize: int, double_quant: bool) -> float:
    """``labkit.quant.bits_per_weight``, imported only when needed (it needs torch)."""
    from labkit.quant import bits_per_weight

    return float(bits_per_weight(quant_type, blocksize, double_quant))


def generate_item(kind: str, seed: int) -> Item:
    """A numeric item with fresh numbers from ``seed``, its answer computed by labkit.

    Args:
        kind: ``"lora-count"`` (trainable parameters of a layer at rank r) or
            ``"model-bytes"`` (gigabytes of a model's weights in a format).
        seed: the same seed gives the same item (lessons fix it, so outputs are stable).
    """
    rng = random.Random(f"{kind}:{seed}")
    if kind == "lora-count":
        d, k = rng.choice([768, 1024, 2048, 4096, 5120]), rng.choice([512, 1024, 2048, 4096])
        r = rng.choice([4, 8, 16, 32, 64])
        right = _lora_param_count(d, k, r)
        wrong = [
            (d * k, "That is the frozen weight W; it does not train."),
            (r * k, f"Only A (r x k); B (d x r = {d} x {r}) trains too."),
            (d * k + right, "That adds the frozen weight; only A and B train."),
        ]
        raw = dict(
            topic="lora-params",
            difficulty="medium",
            prompt=f"A {d} x {k} linear layer gets a rank-{r} LoRA adapter. "
            "How many parameters train?",
            answer=f"{right:,}",
            hint="The adapter is two matrices: B is d x r and A is r x k.",
            solution=[
                f"A is {r} x {k} = {r * k:,} entries.",
                f"B is {d} x {r} = {d * r:,} entries.",
                f"Together r * (d + k) = {right:,}, {100 * right / (d * k):.1f} % of d * k.",
            ],
            quick_check=f"r * (d + k) = {r} * {d + k:,} = {right:,}",
            mistakes=["counting only A", "counting the frozen weight", "multiplying d, k and r"],
        )
    elif kind == "model-bytes":
        params = rng.choice([1, 3, 7, 13, 34, 70])
        fmt = rng.choice(["bf16", "nf4", "nf4-dq"])
        bits = {
            "bf16": 16.0,
            "nf4": _bits_per_weight("nf4", 64, False),
            "nf4-dq": _bits_per_weight("nf4", 64, True),
        }[fmt]
        name = {
            "bf16": "bfloat16",
            "nf4": "NF4 (blocksize 64, fp32 scales)",
            "nf4-dq": "NF4 (blocksize 64) with double quantization",
        }[fmt]
        gb = lambda b: f"{params * b / 8:.2f} GB"  # noqa: E731  (billions of params * bytes)
        right = gb(bits)
        wrong = [
            (gb(bits * 8), "That counts bits as bytes; divide by 8."),
            (gb(4.0), "That is exactly 4 bits; the block scales cost extra."),
            (gb(32.0), "That is fp32, 4 bytes per weight."),
            (gb(16.0), "That is 16-bit, 2 bytes per weight."),
        ]
        raw = dict(
            topic="quantization",
            difficulty="hard",
            prompt=f"A {params}B-parameter model's weights are stored in {name}. "
            "How much memory do they take (1 GB = 10^9 bytes)?",
            answer=right,
            hint="Bytes = parameters x bits per weight / 8; count the scales in the bits.",
            solution=[
                f"The format costs {bits:.3f} bits per weight (labkit computes it).",
                f"{params} x 10^9 weights x {bits:.3f} / 8 bits per byte.",
                f"= {right}.",
            ],
            quick_check=f"{params} x {bits:.3f} / 8 = {right}",
            mistakes=[
                "bits taken as bytes",
                "4-bit counted as exactly half a byte",
                "forgetting the block scales",
            ],
        )
    else:
        raise ValueError(f"unknown generated kind {kind!r}; use 'lora-count' or 'model-bytes'")
    choices, texts = [{"text": raw["answer"]}], {raw["answer"]}
    for text, feedback in wrong:
        text = f"{text:,}" if isinstance(text, int) else text
        if text not in texts and len(choices) < 4:
            choices.append({"text": text, "feedback": feedback})
            texts.add(text)
    raw.update(id=f"gen-{kind}-{seed}", kind="choice", choices=choices)
    return parse_item(raw, "<generated>", generated=True)


# ------------------------------------------------------------------------------ checking


@dataclass
class Feedback:
    """The result of checking one response: ``correct`` is None when nothing was answered."""

    correct: bool | None
    score: float
    message: str
    explain: ExplainResult | None = None


_AFFIRMATION = re.compile(r"^(right|yes|correct)[.,!:]?\s*", re.IGNORECASE)


def _norm(text: str) -> str:
    return " ".join(str(text).split())


def check(item: Item, response) -> Feedback:
    """Check a response against an item.

    Args:
        response: for choice kinds, the 0-based index into ``item.options()`` or the option's
            text; for code_output, the printed text; for explain, the explanation; for recall,
            True ("I knew it") or False.
    """
    if response is None or (isinstance(response, str) and not response.strip()):
        return Feedback(None, 0.0, "Answer first, then check.")
    if item.kind in ("choice", "scenario", "find_bug"):
        options = item.options()
        if isinstance(response, int) and not isinstance(response, bool):
            if not 0 <= response < len(options):
                return Feedback(None, 0.0, f"Pick an option from 1 to {len(options)}.")
            chosen = options[response]
        else:
            matches = [c for c in options if c.text == _norm(response)]
            if not matches:
                return Feedback(None, 0.0, "That is not one of the options.")
            chosen = matches[0]
        if chosen.text == item.answer:
            # authors often open the right option's feedback with "Right." or "Yes."
            rest = _AFFIRMATION.sub("", chosen.feedback)
            return Feedback(True, 1.0, f"Correct. {rest}".strip())
        return Feedback(False, 0.0, f"Not quite: {chosen.feedback}")
    if item.kind == "code_output":
        if _norm(response) == _norm(item.answer):
            return Feedback(True, 1.0, f"Correct: it prints {item.answer}.")
        return Feedback(
            False,
            0.0,
            f"Not quite: it does not print {_norm(response)}. "
            "Trace it line by line; the solution shows each step.",
        )
    if item.kind == "explain":
        res = score_explanation(str(response), list(item.concepts), list(item.misconceptions))
        return Feedback(res.passed, res.score, res.summary(), explain=res)
    knew = bool(response)  # recall: self-rated
    return Feedback(knew, float(knew), "Good." if knew else "It will come back later.")


# ------------------------------------------------------------------------------ progress


def progress_path(path: str | os.PathLike | None = None) -> Path:
    """Where progress is kept: ``path``, else ``$LABKIT_PROGRESS``, else the user data dir."""
    if path:
        return Path(path)
    if os.environ.get("LABKIT_PROGRESS"):
        return Path(os.environ["LABKIT_PROGRESS"])
    import platformdirs

    return Path(platformdirs.user_data_dir("labkit", appauthor=False)) / "quiz_progress.json"


class Progress:
    """Attempts and scores in a JSON file, rewritten atomically (temp file, fsync, rename).

    A crash mid-write leaves the previous file whole: the new text goes to a temporary file in
    the same directory, which only replaces the old one once it is completely on disk.
    """

    VERSION = 1

    def __init__(self, path: str | os.PathLike | None = None, *, read: bool = True):
        self.path = progress_path(path)
        self.data = self._read() if read else {"version": self.VERSION, "attempts": []}

    def _read(self) -> dict:
        if not self.path.exists():
            return {"version": self.VERSION, "attempts": []}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise QuizError(
                f"{self.path}: progress file is not valid JSON ({exc}); move it "
                "away or start over with `python -m labkit.quiz reset`"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("attempts"), list):
            raise QuizError(
                f"{self.path}: progress file has no 'attempts' list; move it away "
                "or start over with `python -m labkit.quiz reset`"
            )
        return data

    @property
    def attempts(self) -> list[dict]:
        return self.data["attempts"]

    def record(self, item: Item, feedback: Feedback, mode: str = "practice") -> None:
        """Append one attempt and save (answers that were not checked are not recorded).

        The file is re-read first, so several quizzes open at once (two notebook cells, a
        notebook and a terminal) add to it instead of overwriting each other's attempts.
        """
        if feedback.correct is None:
            return
        self.data = self._read()
        self.attempts.append(
            {
                "id": item.id,
                "topic": item.topic,
                "kind": item.kind,
                "difficulty": item.difficulty,
                "mode": mode,
                "correct": feedback.correct,
                "score": round(feedback.score, 4),
                "time": round(time.time(), 3),
            }
        )
        self.save()

    def save(self) -> None:
        text = json.dumps(self.data, indent=1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".quiz-progress-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def reset(self, topic: str | None = None) -> None:
        """Forget all attempts (without reading the file, so a corrupt one is replaced), or
        those of one topic."""
        if topic is None:
            self.data = {"version": self.VERSION, "attempts": []}
        else:
            self.data = self._read()
            self.data["attempts"] = [a for a in self.attempts if a["topic"] != topic]
        self.save()

    def summary(self) -> dict[str, dict]:
        """Per topic: attempts, correct attempts, distinct items seen, mean of latest scores."""
        out: dict[str, dict] = {}
        latest: dict[str, dict] = {}
        for a in self.attempts:
            s = out.setdefault(a["topic"], {"attempts": 0, "correct": 0, "items": 0, "score": 0.0})
            s["attempts"] += 1
            s["correct"] += bool(a["correct"])
            latest[a["id"]] = a
        for a in latest.values():
            out[a["topic"]]["items"] += 1
            out[a["topic"]]["score"] += a["score"]
        for s in out.values():
            s["score"] = round(s["score"] / s["items"], 3)
        return dict(sorted(out.items()))

    def summary_text(self) -> str:
        rows = self.summary()
        if not rows:
            return f"No attempts yet ({self.path})."
        lines = [f"{'topic':<14} {'attempts':>8} {'correct':>8} {'items':>6} {'score':>6}"]
        for topic, s in rows.items():
            lines.append(
                f"{topic:<14} {s['attempts']:>8} {s['correct']:>8} {s['items']:>6} "
                f"{100 * s['score']:>5.0f}%"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------ selection and scoring


def review_topics(bank: Bank) -> tuple[str, ...]:
    """The topics a review draws on by default: those of ``REVIEW_TOPICS`` that ``bank``
    has, or every topic of a bank that has none of them (a teacher's own bank)."""
    have = tuple(t for t in REVIEW_TOPICS if t in bank.titles)
    return have or tuple(bank.topics)


def pick_test(bank: Bank, seed: int = 0, n: int = 10, topics=None, exclude=()) -> list[Item]:
    """A test: ``TEST_PLAN`` difficulties (3 easy, 4 medium, 3 hard), spread over topics.

    Only kinds with one right answer (``SCORED_KINDS``) are drawn; each slot takes an item
    from a topic used least so far, chosen at random from ``seed``. ``topics`` (a tuple of
    names) limits the draw; default :func:`review_topics`, the core topics. Items whose id
    is in ``exclude`` are not drawn.
    """
    if n != len(TEST_PLAN):
        raise ValueError(f"a test has {len(TEST_PLAN)} items, got n={n}")
    topics = review_topics(bank) if topics is None else _known_topics(bank, topics)
    exclude = set(exclude)
    unknown = sorted(exclude - set(bank.by_id))
    if unknown:
        raise QuizError(f"exclude names no item: {', '.join(unknown)} (check the ids)")
    rng = random.Random(seed)
    used: dict[str, int] = {}
    picked: list[Item] = []
    for difficulty in TEST_PLAN:
        pool = [
            it
            for it in bank.select(topic=topics, kind=SCORED_KINDS, difficulty=difficulty)
            if it not in picked and it.id not in exclude
        ]
        if not pool:
            raise QuizError(
                f"the bank has too few {difficulty} scored items for a test on "
                f"{', '.join(topics)}"
                + (f" once {len(exclude)} excluded items are left out" if exclude else "")
            )
        least = min(used.get(it.topic, 0) for it in pool)
        choice = rng.choice([it for it in pool if used.get(it.topic, 0) == least])
        used[choice.topic] = used.get(choice.topic, 0) + 1
        picked.append(choice)
    return picked


def pick(
    bank: Bank, topic=None, *, ids=None, kind=None, difficulty=None, n=None, seed: int = 0
) -> list[Item]:
    """Items by id (in the order given) or by filters, ``n`` of them drawn with ``seed``."""
    if ids is not None:
        missing = [i for i in ids if i not in bank.by_id]
        if missing:
            raise QuizError(
                f"no item with id {', '.join(map(repr, missing))}; "
                f"the bank has e.g. {', '.join(sorted(bank.by_id)[:5])}"
            )
        return [bank.by_id[i] for i in ids]
    if topic is not None:
        _known_topics(bank, topic)
    items = bank.select(topic=topic, kind=kind, difficulty=difficulty)
    if not items:
        raise QuizError(f"no items match topic={topic!r}, kind={kind!r}, difficulty={difficulty!r}")
    rng = random.Random(seed)
    items = rng.sample(items, len(items))
    return items if n is None else items[:n]


def _known_topics(bank: Bank, topic) -> tuple[str, ...]:
    """``topic`` (a name or several) as a tuple, each checked to be in ``bank``."""
    topics = (topic,) if isinstance(topic, str) else tuple(topic)
    for t in topics:
        if t not in bank.titles:
            raise QuizError(f"no topic {t!r}; topics: {', '.join(bank.topics)}")
    return topics


@dataclass
class TestReport:
    correct: int
    total: int
    by_topic: dict = field(default_factory=dict)  # topic -> [correct, total]

    def text(self) -> str:
        lines = [f"Score: {self.correct}/{self.total} ({100 * self.correct / self.total:.0f}%)"]
        for topic, (c, n) in sorted(self.by_topic.items()):
            lines.append(f"  {topic:<14} {c}/{n}")
        return "\n".join(lines)


def score_test(items: list[Item], feedbacks: list[Feedback | None]) -> TestReport:
    """Count right answers overall and per topic; an unanswered item counts as wrong."""
    report = TestReport(0, len(items))
    for it, fb in zip(items, feedbacks, strict=True):
        ok = bool(fb is not None and fb.correct)
        cell = report.by_topic.setdefault(it.topic, [0, 0])
        cell[0] += ok
        cell[1] += 1
        report.correct += ok
    return report


# ------------------------------------------------------------------------- plain text


def _indent(code: str) -> str:
    return "\n".join("    " + line for line in code.splitlines())


def item_text(item: Item, number: int | None = None) -> str:
    """The question as plain text: deterministic and without the answer."""
    head = f"{number}. " if number is not None else ""
    lines = [f"{head}[{item.topic} | {item.kind} | {item.difficulty}] {item.prompt}"]
    if item.code:
        lines += ["", _indent(item.code), ""]
    for i, ch in enumerate(item.options() if item.choices else []):
        lines.append(f"  {i + 1}) {ch.text}")
    if item.kind == "code_output":
        lines.append("  (Type exactly what it prints.)")
    elif item.kind == "explain":
        lines.append("  (Answer in two to four whole sentences.)")
    elif item.kind == "recall":
        lines.append("  (Think of the answer, then reveal it.)")
    return "\n".join(lines)


def _footer(command: str) -> str:
    return (
        f"(Run this cell in JupyterLab to answer here, or in a terminal: "
        f"python -m labkit.quiz {command})"
    )


def solution_text(item: Item) -> str:
    lines = ["Solution:"] + [f"  {i + 1}. {s}" for i, s in enumerate(item.solution)]
    lines += [
        f"Answer: {item.answer}",
        f"Quick check: {item.quick_check}",
        "Common mistakes: " + "; ".join(item.mistakes),
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ widgets


def _pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def _html_prompt(item: Item) -> str:
    out = (
        f"<b>{html.escape(item.prompt)}</b> <small>({item.topic}, {item.kind.replace('_', '-')}, "
        f"{item.difficulty})</small>"
    )
    return out + (_pre(item.code) if item.code else "")


class ItemView:
    """One item as ipywidgets: answer, Check, feedback, Hint, Show solution.

    Attributes a script (or test) drives: ``choices`` (RadioButtons, value is the option
    index), ``response`` (Text / Textarea), ``check_button``, ``hint_button``,
    ``solution_button``, ``reveal_button`` / ``knew_button`` / ``again_button`` (recall);
    read ``feedback.value``, ``hint.value``, ``solution.value`` and ``result``.
    """

    def __init__(self, item: Item, *, progress: Progress | None = None, mode: str = "practice"):
        import ipywidgets as W

        self.item, self.mode, self.progress = item, mode, progress
        self.result: Feedback | None = None
        self.choices = self.response = None
        self.feedback, self.hint, self.solution = W.HTML(""), W.HTML(""), W.HTML("")
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
        self.box = W.VBox(body + [W.HBox(buttons), self.feedback, self.hint, self.solution])
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
        return fb

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
        import ipywidgets as W

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


def lesson_items(bank: Bank, lesson, n: int = 3, seed: int = 0) -> list[Item]:
    """The items of a lesson's closing quiz: its curated ``LESSON_ITEMS`` first, then, if
    ``n`` asks for more, items drawn with ``seed`` from its ``LESSON_TOPICS`` (easy, medium,
    hard in turn) that no other lesson's quiz uses."""
    lesson = str(lesson).zfill(2)
    if lesson not in LESSON_TOPICS:
        raise QuizError(f"no quiz for lesson {lesson!r}; lessons: {', '.join(LESSON_TOPICS)}")
    items = pick(bank, ids=LESSON_ITEMS[lesson])[:n]
    taken = {i for ids in LESSON_ITEMS.values() for i in ids}
    shuffled = [it for it in pick(bank, LESSON_TOPICS[lesson], seed=seed) if it.id not in taken]
    queues = [[it for it in shuffled if it.difficulty == d] for d in DIFFICULTIES]
    while len(items) < n and any(queues):
        items += [q.pop(0) for q in queues if q][: n - len(items)]
    return items


def already_asked(lesson) -> tuple[str, ...]:
    """Ids of the items the course asks outside ``lesson``'s review: the closing quizzes and
    worked items (``LESSON_SHOWN``) of the lessons before it, and ``lesson``'s own, so that
    its test asks only new items: ``take_test(exclude=already_asked("08"))``."""
    lesson = str(lesson).zfill(2)
    if lesson not in LESSON_TOPICS:
        raise QuizError(f"no lesson {lesson!r}; lessons: {', '.join(LESSON_TOPICS)}")
    upto = [k for k in LESSON_TOPICS if k <= lesson]
    return tuple(i for k in upto for i in LESSON_ITEMS[k] + LESSON_SHOWN.get(k, ()))


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


# ----------------------------------------------------------------------------- terminal


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


if __name__ == "__main__":
    sys.exit(main())
