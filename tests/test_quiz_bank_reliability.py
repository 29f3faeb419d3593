"""labkit.quiz's bank loader against what hand-edited files do (labkit/quiz/bank.py): values
that YAML silently turns into something else, bytes that are not UTF-8, and random mutations
of the real bank files."""

from __future__ import annotations

import random
import re
import shutil

import pytest
import yaml
from quiz_mutations import mutate_bytes, mutate_tree

from labkit import quiz

CHOICE_ITEM = """\
topic: lora-basics
title: T
items:
  - id: t-one
    topic: lora-basics
    kind: choice
    difficulty: easy
    prompt: When does the run end?
    choices:
      - text: {first}
      - text: 'later'
        feedback: No.
    answer: {answer}
    hint: h
    solution: [s1]
    quick_check: q
    mistakes: [m]
"""

FIND_BUG_ITEM = """\
topic: lora-basics
title: T
items:
  - id: t-bug
    topic: lora-basics
    kind: find_bug
    difficulty: hard
    prompt: What is wrong?
    code: print(1)
    fixed: print(2)
    output: {output}
    choices:
      - text: 'the constant'
      - text: 'nothing'
        feedback: No.
    answer: 'the constant'
    hint: h
    solution: [s1]
    quick_check: q
    mistakes: [m]
"""


def load(tmp_path, text: str | bytes):
    bank = tmp_path / "bank"
    bank.mkdir(exist_ok=True)
    path = bank / "lora_basics.yaml"
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return quiz.load_bank(bank, cache=False)


QUOTE = "quote the value in the file, e.g. "
LOSSY = [
    # (first choice's text, answer, the field named, what the message says)
    ("'12:30'", "12:30", "answer", r"YAML reads 12:30 as the number 750; " + QUOTE + "'12:30'"),
    ("12:30", "'12:30'", "choices[0].text",
     r"YAML reads 12:30 as the number 750; " + QUOTE + "'12:30'"),
    ("0.10", "'0.10'", "choices[0].text", r"YAML reads 0.10 as the number 0.1; " + QUOTE
     + "'0.10'"),
    ("'1.0e+3'", "1.0e+3", "answer", r"YAML reads 1.0e\+3 as the number 1000.0; " + QUOTE
     + "'1.0e\\+3'"),
    ("'yes'", "yes", "answer",
     r"YAML reads an unquoted yes, no, on, off, true or false as true or false \(here True\); "
     r"quote the value in the file$"),
    ("off", "'off'", "choices[0].text",
     r"YAML reads an unquoted yes, no, on, off, true or false as true or false \(here False\)"),
    ("'x'", "null", "answer",
     r"YAML reads an empty value, ~ or null as no value at all; write the text, quoted"),
    ("'x'", "", "answer", r"YAML reads an empty value, ~ or null as no value at all"),
    ("'2026-01-01'", "2026-01-01", "answer",
     r"YAML reads 2026-01-01 as a date; quote the value in the file$"),
]


@pytest.mark.parametrize("first, answer, field, message", LOSSY,
                         ids=[f"{a}-{f}" for _, a, f, _ in LOSSY])
def test_values_yaml_turns_into_something_else_are_refused(tmp_path, first, answer, field,
                                                           message):
    with pytest.raises(quiz.QuizError) as err:
        load(tmp_path, CHOICE_ITEM.format(first=first, answer=answer))
    text = str(err.value)
    assert text.startswith(f"bank/lora_basics.yaml: item 't-one': field '{field}': "), text
    assert re.search(message, text), text


@pytest.mark.parametrize("output", ["12:30", "0.50", "on", "~"])
def test_a_find_bug_output_yaml_would_change_is_refused(tmp_path, output):
    with pytest.raises(quiz.QuizError, match=r"^bank/lora_basics\.yaml: item 't-bug': field "
                       r"'output': YAML reads "):
        load(tmp_path, FIND_BUG_ITEM.format(output=output))
    assert load(tmp_path, FIND_BUG_ITEM.format(output=f"'{output}'")).items[0].output == output


@pytest.mark.parametrize("plain", ["14", "0.5", "-3", "1.25"])
def test_numbers_whose_text_survives_are_still_accepted(tmp_path, plain):
    bank = load(tmp_path, CHOICE_ITEM.format(first=plain, answer=plain))
    assert bank.items[0].answer == plain and bank.items[0].choices[0].text == plain


def test_every_shipped_bank_file_still_loads():
    bank = quiz.load_bank(quiz.BANK_DIR, cache=False)
    assert len(bank.items) >= 40
    assert {it.source for it in bank.items} == {
        f"quizzes/{p.name}" for p in quiz.BANK_DIR.glob("*.yaml")
    }


def test_the_readme_says_to_quote_such_values():
    readme = " ".join((quiz.BANK_DIR / "README.md").read_text().split())
    assert "`12:30`" in readme and "`0.10`" in readme and "`yes`" in readme
    assert "the loader refuses such a value, naming the file, the item and the field" in readme


def test_a_byte_that_is_not_utf8_is_named_with_its_offset(tmp_path):
    text = CHOICE_ITEM.format(first="'soon'", answer="'soon'").encode()
    at = text.index(b"When")
    broken = text[:at] + b"\xe9" + text[at:]  # a Latin-1 e-acute inside the prompt
    with pytest.raises(quiz.QuizError, match=rf"^bank/lora_basics\.yaml: not valid UTF-8: byte "
                       rf"0xe9 at offset {at} \(line 8\); save the file as UTF-8$"):
        load(tmp_path, broken)


# ------------------------------------------------------------------------------ fuzzing

FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the fuzz's own reading and
FAST_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # writing: fast, as load_bank's
SCALARS = [None, True, False, 750, 0.1, "", "12:30", [], {}, [None], {"text": None}, "x"]
YAML_BYTES = b":-[]{}'\"#&*!|>%@`\t\n \xff\x00"


def test_random_mutations_of_the_real_bank_load_or_raise_quiz_error_naming_the_file(tmp_path):
    files = sorted(quiz.BANK_DIR.glob("*.yaml"))
    parsed = {f: yaml.load(f.read_bytes(), Loader=FAST_LOADER) for f in files}
    rng = random.Random(20261204)
    outcomes = {"loaded": 0, "refused": 0}
    for n in range(200):
        source = rng.choice(files)
        raw = source.read_bytes()
        if n % 2:
            content = mutate_bytes(rng, raw, YAML_BYTES, [b"12:30 ", b"~", b"- ", b"\n  "])
        else:
            tree = mutate_tree(rng, parsed[source], SCALARS)
            content = yaml.dump(tree, Dumper=FAST_DUMPER, sort_keys=False).encode()
        bank = tmp_path / f"b{n}"
        bank.mkdir()
        (bank / source.name).write_bytes(content)
        try:
            quiz.load_bank(bank, cache=False)
            outcomes["loaded"] += 1
        except quiz.QuizError as exc:
            assert str(exc).startswith(f"b{n}/{source.name}: "), exc
            assert len(str(exc)) > len(f"b{n}/{source.name}: ") + 10
            outcomes["refused"] += 1
        shutil.rmtree(bank)
    assert min(outcomes.values()) > 10, outcomes
