"""The question bank itself: it loads, it is big and varied enough, and its answers are true.

Code answers are checked by running the code; explain items' model answers must pass their
own checklist; generated numeric items are checked against an independent computation.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import itertools
import json
import re
from collections import Counter

import pytest

from labkit import quiz

BANK = quiz.load_bank(quiz.BANK_DIR, cache=False)
HAND_WRITTEN = [it for it in BANK.items if not it.generated]
NEAR_DUPLICATE = 0.75  # SequenceMatcher ratio of two prompts at or above this is a near-duplicate
SAME_WORDS = 0.8  # two prompts whose sets of words overlap more (Jaccard) are near-identical
MIN_ITEMS, MIN_PER_TOPIC = 90, 8
OPTION_KINDS = ("choice", "scenario", "find_bug")
LESSONS = quiz.BANK_DIR.parent / "lessons"


def run(code: str) -> str:
    """What ``code`` prints, stripped (run in a fresh namespace)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<quiz item>", "exec"), {})
    return out.getvalue().strip()


def by_kind(kind):
    return [pytest.param(it, id=it.id) for it in BANK.items if it.kind == kind]


def test_every_topic_file_loads_with_its_items():
    # the six core topics are all there; any other topic file is a lesson's own topic
    assert set(quiz.CORE_TOPICS) <= set(BANK.titles)
    files = {p.name for p in quiz.BANK_DIR.glob("*.yaml")}
    assert files == {f"{t.replace('-', '_')}.yaml" for t in BANK.titles}
    assert {it.source for it in BANK.items} == {f"quizzes/{f}" for f in files}
    assert len({it.id for it in BANK.items}) == len(BANK.items)


def test_every_lesson_topic_exists_and_every_extra_topic_is_asked_by_a_lesson():
    asked = {t for topics in quiz.LESSON_TOPICS.values() for t in topics}
    assert asked <= set(BANK.titles), asked - set(BANK.titles)
    extra = set(BANK.titles) - set(quiz.CORE_TOPICS)
    assert extra <= asked, f"topics no lesson quiz draws on: {sorted(extra - asked)}"
    assert set(quiz.REVIEW_TOPICS) == set(quiz.CORE_TOPICS)


def test_counts_per_topic_kind_and_difficulty():
    assert len(HAND_WRITTEN) >= MIN_ITEMS, f"{len(HAND_WRITTEN)} items, at least {MIN_ITEMS}"
    topics = Counter(it.topic for it in HAND_WRITTEN)
    kinds = Counter(it.kind for it in HAND_WRITTEN)
    levels = Counter(it.difficulty for it in HAND_WRITTEN)
    short = {t: topics[t] for t in BANK.titles if topics[t] < MIN_PER_TOPIC}
    assert short == {}, f"topics with fewer than {MIN_PER_TOPIC} items: {short}"
    assert all(kinds[k] >= 3 for k in quiz.KINDS), kinds
    assert all(levels[d] >= 10 for d in quiz.DIFFICULTIES), levels
    # the 10-question test needs at least 3 / 4 / 3 scorable items of each difficulty
    scored = Counter(it.difficulty for it in HAND_WRITTEN if it.kind in quiz.SCORED_KINDS)
    assert scored["easy"] >= 3 and scored["medium"] >= 4 and scored["hard"] >= 3, scored


@pytest.mark.parametrize("topic", sorted(BANK.titles))
def test_every_topic_has_every_kind_and_difficulty(topic):
    items = [it for it in HAND_WRITTEN if it.topic == topic]
    assert {it.kind for it in items} == set(quiz.KINDS)
    assert {it.difficulty for it in items} == set(quiz.DIFFICULTIES)


def test_the_core_topics_alone_still_fill_a_test():
    # the review (flashcards, the 10-question test) draws on the core topics only
    core = [it for it in HAND_WRITTEN if it.topic in quiz.CORE_TOPICS]
    assert len(core) >= 40
    scored = Counter(it.difficulty for it in core if it.kind in quiz.SCORED_KINDS)
    assert scored["easy"] >= 3 and scored["medium"] >= 4 and scored["hard"] >= 3, scored


def near_duplicates(items, threshold=NEAR_DUPLICATE):
    found = []
    for a, b in itertools.combinations(items, 2):
        ratio = difflib.SequenceMatcher(None, a.prompt.lower(), b.prompt.lower()).ratio()
        if ratio >= threshold:
            found.append((a.id, b.id, round(ratio, 2)))
    return found


def test_no_near_duplicate_prompts():
    assert near_duplicates(HAND_WRITTEN) == []


def word_set(text: str) -> set[str]:
    """The words of ``text``, lower-cased, without punctuation (``rank-8`` is two words)."""
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def same_words(items, threshold=SAME_WORDS):
    """Pairs of items whose prompts share more than ``threshold`` of their words (Jaccard)."""
    found = []
    for a, b in itertools.combinations(items, 2):
        wa, wb = word_set(a.prompt), word_set(b.prompt)
        overlap = len(wa & wb) / len(wa | wb)
        if overlap > threshold:
            found.append((a.id, b.id, round(overlap, 2)))
    return found


def test_no_two_prompts_share_nearly_all_their_words():
    pairs = same_words(HAND_WRITTEN)
    assert pairs == [], "prompts that share most of their words (merge or reword one): " + \
        ", ".join(f"{a} ~ {b} ({j})" for a, b, j in pairs)


def test_the_word_overlap_check_catches_a_copy_in_another_order():
    """Reordered, a copy escapes SequenceMatcher but not the word overlap."""
    original = BANK.by_id["lp-trainable-count"]
    copy = quiz.Item(**{**original.__dict__, "id": "copy", "prompt": (
        "How many parameters train when a 1024 x 1024 linear layer gets a rank-8 adapter?")})
    assert near_duplicates([original, copy]) == []
    assert same_words([original, copy, BANK.by_id["qz-why"]]) == [
        ("lp-trainable-count", "copy", pytest.approx(0.93, abs=0.01))]


def test_the_near_duplicate_check_catches_a_reworded_copy():
    original = BANK.by_id["lp-trainable-count"]
    copy = quiz.Item(
        **{
            **original.__dict__,
            "id": "copy",
            "prompt": original.prompt.replace("1024 x 1024", "2048 x 2048"),
        }
    )
    assert near_duplicates([original, copy, BANK.by_id["qz-why"]]) == [
        ("lp-trainable-count", "copy", pytest.approx(0.95, abs=0.05))
    ]


@pytest.mark.parametrize("item", by_kind("code_output"))
def test_code_output_answer_is_what_the_code_prints(item):
    assert run(item.code) == item.answer


@pytest.mark.parametrize("item", by_kind("find_bug"))
def test_find_bug_fixed_code_is_right_and_buggy_code_is_not(item):
    assert run(item.fixed) == item.output
    assert run(item.code) != item.output
    assert item.code != item.fixed


@pytest.mark.parametrize("item", by_kind("find_bug"))
def test_find_bug_prompt_states_both_outputs(item):
    # the prompt promises what the fixed code prints and what the buggy one prints
    assert item.output in item.prompt
    assert run(item.code) in item.prompt


@pytest.mark.parametrize("item", by_kind("explain"))
def test_explain_model_answer_passes_its_own_checklist(item):
    fb = quiz.check(item, item.answer)
    assert fb.explain.missed == [] and fb.explain.misconceptions == [] and fb.correct


@pytest.mark.parametrize("item", by_kind("explain"))
def test_explain_concepts_are_needed(item):
    """A checklist has several concepts (misconceptions: the item's own, if any, and the
    global ones, checked on every item); a bland sentence earns nothing."""
    assert len(item.concepts) >= 3 and len(quiz.GLOBAL_MISCONCEPTIONS) >= 8
    fb = quiz.check(item, "This is a sentence about the topic that says nothing at all.")
    assert fb.explain.hit == []


@pytest.mark.parametrize("item", [pytest.param(it, id=it.id) for it in HAND_WRITTEN])
def test_every_item_is_complete(item):
    assert item.prompt and item.hint and item.answer and item.quick_check
    assert len(item.solution) >= 2 and len(item.mistakes) >= 1
    if item.choices:
        assert sum(c.text == item.answer for c in item.choices) == 1
        assert len(item.choices) >= 3


def test_generated_lora_count_items_match_an_independent_count():
    texts = set()
    for seed in range(12):
        item = quiz.generate_item("lora-count", seed)
        d, k, r = map(int, re.search(r"A (\d+) x (\d+) .* rank-(\d+)", item.prompt).groups())
        assert item.answer == f"{r * (d + k):,}"
        assert len({c.text for c in item.choices}) == len(item.choices) >= 3
        assert item == quiz.generate_item("lora-count", seed)  # same seed, same item
        texts.add(item.prompt)
    assert len(texts) >= 6  # fresh numbers from different seeds


def test_generated_lora_count_uses_labkit_lora():
    from labkit import lora

    item = quiz.generate_item("lora-count", 3)
    d, k, r = map(int, re.search(r"A (\d+) x (\d+) .* rank-(\d+)", item.prompt).groups())
    assert item.answer == f"{lora.adapter_params(d, k, r):,}"


def test_generated_model_bytes_items_match_an_independent_computation():
    bits = {
        "bfloat16": 16,
        "NF4 (blocksize 64, fp32 scales)": 4 + 32 / 64,
        "NF4 (blocksize 64) with double quantization": 4 + 8 / 64 + 32 / (64 * 256),
    }
    seen = set()
    for seed in range(15):
        item = quiz.generate_item("model-bytes", seed)
        m = re.search(r"A (\d+)B-parameter model's weights are stored in (.+)\. How", item.prompt)
        params, fmt = int(m.group(1)), m.group(2)
        assert item.answer == f"{params * bits[fmt] / 8:.2f} GB"
        assert len({c.text for c in item.choices}) == len(item.choices) >= 3
        seen.add(fmt)
    assert len(seen) == 3


def test_generated_model_bytes_uses_labkit_quant():
    from labkit import quant

    for seed in range(15):
        item = quiz.generate_item("model-bytes", seed)
        if "double quantization" in item.prompt:
            break
    bits = quant.bits_per_weight("nf4", 64, True)
    params = int(re.search(r"A (\d+)B-parameter", item.prompt).group(1))
    assert item.answer == f"{params * bits / 8:.2f} GB"
    assert f"{bits:.3f} bits per weight" in item.solution[0]


def test_generated_kind_must_be_known():
    with pytest.raises(ValueError, match="unknown generated kind 'x'; use 'lora-count'"):
        quiz.generate_item("x", 0)


# ------------------------------------------------------------- what the bank must cover


COVERED = {
    # what a paged optimizer does: its state can move to CPU RAM when the GPU runs short
    "paged optimizer": lambda it: "paged" in it.prompt.lower() and "cpu" in it.answer.lower(),
    # per-step speed, LoRA against full fine-tuning: the backward pass still runs through the
    # frozen layers, so a step is not much faster
    "LoRA vs full fine-tuning, per step": lambda it: (
        "full fine-tuning" in it.prompt.lower() and "step" in it.prompt.lower()
        and "backward" in it.answer.lower()),
    # per-step speed, QLoRA against LoRA: slower, because the base is dequantized
    "QLoRA vs LoRA, per step": lambda it: (
        "qlora" in it.prompt.lower() and "lora" in it.prompt.lower().replace("qlora", "")
        and "slower" in it.answer.lower() and "dequantiz" in it.answer.lower()),
    # a negative stem: "which of these is NOT ..."
    "a negative stem": lambda it: bool(re.search(r"\bNOT\b", it.prompt)),
}


@pytest.mark.parametrize("subject", COVERED)
def test_the_bank_asks_about(subject):
    found = [it.id for it in HAND_WRITTEN
             if it.kind in quiz.SCORED_KINDS and COVERED[subject](it)]
    assert found, f"no scored item asks about {subject}"


def test_a_negative_stem_is_among_the_core_topics_and_asks_for_a_benefit():
    """ "Which of these is NOT a benefit of LoRA?": the right option is the false claim."""
    negative = [it for it in HAND_WRITTEN if re.search(r"\bNOT\b", it.prompt)]
    assert any(it.topic in quiz.CORE_TOPICS and "benefit" in it.prompt.lower()
               for it in negative), [it.id for it in negative]


@pytest.mark.parametrize("item", [pytest.param(it, id=it.id) for it in HAND_WRITTEN
                                  if it.kind in OPTION_KINDS])
def test_every_wrong_option_has_its_own_feedback(item):
    """One specific line per wrong option: why that option is wrong, not a bare "No"."""
    wrong = [c for c in item.choices if c.text != item.answer]
    lines = [c.feedback.strip() for c in wrong]
    assert all(len(line.split()) >= 6 for line in lines), lines
    assert len(set(lines)) == len(lines), f"{item.id}: two wrong options share a feedback line"
    assert len(item.choices) == 4, f"{item.id}: {len(item.choices)} options (four, as the rest)"


def _lesson_text(lesson: str) -> str:
    """What a lesson says and prints (markdown and stored outputs; not its code, whose format
    specs are full of small numbers), without the cells that show quiz items, with thousands
    separators removed."""
    found = sorted(LESSONS.glob(f"{lesson}_*.ipynb"))
    assert found, f"quiz.LESSON_ITEMS has lesson {lesson}, but lessons/ has no {lesson}_*.ipynb"
    nb = found[0]
    parts = []
    for cell in json.loads(nb.read_text())["cells"]:
        src = "".join(cell["source"])
        if re.search(r"quiz\.|worked\(|by_id", src):
            continue
        if cell["cell_type"] == "markdown":
            parts.append(src)
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text") or out.get("data", {}).get("text/plain") or ""))
    return "\n".join(parts).replace(",", "")


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"(?<![\d.])\d+(?:\.\d+)?(?![\d])", text.replace(",", "")))


@pytest.mark.parametrize("lesson", sorted(quiz.LESSON_ITEMS))
def test_no_lesson_prints_the_answer_of_its_closing_quiz(lesson):
    """A closing quiz checks what the lesson taught, not whether the learner can copy a
    number the lesson printed a few cells earlier: the numbers of a code_output answer, or of
    a find_bug item's right output, must not all appear in what the lesson says or prints."""
    said = _numbers(_lesson_text(lesson))
    shown = []
    for item_id in quiz.LESSON_ITEMS[lesson]:
        item = BANK.by_id[item_id]
        value = {"code_output": item.answer, "find_bug": item.output}.get(item.kind)
        if value and _numbers(value) and _numbers(value) <= said:
            shown.append(f"{item_id} ({value})")
    assert shown == [], f"lesson {lesson} prints the answer of its closing item(s): {shown}"
