"""The question bank itself: it loads, it is big and varied enough, and its answers are true.

Code answers are checked by running the code; explain items' model answers must pass their
own checklist; generated numeric items are checked against an independent computation.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import itertools
import re
from collections import Counter

import pytest

from labkit import quiz

BANK = quiz.load_bank(quiz.BANK_DIR, cache=False)
HAND_WRITTEN = [it for it in BANK.items if not it.generated]
NEAR_DUPLICATE = 0.75  # SequenceMatcher ratio of two prompts at or above this is a near-duplicate


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
    assert len(HAND_WRITTEN) >= 40
    topics = Counter(it.topic for it in HAND_WRITTEN)
    kinds = Counter(it.kind for it in HAND_WRITTEN)
    levels = Counter(it.difficulty for it in HAND_WRITTEN)
    assert all(topics[t] >= 4 for t in BANK.titles), topics
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
