"""The question bank: the item format, its validation, and loading ``quizzes/*.yaml``.

An :class:`Item` is one question (prompt, answer, hint, worked solution, quick check, common
mistakes, and per kind its options, code or concept checklist); :func:`parse_item` checks one
item as read from YAML and names file, item and field at the first problem; :func:`load_bank`
loads a whole bank directory, all or nothing, into a :class:`Bank`. The format is described
in ``quizzes/README.md``.

Files are read as UTF-8 with yaml's safe loader, whose numbers keep the text they were read
from: a text field refuses what YAML turned into something else (``12:30`` read as 750,
``0.10`` as 0.1, ``yes`` as True, ``~`` as null, a date) and asks for quotes.

Imports: the standard library and yaml; no other labkit module.
"""

from __future__ import annotations

import datetime
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

BANK_DIR = Path(__file__).resolve().parents[2] / "quizzes"
KINDS = ("recall", "choice", "code_output", "find_bug", "scenario", "explain")
DIFFICULTIES = ("easy", "medium", "hard")

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


class _YamlInt(int):
    """An int read from YAML, with the text it was read from (``yaml_text``)."""


class _YamlFloat(float):
    """A float read from YAML, with the text it was read from (``yaml_text``)."""


def _keep_text(number_type, construct):
    def constructor(loader, node):
        value = number_type(construct(loader, node))
        value.yaml_text = node.value
        return value

    return constructor


class _BankLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """yaml's safe loader, except that numbers keep the text they were read from, so that
    a text field can refuse ``12:30`` (read as 750) or ``0.10`` (read as 0.1)."""


_BankLoader.add_constructor(
    "tag:yaml.org,2002:int", _keep_text(_YamlInt, yaml.SafeLoader.construct_yaml_int))
_BankLoader.add_constructor(
    "tag:yaml.org,2002:float", _keep_text(_YamlFloat, yaml.SafeLoader.construct_yaml_float))
_QUOTE = "quote the value in the file"


def _changed_by_yaml(value) -> str | None:
    """Why an unquoted YAML value is not the text its author wrote, or None if it is."""
    if isinstance(value, bool):
        return (f"YAML reads an unquoted yes, no, on, off, true or false as true or false "
                f"(here {value}); {_QUOTE}")
    if value is None:
        return ("YAML reads an empty value, ~ or null as no value at all; write the text, "
                "quoted if it is ~ or null")
    if isinstance(value, (datetime.date, datetime.datetime)):
        return f"YAML reads {value} as a date; {_QUOTE}"
    written = getattr(value, "yaml_text", None)
    if written is not None and written != str(value):
        return f"YAML reads {written} as the number {value}; {_QUOTE}, e.g. '{written}'"
    return None


def _text(value, where, item_id, fld) -> str:
    # YAML reads `answer: 14` as an int; numbers are accepted and kept as their text when it
    # is the text written (not for 12:30, 0.10, 1e3, yes, ~: see _changed_by_yaml).
    problem = _changed_by_yaml(value)
    if problem is not None:
        raise _fail(where, item_id, fld, problem)
    if not isinstance(value, (str, int, float)):
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
    if not isinstance(raw, list) or (not raw and fld == "concepts"):
        # an item may have no misconceptions of its own: the scorer's global ones still apply
        raise _fail(where, item_id, fld, "must be a non-empty list" if fld == "concepts"
                    else "must be a list (empty if the global misconceptions suffice)")
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
        raw = path.read_bytes()
    except OSError as exc:
        raise QuizError(f"{where}: cannot read the file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise QuizError(
            f"{where}: not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
            f"(line {line}); save the file as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_BankLoader)  # a safe loader (see _BankLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise QuizError(f"{where}: not valid YAML{at}: {problem}") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. date 2026-13-45
        raise QuizError(f"{where}: a value YAML cannot read ({str(exc)[:100]})") from None
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
    return topic, _text(data["title"], where, None, "title"), items
