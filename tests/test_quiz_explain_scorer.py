"""labkit.quiz's explain scorer (labkit/quiz/explain_scorer.py, explain_text.py,
explain_roles.py, lexicon.py): the graded answer set, paraphrases, formulas, negation,
keyword salad, and every global misconception on an item that does not list it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from labkit import quiz

ROOT = Path(__file__).resolve().parent.parent
BANK = quiz.load_bank(quiz.BANK_DIR)
GRADED = yaml.safe_load((ROOT / "tests/fixtures/explain_graded.yaml").read_text())

#: The grader's misconception labels that name one of the scorer's global misconceptions, and
#: which. The grader's other labels (lora-lower-lr, qlora-removes-activations,
#: lora-is-sharding) name item-specific mistakes: for them any misconception flagged counts,
#: and they are reported but not part of the 90 % check. "full-4bit-training" (QLoRA trains
#: the 4-bit weights) is the scorer's "quantized-base-trained", part of "which part is 4-bit".
LABELS = {
    "adapters-quantized": "adapters-in-4-bit",
    "full-4bit-training": "quantized-base-trained",
    "lora-shrinks-model": "lora-shrinks-model",
    "lora-from-scratch": "lora-from-scratch",
    "4bit-faster": "quantization-faster",
    "lora-faster-per-step": "lora-faster-per-step",
    "merged-during-training": "merged-during-training",
    "both-zero-init": "both-start-at-zero",
}


def explain(item_id: str, text: str):
    return quiz.check(BANK.by_id[item_id], text).explain


def test_graded_set_agrees_with_the_grader():
    passes = false_passes = named = named_n = other = other_n = agree = 0
    n_pass = sum(r["grade"] == "pass" for r in GRADED)
    for r in GRADED:
        res = explain(r["item"], r["answer"])
        graded_pass = r["grade"] == "pass"
        passes += graded_pass and res.passed
        false_passes += res.passed and r["grade"] in ("fail", "misconception")
        agree += res.passed == graded_pass
        if r["grade"] == "misconception" and r["misconception"] in LABELS:
            named_n += 1
            named += LABELS[r["misconception"]] in res.misconception_ids
        elif r["grade"] == "misconception":
            other_n += 1
            other += bool(res.misconceptions)
    numbers = (
        f"pass-graded passed {passes}/{n_pass}, false passes {false_passes}, named global "
        f"misconception flagged {named}/{named_n} (item-specific {other}/{other_n}), "
        f"agreement {agree}/{len(GRADED)} = {100 * agree / len(GRADED):.0f}%"
    )
    assert len(GRADED) >= 80 and n_pass >= 0.35 * len(GRADED), numbers
    assert passes >= 0.85 * n_pass, numbers
    assert false_passes == 0, numbers
    assert named >= 0.90 * named_n, numbers
    assert agree >= 0.85 * len(GRADED), numbers


def test_every_grader_label_is_mapped_or_item_specific():
    labels = {r["misconception"] for r in GRADED if r["grade"] == "misconception"}
    ids = {m.id for m in quiz.GLOBAL_MISCONCEPTIONS}
    assert set(LABELS.values()) <= ids
    assert labels - set(LABELS) == {"lora-lower-lr", "qlora-removes-activations",
                                    "lora-is-sharding"}


@pytest.mark.parametrize("text", [
    "LoRA keeps the pretrained weights fixed and only trains two small matrices.",
    "The original weights are kept unchanged while a low-rank update is learned.",
    "The base model is not updated at all; a small adapter learns the new task.",
    "W stays untouched and LoRA learns two thin matrices B and A.",
    "Freezing the pretrained weights, LoRA trains a pair of tiny matrices instead.",
])
def test_paraphrases_of_frozen_base_and_small_matrices_are_credited(text):
    res = explain("lb-explain", text)
    assert {"the base stays frozen", "small low-rank matrices are trained"} <= set(res.hit)
    assert res.misconceptions == []


@pytest.mark.parametrize("formula", ["r(d + k)", "r*(d+k)", "r (d+k)", "r·(d+k)",
                                     "d*r + r*k", "dr + rk", "r times d plus k"])
def test_formula_spellings_are_one_concept(formula):
    res = explain("lp-explain", f"B is d by r and A is r x k, so together they hold {formula} "
                                "numbers, a small fraction of d*k because r is much smaller "
                                "than d and k.")
    assert res.passed, res.summary()


@pytest.mark.parametrize("bits", ["4 bits", "four bits", "4-bit NF4", "NF4"])
def test_four_bits_spellings(bits):
    res = explain("ql-explain", f"QLoRA stores the frozen base model in {bits}, while the "
                                "adapters train in 16-bit, so it needs far less memory and "
                                "fits on one GPU.")
    assert res.passed, res.summary()


@pytest.mark.parametrize("text, concept, credited", [
    ("The base is not updated during training.", "the base stays frozen", True),
    ("The base weights aren't trained; only adapters are.", "the base stays frozen", True),
    ("The pretrained weights are not frozen.", "the base stays frozen", False),
    ("It does not use small matrices or an adapter.", "small low-rank matrices are trained",
     False),
])
def test_negation_is_not_read_as_its_opposite(text, concept, credited):
    assert (concept in explain("lb-explain", text).hit) is credited


@pytest.mark.parametrize("item_id, text", [
    ("ql-explain", "The adapters are not quantized; the frozen base is stored in 4 bits."),
    ("ql-explain", "The base is in 4 bits rather than 16-bit, and the adapters stay in bf16."),
    ("lb-explain", "LoRA does not train a model from scratch and never replaces the network."),
    ("ln-explain", "It won't compress the model or speed up each training step."),
    ("ln-explain", "Neither does it make the model smaller, nor does it generate data."),
    ("lb-explain", "Instead of training all the weights, LoRA trains two small matrices."),
    ("ll-explain", "B starts at zero while A is random, so the layer starts as the original."),
    ("ll-explain", "The adapters are merged into W after training, not during training."),
    ("qz-explain", "Quantization saves memory rather than time: steps are not faster."),
    ("bf-explain", "People often think LoRA makes the model smaller. It does not."),
])
def test_negated_misconceptions_are_not_flagged(item_id, text):
    assert explain(item_id, text).misconceptions == []


@pytest.mark.parametrize("text", [
    "DoRA decomposes each weight into a magnitude and a direction.",
    "PiSSA decomposes the weight matrix with an SVD and puts its top r directions in B and A.",
    "LoftQ approximates the residual of the weight with a low-rank product B A.",
    "B A is a low-rank approximation of the quantization error of the 4-bit base.",
])
def test_what_the_variants_really_decompose_is_not_a_misconception(text):
    """DoRA, PiSSA and LoftQ do split or approximate the weight (or its quantization error);
    said of them, "decompose the weight" is true, and on the beyond-lora item it must not be
    read as "LoRA shrinks the model" or "adapters in 4 bits". The same verb said of LoRA's
    weight still is (the lora-shrinks-model case below and this one)."""
    assert explain("bl-explain-rslora", text).misconceptions == []
    assert explain("bl-explain-rslora", "LoRA decomposes the weight matrix into two low-rank "
                   "matrices.").misconception_ids == ["lora-shrinks-model"]


#: One fluent statement of each global misconception, on an item whose own list lacks it.
GLOBAL_CASES = [
    ("adapters-in-4-bit", "lb-explain", "LoRA adapters are stored in 4 bits to save memory."),
    ("adapters-in-4-bit", "mem-explain", "QLoRA keeps the base model in 16-bit precision."),
    ("quantized-base-trained", "qz-explain",
     "QLoRA updates the 4-bit weights directly during fine-tuning."),
    ("lora-shrinks-model", "ql-explain", "LoRA compresses the model into a much smaller one."),
    ("lora-from-scratch", "sc-explain", "LoRA trains a small new model from scratch."),
    ("quantization-faster", "lb-explain",
     "With 4-bit weights every training step runs much faster."),
    ("lora-faster-per-step", "lp-explain",
     "Because so few weights train, each LoRA step is ten times faster than full fine-tuning."),
    ("merged-during-training", "ft-explain",
     "The adapter is merged into the weights after every step of training."),
    ("both-start-at-zero", "lp-explain", "A and B are both initialised to zero."),
    ("all-weights-trained", "qz-explain", "LoRA still updates all the weights of the model."),
]


def test_global_cases_cover_every_global_misconception():
    assert {c[0] for c in GLOBAL_CASES} == {m.id for m in quiz.GLOBAL_MISCONCEPTIONS}


@pytest.mark.parametrize("mis_id, item_id, text", GLOBAL_CASES)
def test_each_global_misconception_is_flagged_on_any_item(mis_id, item_id, text):
    item = BANK.by_id[item_id]
    own = " ".join(p for m in item.misconceptions for p in m["phrases"])
    res = quiz.check(item, text).explain
    assert mis_id in res.misconception_ids, (own, res.summary())
    assert not res.passed
    message = next(m.message for m in quiz.GLOBAL_MISCONCEPTIONS if m.id == mis_id)
    assert message in res.misconceptions and message in res.summary()


def test_a_flagged_misconception_fails_an_otherwise_complete_answer():
    item = BANK.by_id["ql-explain"]
    assert quiz.check(item, item.answer).correct
    res = explain("ql-explain", item.answer + " The LoRA adapters are quantized to 4 bits too.")
    assert res.missed == [] and not res.passed
    assert res.misconception_ids == ["adapters-in-4-bit"]


@pytest.mark.parametrize("salad", [
    "LoRA low rank adaptation frozen weights small matrices adapter fewer parameters memory.",
    "low-rank adaptation, frozen weights, small matrices, adapter, fewer parameters, less memory",
    "frozen weights\nsmall matrices\nadapter\nfewer parameters\ncheap\nfine-tune a task",
])
def test_keyword_salad_scores_nothing(salad):
    res = explain("lb-explain", salad)
    assert res.hit == [] and "Write whole sentences" in res.summary()


def test_off_topic_and_questions_earn_nothing():
    assert explain("lb-explain", "LoRa is a long-range radio protocol for sensors.").hit == []
    question = explain("ql-explain", "Are the adapters stored in 4 bits? Is the base frozen?")
    assert question.hit == [] and question.misconceptions == []


def test_telegraphic_notes_with_symbols_count():
    res = explain("ll-explain", "y = W x + (alpha/r) B A x, W frozen. B = 0 at init -> BA = 0. "
                                "Merge: W <- W + (alpha/r) BA after training.")
    assert res.passed, res.summary()


def test_checklist_lists_every_concept_in_order():
    item = BANK.by_id["lb-explain"]
    res = explain("lb-explain", "The pretrained weights stay frozen during fine-tuning.")
    assert [name for name, _ in res.checklist()] == [c["name"] for c in item.concepts]
    assert dict(res.checklist())["the base stays frozen"] is True
    assert "  [x] the base stays frozen" in res.summary()
    assert res.summary().startswith(f"1/{len(item.concepts)} concepts.")


def test_scoring_is_fast_and_the_import_stays_light():
    item = BANK.by_id["mem-explain"]
    quiz.check(item, "warm up the lemmatiser")
    start = time.perf_counter()
    for r in GRADED[:20]:
        quiz.check(BANK.by_id[r["item"]], r["answer"])
    assert (time.perf_counter() - start) / 20 < 0.25
    code = ("import sys, labkit.quiz; assert 'lemminflect' not in sys.modules; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
