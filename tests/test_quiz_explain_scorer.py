"""labkit.quiz's explain scorer (labkit/quiz/explain_scorer.py), through quiz.check on a bank
item: credit, misconceptions, negation, keyword salad, word forms."""

from __future__ import annotations

from labkit import quiz

BANK = quiz.load_bank(quiz.BANK_DIR)

EXPLAIN = BANK.by_id["lb-explain"]


def explain(text):
    return quiz.check(EXPLAIN, text).explain


def test_explain_good_answer_in_other_words_scores_full():
    res = explain(
        "LoRA is short for Low-Rank Adaptations. You freeze the pretrained weights, and they "
        "stay fixed during training. Instead you train two matrices, A and B. That way far "
        "fewer weights need gradients and optimizer memory."
    )
    assert (res.hit, res.missed, res.misconceptions) == (
        [c["name"] for c in EXPLAIN.concepts],
        [],
        [],
    )
    assert res.summary().startswith("4/4 concepts.") and res.passed


def test_explain_terse_sentence_is_not_counted_and_the_feedback_says_why():
    res = explain("LoRA is short for low-rank adaptation. Far fewer weights need gradients.")
    assert res.hit == ["the name (low-rank adaptation)"]
    assert "Sentence(s) 2 read like a list of terms" in res.summary()


def test_explain_partial_answer_names_what_is_missing():
    res = explain(
        "It is a way to fine-tune where the original weights are frozen. The model "
        "is then adapted with an adapter."
    )
    assert res.summary().splitlines()[0] == "2/4 concepts."
    assert res.missed == ["the name (low-rank adaptation)", "far fewer trainable parameters"]
    assert (
        "Missed: the name (low-rank adaptation), far fewer trainable parameters." in res.summary()
    )
    assert not res.passed


def test_explain_misconception_is_flagged_not_credited():
    res = explain(
        "Low-rank adaptation is a method that trains all the weights of the model "
        "again. It is a new model built from scratch."
    )
    assert res.hit == ["the name (low-rank adaptation)"]
    assert res.misconceptions == [m["message"] for m in EXPLAIN.misconceptions]
    assert not res.passed


def test_explain_negated_misconception_is_fine():
    res = explain(
        "LoRA does not train all the weights of the network. The pretrained weights stay frozen."
    )
    assert res.misconceptions == [] and res.hit == ["the base stays frozen"]


def test_explain_keyword_salad_scores_nothing():
    salad = (
        "low-rank adaptation, frozen weights, small matrices, adapter, fewer parameters, "
        "less memory, A and B"
    )
    res = explain(salad)
    assert res.hit == [] and "Write whole sentences" in res.summary()
    lines = explain(salad.replace(", ", "\n"))
    assert lines.hit == []


def test_explain_salad_with_negations_and_stuffed_sentences_get_no_full_credit():
    both = explain(
        "The pretrained weights are kept frozen. The pretrained weights are not "
        "frozen. It uses small matrices and it does not use small matrices."
    )
    assert both.hit == []
    assert "You both stated and denied 'the base stays frozen'" in both.summary()
    stuffed = explain(
        "It is the low-rank adaptation with the frozen weights, the small "
        "matrices and the fewer parameters."
    )
    assert len(stuffed.hit) == 2 and "packs 4 key ideas; only 2 count" in stuffed.summary()


def test_explain_word_forms():
    from labkit.quiz import stem, words

    assert {stem(w) for w in ["train", "trains", "trained", "training"]} == {"train"}
    assert stem("quantize") == stem("quantization") == stem("quantized") == "quantiz"
    assert stem("freezes") == stem("freeze") == stem("freezing")
    assert words("It doesn't FREEZE low-rank") == ["it", "does", "not", "freeze", "low", "rank"]
